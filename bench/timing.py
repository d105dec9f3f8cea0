"""What the TTO benchmarks share (`bench.tto`, `bench.tto_model`): their settings, the TTO's
step count and a median timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

STEPS = 14


@dataclass(frozen=True)
class BenchSettings:
    backbones: tuple[str, ...] = ("resnet18", "resnet50")
    repeats: int = 3
    threads: int = 2
    device: str = "cpu"
    people: int = 16
    # What the shipped model's TTO adapts ("all" head weights); "output" is also timed.
    head_subset: str = "all"
    # Freed blocks up to this size stay in the heap (`model.memory`, as in the worker); 0:
    # glibc's defaults (or not glibc). Set by the command from METAHMR_MALLOC_KEEP_MB.
    malloc_keep_mb: int = 0


def memory_note(machine: dict[str, Any]) -> str:
    """How the process's allocator was set (`model.memory`)."""
    keep = machine.get("malloc_keep_mb", 0)
    if not keep:
        return "allocator: glibc's defaults"
    return f"freed blocks up to {keep} MB kept for reuse (`METAHMR_MALLOC_KEEP_MB`, as the worker)"


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one untimed call, in ms."""
    return medians_in_turn_ms({"fn": fn}, repeats)["fn"]


def medians_in_turn_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each fn in ms, timed in turn: one call of each per round, after one
    untimed call of each. A shared machine's speed drifts within seconds; timed in turn, the
    functions see the same drift, so their ratios hold where separate medians would not."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}
