"""`metahmr bodymodel ...` sub-commands (parsers only; imports are lazy)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    del sub, groups
