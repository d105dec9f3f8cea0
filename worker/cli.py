"""`metahmr` sub-commands owned by the worker package (parsers only; imports are lazy).

- ``metahmr assets prepare``: export the shipped model (model/assets/default/model.pt) to
  ONNX under the cache (``METAHMR_CACHE_DIR``), where the worker finds it.
- ``metahmr assets blazepose --out DIR``: BlazePose lite / full / heavy and the detector in
  one folder (`METAHMR_BLAZEPOSE_DIR`), from the @mediapipe/pose npm package (needs npm).

The `assets` group goes into ``groups["assets"]``: the top-level CLI adds `assets example`
(made by the training package's synthetic engine, which the worker does not import).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _assets_prepare(args: argparse.Namespace) -> int:
    from worker.config import get_worker_settings
    from worker.runtime import SHIPPED_CHECKPOINT, prepare_shipped_model

    if not SHIPPED_CHECKPOINT.is_file():
        if not args.quiet:
            log.info(
                "no shipped model at %s: nothing to prepare (the worker needs "
                "METAHMR_MODEL_DIR, a `metahmr export` output)",
                SHIPPED_CHECKPOINT,
            )
        return 0
    settings = get_worker_settings()
    try:
        out = prepare_shipped_model(settings)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    log.info("shipped model ready in %s", out)
    return 0


def _assets_blazepose(args: argparse.Namespace) -> int:
    from model.blazepose_files import BlazePoseUnavailable, fetch_npm_models

    try:
        files = fetch_npm_models(args.out)
    except (BlazePoseUnavailable, OSError) as exc:
        log.error("%s", exc)
        return 1
    for f in files:
        log.info("wrote %s", f)
    log.info("use them with METAHMR_BLAZEPOSE_DIR=%s METAHMR_BLAZEPOSE=heavy (or lite)", args.out)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    assets = sub.add_parser("assets", help="derived model assets (ONNX graphs), example data")
    assets_sub = assets.add_subparsers(dest="assets_cmd", metavar="ACTION", required=True)
    groups["assets"] = assets_sub
    prep = assets_sub.add_parser(
        "prepare",
        help="export the shipped weights to ONNX for the worker",
        description="Export model/assets/default/model.pt to ONNX graphs + manifest under "
        "METAHMR_CACHE_DIR (default ~/.cache/metahmr), checked against PyTorch. Does "
        "nothing when there is no shipped model or it is already exported.",
    )
    prep.add_argument("--quiet", action="store_true", help="say nothing when there is no model")
    prep.set_defaults(func=_assets_prepare)
    bp = assets_sub.add_parser(
        "blazepose",
        help="BlazePose lite/full/heavy from the @mediapipe/pose npm package (optional)",
        description="npm pack the pinned @mediapipe/pose, check the landmark models' sha256, "
        "and write them with the detector (from the mediapipe wheel) and a provenance note to "
        "OUT; then set METAHMR_BLAZEPOSE_DIR=OUT.",
    )
    bp.add_argument("--out", type=Path, required=True, help="output directory")
    bp.set_defaults(func=_assets_blazepose)
