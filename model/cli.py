"""`metahmr` sub-commands owned by the model package (parsers only; imports are lazy).

- ``metahmr export --checkpoint CKPT --out DIR``: ONNX graphs + manifest for the worker.
- ``metahmr pack --model CKPT [--detector-from CKPT] [--half] --out PT``: a checkpoint to ship.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups  # no shared groups (the benchmarks live in bench/)
    export = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX graphs + manifest.json for the worker",
        description="Export f_w, f_u (backbone and head graphs) and the keypoint detector "
        "of a checkpoint to ONNX, write DIR/manifest.json, and check parity with PyTorch.",
    )
    export.add_argument("--checkpoint", required=True, type=Path, help="checkpoint .pt file")
    export.add_argument("--out", required=True, type=Path, help="output directory")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument(
        "--no-check", action="store_true", help="skip the ONNX Runtime parity check"
    )
    export.set_defaults(func=_export)

    pack = sub.add_parser(
        "pack",
        help="one checkpoint to ship: the model, a detector from another, float16 weights",
        description="Write a checkpoint for model/assets/: the model's networks and TTO "
        "settings, optionally the keypoint detector of another checkpoint, a version name, "
        "and (--half) float16 weights.",
    )
    pack.add_argument("--model", required=True, type=Path, help="checkpoint with f_w (+ f_u)")
    pack.add_argument("--detector-from", type=Path, help="checkpoint whose detector to take")
    pack.add_argument("--version", help="model version recorded in the checkpoint")
    pack.add_argument("--half", action="store_true", help="store weights as float16")
    pack.add_argument("--out", required=True, type=Path)
    pack.set_defaults(func=_pack)


def _export(args: argparse.Namespace) -> int:
    from model.checkpoint import load_checkpoint
    from model.export import check_parity, export_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    manifest = export_checkpoint(ckpt, args.out, args.opset, checkpoint_path=args.checkpoint)
    log.info("wrote %d graphs and manifest.json to %s", len(manifest["graphs"]), args.out)
    if args.no_check:
        return 0
    errors = check_parity(ckpt, args.out)
    worst = max(errors.values())
    for name, err in errors.items():
        log.info("parity %s: max abs error %.2e", name, err)
    if worst > 1e-4:
        log.error("ONNX output differs from PyTorch by %.2e (> 1e-4)", worst)
        return 1
    return 0


def _pack(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from model.checkpoint import half_precision, load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(args.model)
    if args.detector_from is not None:
        source = load_checkpoint(args.detector_from)
        if source.detector is None:
            log.error("%s has no keypoint detector", args.detector_from)
            return 2
        ckpt = replace(ckpt, detector=source.detector, detector_config=source.detector_config)
    if args.version:
        ckpt = replace(ckpt, model_version=args.version)
    if args.half:
        ckpt = half_precision(ckpt)
    path = save_checkpoint(ckpt, args.out)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0

