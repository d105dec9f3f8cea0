"""`metahmr bench render`: the benchmark mesh, one process's timings, and its worker entry
point (each platform runs in a `python -m bench.render` subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import trimesh

from bench.render import ellipsoid_mesh, format_rows, measure


def test_render_benchmark_measures_a_few_frames() -> None:
    vertices, faces = ellipsoid_mesh()
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0  # closed, faces pointing outwards
    row = measure(frames=2, width=160, height=120)
    assert row["vertices"] == 13802 and row["faces"] == 27600 and row["mean_ms"] > 0
    row["two_process_images_per_s"] = 1.0
    assert "| osmesa |" in format_rows([row])


def test_the_benchmark_worker_runs_as_a_module_and_prints_json() -> None:
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "bench.render", "--frames", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["platform"] == "osmesa" and row["frames"] == 1 and row["mean_ms"] > 0
