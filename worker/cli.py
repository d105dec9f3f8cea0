"""`metahmr` sub-commands owned by the worker package (parsers only; imports are lazy)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def _assets_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    ckpt = Path(__file__).resolve().parent.parent / "model" / "assets" / "default"
    if not ckpt.exists():
        if not args.quiet:
            log.info("no shipped model under %s yet: nothing to prepare", ckpt)
        return 0
    log.info("shipped model found at %s; ONNX export is not implemented yet", ckpt)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups
    assets = sub.add_parser("assets", help="derived model assets (ONNX graphs)")
    assets_sub = assets.add_subparsers(dest="assets_cmd", metavar="ACTION", required=True)
    prep = assets_sub.add_parser("prepare", help="export ONNX graphs from the shipped weights")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=_assets_prepare)
