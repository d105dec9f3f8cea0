"""The `metahmr` command line: one root parser, sub-commands registered by each package.

Each package's ``cli`` module only defines parsers; heavy imports (torch, onnxruntime,
uvicorn) happen inside the handlers, so `metahmr --help` is fast and works in the slim API
image, where torch is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands. Each exposes `register(sub, groups)`, where `sub` is
# the root sub-parser action and `groups` maps shared group names ("bench") to theirs.
_REGISTRARS = (
    "model.body_cli",
    "model.cli",
    "model.render_bench",
    "training.cli",
    "worker.cli",
    "service.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metahmr", description="Human mesh recovery service and training tools."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (results go to docs/benchmarks.md)")
    groups = {"bench": bench.add_subparsers(dest="bench", metavar="WHAT", required=True)}
    for name in _REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package's optional extra is missing
            if exc.name and exc.name.split(".")[0] in {"model", "training", "worker", "service"}:
                continue
            raise
        module.register(sub, groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
