"""`metahmr bench render`: offscreen render throughput for an SMPL-sized mesh.

Each platform (osmesa, egl) runs in its own subprocess because PyOpenGL fixes its platform
at import. A run renders a person-sized ellipsoid of 13,802 vertices / 27,600 faces (SMPL
has 6,890 / 13,776; the open body model about 13k / 27k) at 4 m over a 640x480 image,
with fresh vertices every frame as the synthetic data engine has, in one process and in two
concurrent processes. The time covers the whole `Renderer.render` call: the shaded 4x MSAA
colour pass, the segmentation pass (mask, depth, instance ids) and compositing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_SECTION = "render"


def ellipsoid_mesh(
    radii: tuple[float, float, float] = (0.25, 0.85, 0.15), rings: int = 116, segments: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """A closed latitude/longitude ellipsoid, outward-facing.

    Returns vertices ((rings - 1) * segments + 2, 3) float64 centred at the origin and
    faces (2 * segments * (rings - 1), 3) int64.
    """
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]  # polar angle of the inner rings
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring_points = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1)
    vertices = np.concatenate([[[0, 1, 0]], ring_points.reshape(-1, 3), [[0, -1, 0]]])
    vertices = vertices * np.asarray(radii)
    top, bottom = 0, len(vertices) - 1
    ring = np.arange(rings - 1)[:, None] * segments + 1
    j = np.arange(segments)[None, :]
    a, b = ring + j, ring + (j + 1) % segments  # this ring
    c, d = a + segments, b + segments  # next ring down
    quads = np.concatenate(
        [np.stack([a, b, d], -1)[:-1].reshape(-1, 3), np.stack([a, d, c], -1)[:-1].reshape(-1, 3)]
    )
    first, last = a[0], a[-1]
    caps = np.concatenate(
        [
            np.stack([np.full(segments, top), b[0], first], -1),
            np.stack([np.full(segments, bottom), last, b[-1]], -1),
        ]
    )
    return vertices, np.concatenate([quads, caps]).astype(np.int64)


def measure(frames: int, width: int = 640, height: int = 480) -> dict[str, Any]:
    """Render `frames` frames in this process; returns timings and the GL renderer name."""
    from model.render import MeshSpec, Renderer

    vertices, faces = ellipsoid_mesh()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    focal = float(np.hypot(width, height))
    with Renderer(width, height) as renderer:
        times = []
        for frame in range(frames + 3):  # 3 warm-up frames (shader compilation)
            offset = np.array([0.2 * np.sin(frame), 0.1 * np.cos(frame), 4.0])
            mesh = MeshSpec(vertices + offset + rng.normal(0, 1e-3, vertices.shape), faces)
            start = time.perf_counter()
            renderer.render([mesh], image=image, focal_length=focal)
            times.append(time.perf_counter() - start)
        gl_renderer = _gl_renderer_name(renderer)
    steady = np.asarray(times[3:])
    return {
        "platform": os.environ.get("PYOPENGL_PLATFORM", ""),
        "gl_renderer": gl_renderer,
        "vertices": len(vertices),
        "faces": len(faces),
        "frames": frames,
        "mean_ms": 1e3 * float(steady.mean()),
        "p90_ms": 1e3 * float(np.percentile(steady, 90)),
        "wall_s": float(steady.sum()),
    }


def _gl_renderer_name(renderer: Any) -> str:
    try:
        from OpenGL.GL import GL_RENDERER, glGetString

        renderer._renderer._platform.make_current()
        name = glGetString(GL_RENDERER)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # only a label for the report
        return "unknown"


def _spawn(platform: str, frames: int, **extra_env: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYOPENGL_PLATFORM=platform, OMP_NUM_THREADS="1", **extra_env)
    command = [sys.executable, "-m", "bench.render", "--frames", str(frames)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def _collect(processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"render benchmark worker failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_benchmark(platforms: list[str], frames: int) -> list[dict[str, Any]]:
    """One row per platform: single-process latency and two-process throughput."""
    rows = []
    for platform in platforms:
        single = _collect([_spawn(platform, frames)])[0]
        # One llvmpipe thread per process when there is a process per core: with its
        # default (a thread per core) the two processes' rasterisers contend.
        pair = _collect([_spawn(platform, frames, LP_NUM_THREADS="1") for _ in range(2)])
        single["two_process_images_per_s"] = sum(r["frames"] / r["wall_s"] for r in pair)
        rows.append(single)
        log.info("%s: %.1f ms/frame", platform, single["mean_ms"])
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Mesh {rows[0]['vertices']} vertices / {rows[0]['faces']} faces at 640x480 over an "
        f"image, fresh vertices each frame, {rows[0]['frames']} frames after warm-up; "
        f"machine with {os.cpu_count()} CPU cores.",
        "",
        "| platform | GL renderer | ms / image (mean) | p90 ms | images/s, 1 process "
        "| images/s, 2 processes (LP_NUM_THREADS=1 each) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['platform']} | {r['gl_renderer']} | {r['mean_ms']:.1f} | {r['p90_ms']:.1f} "
            f"| {1e3 / r['mean_ms']:.1f} | {r['two_process_images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.docs import write_section

    rows = run_benchmark(args.platforms.split(","), args.frames)
    body = format_rows(rows)
    log.info("\n%s", body)
    if args.doc:
        write_section(Path(args.doc), _SECTION, body + "\n\nWritten by `metahmr bench render`.")
    return 0


def _main() -> int:
    parser = argparse.ArgumentParser(description="one render benchmark worker (JSON out)")
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(measure(args.frames)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
