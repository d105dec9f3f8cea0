"""`metahmr` sub-commands owned by this package (parsers only; imports are lazy).

- `metahmr data synth`: render a synthetic split into a folder (sharded, resumable).
- `metahmr data preview`: contact sheet of a data set with keypoints and the GT mesh.
- `metahmr bench synth`: synthetic data throughput, written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SPLITS = ("train", "test", "shifted")


def register(sub: Any, groups: dict[str, Any]) -> None:
    data = sub.add_parser("data", help="synthetic data: render splits, preview data sets")
    data_sub = data.add_subparsers(dest="data", metavar="WHAT", required=True)

    synth = data_sub.add_parser("synth", help="render a synthetic split (SPIN/CLIFF .npz + JPEG)")
    synth.add_argument("--split", choices=SPLITS, required=True)
    synth.add_argument("--num", type=int, required=True, help="number of images")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=2, help="processes (0 = in-process)")
    synth.add_argument("--shard-size", type=int, default=500, help="images per annotation file")
    synth.add_argument("--long-side", type=int, default=640, help="image long side in pixels")
    synth.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    synth.set_defaults(func=_synth)

    preview = data_sub.add_parser("preview", help="contact sheet with keypoints and GT mesh")
    preview.add_argument("sources", nargs="+", type=Path, help="data set folders or .npz files")
    preview.add_argument("--out", type=Path, required=True, help="output PNG")
    preview.add_argument("--num", type=int, default=12, help="tiles in total")
    preview.add_argument("--cols", type=int, default=4)
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--no-mesh", action="store_true", help="keypoints only")
    preview.set_defaults(func=_preview)

    bench = groups["bench"].add_parser("synth", help="synthetic data throughput (images/s)")
    bench.add_argument("--num", type=int, default=120, help="images to render")
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--split", choices=SPLITS, default="train")
    bench.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    bench.add_argument("--no-doc", action="store_true", help="print only, leave the doc alone")
    bench.set_defaults(func=_bench)


def _synth(args: argparse.Namespace) -> int:
    import logging

    from training.synth.writer import SynthJob, synthesize

    job = SynthJob(
        split=args.split, num=args.num, out=args.out, seed=args.seed, workers=args.workers,
        shard_size=args.shard_size, long_side=args.long_side,
    )
    summary = synthesize(job, progress=not args.no_progress)
    logging.getLogger("metahmr.data").info(
        "%s: %d images written, %d already there, %.1f images/s -> %s",
        args.split, summary.written, summary.skipped, summary.images_per_second, args.out,
    )
    return 0


def _preview(args: argparse.Namespace) -> int:
    from training.synth.preview import make_contact_sheet

    sheet = make_contact_sheet(args.sources, num=args.num, cols=args.cols, mesh=not args.no_mesh, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from training.bench_synth import run_bench

    return run_bench(args.num, args.workers, args.split, None if args.no_doc else args.doc)
