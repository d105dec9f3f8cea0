"""`metahmr bench tto|render|synth|service|video`: the benchmarks' parsers (the handlers import the
benchmark, and with it torch, onnxruntime or uvicorn, only when they run).

Each benchmark writes its section of docs/benchmarks.md (`--doc`, `--no-doc`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SPLITS = ("train", "test", "shifted")
DOC = Path("docs/benchmarks.md")


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups
    parser = sub.add_parser("bench", help="benchmarks (results go to docs/benchmarks.md)")
    bench = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    _register_tto(bench)
    _register_render(bench)
    _register_synth(bench)
    _register_service(bench)
    _register_reliability(bench)
    _register_video(bench)


def _register_tto(bench: Any) -> None:
    tto = bench.add_parser(
        "tto",
        help="TTO latency: ONNX forward, head/full TTO, reference-style loop, batching",
        description="Benchmark the test-time optimisation per person on this machine and "
        "write the 'TTO' section of docs/benchmarks.md.",
    )
    tto.add_argument("--json", type=Path, help="also write the results as JSON here")
    tto.add_argument(
        "--backbones", default=None,
        help="comma-separated backbone names of random paper-sized regressors ('' = none; "
        "default resnet18,resnet50, with --against none)",
    )
    tto.add_argument(
        "--model", default="shipped",
        help="a BlazePose model checkpoint whose request path (detector + landmarks + heads) "
        "and TTO are timed too ('shipped': the default model; '' = none)",
    )
    tto.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    tto.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    tto.add_argument("--device", default="cpu", help="cpu or cuda")
    tto.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    tto.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    tto.add_argument(
        "--against", metavar="REV",
        help="instead: time the shipped model's TTO (and --backbones') with this tree's code "
        "and REV's (a git revision), one warm process per tree taking turns in rounds "
        "(bench/tto_against.py); --repeats: passes per side and round",
    )
    tto.add_argument("--rounds", type=int, default=6, help="with --against: rounds per tree")
    tto.set_defaults(func=_tto)


def _register_render(bench: Any) -> None:
    render = bench.add_parser("render", help="offscreen render throughput")
    render.add_argument("--platforms", default="osmesa,egl", help="comma-separated")
    render.add_argument("--frames", type=int, default=40)
    render.add_argument("--doc", default=str(DOC), help="'' to skip writing")
    render.set_defaults(func=_render)


def _register_synth(bench: Any) -> None:
    synth = bench.add_parser("synth", help="synthetic data throughput (images/s)")
    synth.add_argument("--num", type=int, default=120, help="images to render")
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument("--split", choices=SPLITS, default="train")
    synth.add_argument("--doc", type=Path, default=DOC)
    synth.add_argument("--no-doc", action="store_true", help="print only, leave the doc alone")
    synth.set_defaults(func=_synth)


def _register_service(bench: Any) -> None:
    service = bench.add_parser(
        "service",
        help="end-to-end latency and throughput of the service vs the pipeline's compute",
        description="Start the stack as `metahmr serve` does (1 worker), send the example "
        "photo sequentially and from concurrent clients, and write the 'service' section "
        "of docs/benchmarks.md.",
    )
    service.add_argument("--requests", type=int, default=50, help="requests per mode")
    service.add_argument("--clients", type=int, default=8, help="client threads, concurrent mode")
    service.add_argument(
        "--model-dir", type=Path, help="a `metahmr export` directory (default: shipped model)"
    )
    service.add_argument("--pipeline", choices=("onnx", "echo"), default="onnx")
    service.add_argument(
        "--no-keypoints", action="store_true",
        help="send the photo alone: BlazePose finds the person and their keypoints",
    )
    # Fixed, small: the client's default backoff would add up to half a job's time.
    service.add_argument("--poll-ms", type=float, default=10.0, help="client poll interval (ms)")
    service.add_argument("--json", type=Path, help="also write the results as JSON here")
    service.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    service.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    service.set_defaults(func=_service)


def _register_video(bench: Any) -> None:
    video = bench.add_parser(
        "video",
        help="video jobs: frames/s of a fixed clip (one person, 640x480), eager and batched",
        description="Run a fixed synthetic clip through the worker's video path with the "
        "shipped model and write the 'Video' section of docs/benchmarks.md.",
    )
    video.add_argument("--frames", type=int, default=90, help="clip length (30 fps)")
    video.add_argument("--batch", type=int, default=8, help="frames per call, batched mode")
    video.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    video.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    video.add_argument("--json", type=Path, help="also write the results as JSON here")
    video.add_argument("--strip", type=Path, help="also draw the tracked bodies over 5 frames (PNG)")
    video.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    video.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    video.set_defaults(func=_video)


def _video(args: argparse.Namespace) -> int:
    from bench.video import run_from_args

    return run_from_args(args)


def _register_reliability(bench: Any) -> None:
    rel = bench.add_parser(
        "reliability",
        help="worker and Redis kill -9, a poison job, a serve restart and load, on serve stacks",
        description="Start `metahmr serve` stacks (diagnostics pipeline), break them as the "
        "issue's tests did, count what the API answers, and write the 'reliability' section "
        "of docs/benchmarks.md.",
    )
    rel.add_argument("--kills", type=int, default=10, help="worker kill -9s under running jobs")
    rel.add_argument("--redis-jobs", type=int, default=15, help="jobs in flight at the Redis kill")
    rel.add_argument("--restart-jobs", type=int, default=6, help="jobs queued at the serve stop")
    rel.add_argument("--load-requests", type=int, default=200, help="jobs per load mode")
    rel.add_argument("--load-clients", default="8,32", help="concurrent clients per load mode")
    rel.add_argument(
        "--load-pipeline", choices=("echo", "onnx"), default="echo",
        help="what the load runs: the diagnostics pipeline, or the shipped model",
    )  # fmt: skip
    rel.add_argument("--json", type=Path, help="also write the results as JSON here")
    rel.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    rel.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    rel.set_defaults(func=_reliability)


def _reliability(args: argparse.Namespace) -> int:
    from bench.reliability import run_from_args

    return run_from_args(args)


def _tto(args: argparse.Namespace) -> int:
    if args.against:
        from bench import tto_against

        return tto_against.run_from_args(args)
    from bench.tto import run_from_args

    return run_from_args(args)


def _render(args: argparse.Namespace) -> int:
    from bench.render import run_from_args

    return run_from_args(args)


def _synth(args: argparse.Namespace) -> int:
    from bench.synth import run_bench

    return run_bench(args.num, args.workers, args.split, None if args.no_doc else args.doc)


def _service(args: argparse.Namespace) -> int:
    from bench.service import run_from_args

    return run_from_args(args)
