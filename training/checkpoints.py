"""Training state next to a model checkpoint, so `--resume` continues exactly.

The model checkpoint (`model.checkpoint`, weights-only builtins) holds the networks. What
only training needs lives beside it in ``<name>.state.pt``: the optimizer and scheduler
states, the step, the random-number generator states and the stage's config as a dict. Both
are written atomically (temporary file + rename), state file last, so a run killed while
saving resumes from the previous consistent pair.

Layout of a training run's folder::

    last.pt / last.state.pt    the latest checkpoint and its training state
    final.pt                   the checkpoint at the end of the run (same format)
    log.jsonl                  one JSON object per logged step (and tensorboard/ if present)
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

STATE_FORMAT = "metahmr-training-state"
STATE_VERSION = 1
LAST = "last.pt"
FINAL = "final.pt"


@dataclass(frozen=True)
class TrainingState:
    """Everything but the weights that a resumed run needs.

    step: optimizer steps done. optimizer / scheduler: their state dicts. rng: torch CPU
    (and CUDA) generator states. config: the stage config as plain builtins (compared on
    resume, so a changed setting is reported rather than silently mixed in).
    """

    stage: str
    step: int
    total_steps: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]


def state_path(checkpoint_path: str | Path) -> Path:
    """``run/last.pt`` -> ``run/last.state.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".state.pt")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(payload: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_run_checkpoint(ckpt: Checkpoint, state: TrainingState, path: str | Path) -> Path:
    """Write the model checkpoint at `path` and its training state beside it."""
    path = Path(path)
    save_checkpoint(ckpt, path)
    payload = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **state.__dict__}
    _atomic_save(payload, state_path(path))
    return path


def load_run_checkpoint(path: str | Path) -> tuple[Checkpoint, TrainingState]:
    """Read a checkpoint written by `save_run_checkpoint` and its training state."""
    path = Path(path)
    spath = state_path(path)
    if not spath.is_file():
        raise FileNotFoundError(
            f"no training state at {spath}: {path} cannot be resumed (it was not written by "
            "a training command, or the run was killed before its first checkpoint)"
        )
    ckpt = load_checkpoint(path)
    payload = torch.load(spath, map_location="cpu", weights_only=True)
    if payload.get("format") != STATE_FORMAT or payload.get("format_version") != STATE_VERSION:
        raise ValueError(f"{spath} is not a metahmr training state (version {STATE_VERSION})")
    fields = TrainingState.__dataclass_fields__
    return ckpt, TrainingState(**{k: payload[k] for k in fields})


def git_commit(repo: str | Path | None = None) -> str | None:
    """The commit the code runs from (+ "-dirty" with local changes), None outside git."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (for the resume warning)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
