"""The `metahmr` command line: one root parser, sub-commands registered by each package.

Each package's command module only defines parsers; heavy imports (torch, onnxruntime,
uvicorn) happen inside the handlers, so `metahmr --help` is fast and works in the slim API
image, where torch and the model, training, worker and bench packages are not installed.

This module and `bench/` sit above the packages: they may import any of them, and nothing
but the tests imports them. A handler returns an exit status, or the markdown sections it
made (`training.cli.DocSection`: the training package writes no docs), which are written
here with `bench.docs.write_section`.

Multi-GPU training runs this module under torchrun: `torchrun ... -m cli train ...`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("metahmr.cli")

# Modules that contribute sub-commands. Each exposes `register(sub, groups)`, where `sub` is
# the root sub-parser action and `groups` maps the names of groups other modules add to
# ("assets", made by worker.cli; this module adds `assets example`) to their sub-parser actions.
_REGISTRARS = (
    "model.body_cli",
    "model.cli",
    "training.cli",
    "worker.cli",
    "service.commands",
    "bench.commands",
    "bench.demo_page",
)
# Top-level packages an install may lack (the slim API image has only `service`).
_OPTIONAL = {"model", "training", "worker", "service", "bench"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metahmr", description="Human mesh recovery service and training tools."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for name in _REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package's optional extra is missing
            if exc.name and exc.name.split(".")[0] in _OPTIONAL:
                continue
            raise
        module.register(sub, groups)
    if "assets" in groups:
        _register_example(groups["assets"])
    return parser


def _register_example(assets: Any) -> None:
    example = assets.add_parser(
        "example",
        help="write the docs' example photo + COCO-17 keypoints (a synthetic person)",
        description="Render one synthetic person (640x480, default focal length) and write "
        "OUT/example.jpg and OUT/example_keypoints.json, the file `metahmr recover "
        "--keypoints` reads.",
    )
    example.add_argument("--out", type=Path, default=Path("docs/img"), help="output directory")
    example.add_argument("--seed", type=int, default=2024, help="synthetic engine seed")
    example.set_defaults(func=_assets_example)


def _assets_example(args: argparse.Namespace) -> int:
    # Lives here, not in worker.cli (owner of `assets`): the synthetic engine is training's.
    from training.example import write_example

    image, keypoints = write_example(args.out, args.seed)
    log.info("wrote %s and %s", image, keypoints)
    return 0


def finish(outcome: Any) -> int:
    """The exit status of a handler's `outcome`: an int (None: 0), or a list of doc sections
    (`training.cli.DocSection`), written here, then 0."""
    if outcome is None or isinstance(outcome, int):
        return int(outcome or 0)
    from bench.docs import write_section

    for section in outcome:
        write_section(section.path, section.name, section.body, header=section.header)
        log.info("wrote section %r of %s", section.name, section.path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return finish(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
