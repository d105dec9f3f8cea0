"""Where a training run's scalars go: ``log.jsonl`` always, TensorBoard when it imports.

TensorBoard is optional (not a dependency): without it the run logs one note and carries
on with the JSONL file, which holds the same numbers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


class RunLog:
    """Scalars per step. enabled=False (non-main DDP ranks) makes every call a no-op."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / LOG_FILE
        self._writer: Any = None
        self._start = time.monotonic()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: scalars go to %s only", self.path)
            else:
                self._writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time_s": round(time.monotonic() - self._start, 3), **scalars}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
