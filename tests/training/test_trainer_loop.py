"""Specification of the shared training loop's pure parts: data order and schedule."""

from __future__ import annotations

import itertools

import pytest

from training.config import EvalConfig, LoopConfig, MetaConfig, OptimConfig
from training.trainer import StepBatchSampler, lr_factor, total_steps


def _take(sampler: StepBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_the_batch_of_a_step_does_not_depend_on_where_the_run_started() -> None:
    full = _take(StepBatchSampler(10, 3, seed=4), 7)
    resumed = _take(StepBatchSampler(10, 3, seed=4, start=4), 3)
    assert resumed == full[4:]


def test_each_epoch_is_a_permutation_and_data_smaller_than_a_batch_wraps() -> None:
    keys = [k for b in _take(StepBatchSampler(5, 4, seed=0), 5) for k in b]  # 20 = 4 epochs
    for epoch in range(4):
        assert sorted(i for i, e in keys if e == epoch) == list(range(5))
    assert len(_take(StepBatchSampler(2, 8, seed=0), 1)[0]) == 8


def test_ranks_take_disjoint_parts_of_each_step() -> None:
    r0 = _take(StepBatchSampler(16, 4, seed=1, rank=0, world=2), 2)
    r1 = _take(StepBatchSampler(16, 4, seed=1, rank=1, world=2), 2)
    assert sorted(k for b in r0 + r1 for k in b) == [(i, 0) for i in range(16)]


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, optim, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(500, optim, 110) == pytest.approx(0.1)
    assert lr_factor(50, OptimConfig(warmup_steps=0, schedule="constant"), 110) == 1.0


def test_epochs_set_the_number_of_steps() -> None:
    assert total_steps(LoopConfig(steps=7), 100, 1) == 7
    assert total_steps(LoopConfig(epochs=2, batch_size=8), 100, 2) == 13


def test_configs_refuse_unknown_values() -> None:
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="task"):
        MetaConfig("c.pt", ("d",), "o", task="episode")
    with pytest.raises(ValueError, match="scope"):
        MetaConfig("c.pt", ("d",), "o", scope="backbone")
    with pytest.raises(ValueError, match="methods"):
        EvalConfig({"smplify": "c.pt"}, {"test": "d"})
