"""`metahmr train pretrain|meta` loss-weight flags reach the training config."""

from __future__ import annotations

import pytest

from cli import build_parser
from model.config import LossWeights
from training.cli import _loss_weights

BASE = ["train", "pretrain", "--data", "d", "--out", "o"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], LossWeights()),
        (["--vertex-weight", "0"], LossWeights(vertices=0.0)),
        (["--vertex-weight", "0", "--betas-weight", "0.05"], LossWeights(vertices=0.0, betas=0.05)),
    ],
)
def test_loss_weight_flags(flags: list[str], expected: LossWeights) -> None:
    args = build_parser().parse_args([*BASE, *flags])
    assert _loss_weights(args) == expected
