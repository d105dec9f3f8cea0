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


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one untimed call, in ms."""
    fn()  # warm-up: allocator, ORT arenas, autograd caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
