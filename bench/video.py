"""`metahmr bench video`: frames per second of a video job on this machine.

A fixed clip (the synthetic motion engine, seed 0: one person, 640x480, 30 fps, H.264 MP4)
goes through the worker's own video path (`worker.video.run_video`: decode, the image
pipeline per frame, tracking, temporal fit) with the shipped model, eagerly (one frame per
pipeline call) and batched (`--batch` frames per `run_batch`: one ONNX forward and one TTO
over them). Each mode runs `--repeats` times after a warm-up; the median is reported, with
the time split into the per-frame part and the smoothing, into the 'Video' section of
docs/benchmarks.md. `--strip` also draws the tracked bodies over a few of the clip's frames
(the README's picture).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECTION = "Video"


def fixed_clip(frames: int, hw: tuple[int, int] = (480, 640), fps: float = 30.0) -> tuple[Any, bytes]:
    """The fixed benchmark clip (`MotionClip`) and its MP4."""
    from training.synth.motion import MotionConfig, encode_video, make_clip

    clip = make_clip(MotionConfig(frames=frames, fps=fps, image_hw=hw), seed=0)
    return clip, encode_video(clip.frames, fps)


def frame_strip(clip: Any, result: dict[str, Any], path: Path, count: int = 5, scale: float = 1.0) -> None:
    """`count` evenly spaced frames of `clip` side by side, each above the same frame with the
    video result's tracked bodies drawn over it (the smoothed SMPL and camera), cut to a
    window around the tracked people and scaled by `scale`, as a PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from model.body import load_body_model
    from model.geometry import axis_angle_to_rotmat
    from model.outputs import SMPLParams
    from model.render import MeshSpec, render_meshes

    body = load_body_model()
    faces = np.asarray(body.faces)
    focal = result["image"]["focal_length"]
    picks = np.linspace(0, len(clip.frames) - 1, count).round().astype(int)
    # One window around everyone the tracks saw (20% margin), the same for every frame.
    boxes = np.array([p["bbox"] for t in result["tracks"] for p in t["people"]])
    h, w = clip.frames.shape[1:3]
    if len(boxes):
        lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
        pad = 0.2 * (hi - lo).max()
        x0, y0 = (np.maximum(lo - pad, 0)).astype(int)
        x1, y1 = (np.minimum(hi + pad, [w, h])).astype(int)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
    tiles = []
    for f in picks:
        meshes = []
        for track in result["tracks"]:
            if int(f) not in track["frames"]:
                continue
            p = track["people"][track["frames"].index(int(f))]
            aa = torch.tensor(p["smpl"]["global_orient"] + p["smpl"]["body_pose"]).view(1, 24, 3)
            rot = axis_angle_to_rotmat(aa)
            params = SMPLParams(rot[:, :1], rot[:, 1:], torch.tensor([p["smpl"]["betas"]]))
            with torch.no_grad():
                verts = body(params, torch.tensor([p["camera"]["translation"]])).vertices[0].numpy()
            meshes.append(MeshSpec(vertices=verts, faces=faces, color=(0.55, 0.75, 1.0)))
        rgb = render_meshes(meshes, image=clip.frames[f], focal_length=focal).rgb if meshes else clip.frames[f]
        window = (slice(y0, y1), slice(x0, x1))
        tile = np.concatenate([clip.frames[f][window], rgb[window]], axis=0)  # frame above, fit below
        tiles.append(np.asarray(Image.fromarray(tile).resize(
            (round(tile.shape[1] * scale), round(tile.shape[0] * scale)), Image.Resampling.BILINEAR)))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path, optimize=True)


def time_modes(pipeline: Any, data: bytes, batches: dict[str, int], repeats: int) -> dict[str, Any]:
    """Per mode (name -> frames per call): median wall time, frames/s and its split."""
    from service.contract import RecoverOptions
    from worker.video import run_video

    options = RecoverOptions()
    out: dict[str, Any] = {}
    for name, batch in batches.items():
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            res = run_video(pipeline, data, {"kind": "video"}, options, lambda *a: None, batch=batch)
            runs.append((time.perf_counter() - start, res.result))
        wall, result = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        frames = result["video"]["frames"]
        t = result["timings_ms"]
        out[name] = {
            "batch": batch, "frames": frames, "wall_s": round(wall, 3),
            "frames_per_s": round(frames / wall, 2),
            "per_frame_ms": round(t["frames"] / frames, 2), "smooth_ms_per_frame": round(t["smooth"] / frames, 2),
            "wall_s_all": [round(r[0], 3) for r in runs],
            "tracks": len(result["tracks"]),
        }  # fmt: skip
        log.info("%s (batch %d): %.1f frames/s", name, batch, frames / wall)
    return out


def run_benchmark(
    frames: int, batch: int, repeats: int, threads: int, strip: Path | None = None
) -> dict[str, Any]:
    from bench.service import machine_info
    from worker.config import WorkerSettings
    from worker.inference import build_pipeline

    machine = machine_info()
    pipeline = build_pipeline(WorkerSettings(pipeline="onnx", onnx_threads=threads, torch_threads=threads))
    clip, data = fixed_clip(frames)
    time_modes(pipeline, fixed_clip(8)[1], {"warm-up": batch}, 1)  # sessions, caches, allocator
    modes = time_modes(pipeline, data, {"eager": 1, "batched": batch}, repeats)
    if strip is not None:
        from service.contract import RecoverOptions
        from worker.video import run_video

        result = run_video(pipeline, data, {"kind": "video"}, RecoverOptions(), lambda *a: None).result
        frame_strip(clip, result, strip)
        log.info("wrote the frame strip %s", strip)
    return {"clip": {"frames": frames, "width": 640, "height": 480, "fps": 30.0, "people": 1, "seed": 0,
                     "bytes": len(data)},
            "threads": threads, "repeats": repeats, "modes": modes, "machine": machine,
            "model": pipeline.ckpt.model_version}  # fmt: skip


def render_markdown(report: dict[str, Any]) -> str:
    c, m = report["clip"], report["machine"]
    lines = [
        f"`{report['command']}`: a fixed synthetic clip ({c['frames']} frames, {c['width']}x{c['height']}, "
        f"{c['fps']:g} fps, one person, H.264) through the worker's video path with the shipped "
        f"model ({report['model']}): decode, the image pipeline per frame (BlazePose, heads, "
        "TTO), tracking and the temporal fit; median of "
        f"{report['repeats']} runs, {report['threads']} threads.",
        "",
        "| mode | frames per call | frames/s | per-frame pipeline (ms/frame) | smoothing (ms/frame) |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["modes"].items():
        lines.append(f"| {name} | {r['batch']} | {r['frames_per_s']:.1f} | {r['per_frame_ms']:.1f} | "
                     f"{r['smooth_ms_per_frame']:.1f} |")  # fmt: skip
    load = m.get("load_average_at_start")
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} cores"
              + (f"; load average at start {load}" if load else "") + f". {m['note']}."]  # fmt: skip
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = ["metahmr", "bench", "video", "--frames", str(args.frames), "--batch", str(args.batch),
             "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
    if args.strip is not None:
        parts += ["--strip", str(args.strip)]
    return " ".join(parts)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.docs import write_section

    if args.frames < 2 or args.batch < 1 or args.repeats < 1:
        log.error("--frames must be at least 2, --batch and --repeats at least 1")
        return 2
    report = run_benchmark(args.frames, args.batch, args.repeats, args.threads, args.strip)
    report["command"] = command_line(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_doc:
        write_section(Path(args.doc), SECTION, render_markdown(report))
        log.info("wrote section %r of %s", SECTION, args.doc)
    return 0
