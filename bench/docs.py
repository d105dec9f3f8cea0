"""Write one section of a markdown file (docs/benchmarks.md, docs/tuning.md, a model card),
leaving the other sections alone.

Stdlib only. The benchmarks and the top-level CLI write with it; the runtime packages write
no docs (a training command returns its sections and `cli.py` writes them).
"""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_HEADER = (
    "# Benchmarks\n\n"
    "Every section below is written by the command it names (`metahmr bench ...`); "
    "do not edit by hand.\n"
)


def write_section(path: Path, name: str, body: str, header: str | None = None) -> None:
    """Replace (or append) the section `## {name}` of the markdown file at `path`.

    A file that does not exist yet starts with `header` (default: the benchmarks page's).
    """
    if path.exists():
        text = path.read_text()
    else:
        text = BENCHMARKS_HEADER if header is None else header
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
