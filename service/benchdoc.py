"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone.

Stdlib only: every package's `bench` command uses it (the API image has no torch).
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = (
    "# Benchmarks\n\n"
    "Every section below is written by the command it names (`metahmr bench ...`); "
    "do not edit by hand.\n"
)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section `## {name}` of the markdown file at `path`."""
    text = path.read_text() if path.exists() else _HEADER
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
