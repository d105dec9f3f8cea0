"""The typed outputs' glue: moving, concatenating and slicing batches (model/outputs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.outputs import CropInfo, FitResult, RegressorOutput, SMPLParams


def _pred(b: int, seed: int = 0) -> RegressorOutput:
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(b, 24, 3, 3, generator=g)
    return RegressorOutput(
        SMPLParams(rot[:, :1], rot[:, 1:], torch.randn(b, 10, generator=g)),
        torch.randn(b, 3, generator=g),
    )


def _crops(b: int, offset: float = 0.0) -> CropInfo:
    return CropInfo.from_boxes(
        torch.full((b, 2), 100.0 + offset),
        torch.full((b,), 50.0 + offset),
        torch.tensor([[480.0, 640.0]]).repeat(b, 1),
    )


def _equal(a: RegressorOutput, b: RegressorOutput) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in (
            (a.params.global_orient, b.params.global_orient),
            (a.params.body_pose, b.params.body_pose),
            (a.params.betas, b.params.betas),
            (a.crop_cam, b.crop_cam),
        )
    )


def test_regressor_output_from_head_arrays_splits_the_root() -> None:
    rotmat = np.random.default_rng(0).normal(size=(2, 24, 3, 3)).astype(np.float32)
    betas = np.zeros((2, 10), np.float32)
    out = RegressorOutput.from_numpy(rotmat, betas, np.ones((2, 3), np.float32))
    assert out.params.global_orient.shape == (2, 1, 3, 3)
    assert out.params.body_pose.shape == (2, 23, 3, 3)
    assert out.batch_size == 2
    np.testing.assert_array_equal(out.params.rotmats().numpy(), rotmat)


def test_regressor_output_moves_every_tensor() -> None:
    pred = _pred(3)
    moved = pred.to("cpu")
    assert _equal(pred, moved)
    assert moved.params.to("meta").betas.device.type == "meta"
    assert pred.to("meta").crop_cam.device.type == "meta"


def test_crop_info_cat_then_select_round_trips() -> None:
    a, b = _crops(2), _crops(3, offset=10.0)
    both = CropInfo.cat([a, b])
    assert both.batch_size == 5 and both.crop_hw == a.crop_hw
    back = both.select(slice(2, 5))
    for name in ("center", "box_size", "img_hw", "focal_length", "affine"):
        assert torch.equal(getattr(back, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="at least one"):
        CropInfo.cat([])
    other = CropInfo(a.center, a.box_size, a.img_hw, a.focal_length, a.affine, (128, 96))
    with pytest.raises(ValueError, match="one crop size"):
        CropInfo.cat([a, other])


def test_fit_result_select_is_the_fit_of_those_people() -> None:
    initial, final = _pred(4, 0), _pred(4, 1)
    fit = FitResult(
        initial=initial,
        final=final,
        loss_history=((1.0, 0.5), (2.0,), (), (3.0, 2.0, 1.0)),
        final_loss=(0.4, 1.5, 0.0, 0.9),
        test_u_loss=(1.0, 2.0, None, 3.0),
        steps_run=(2, 1, 0, 3),
        stopped_early=(False, True, False, False),
        skipped=(None, None, "no keypoints", None),
        scope="head",
        recorded={1: _pred(4, 2)},
    )
    part = fit.select(slice(1, 3))
    assert part.batch_size == 2 and part.scope == "head"
    assert _equal(part.initial, initial.select(slice(1, 3)))
    assert _equal(part.final, final.select(slice(1, 3)))
    assert part.loss_history == ((2.0,), ())
    assert part.final_loss == (1.5, 0.0) and part.test_u_loss == (2.0, None)
    assert part.steps_run == (1, 0) and part.stopped_early == (True, False)
    assert part.skipped == (None, "no keypoints")
    assert _equal(part.recorded[1], fit.recorded[1].select(slice(1, 3)))
    assert part.loss_start(0) == 2.0 and part.loss_start(1) == 0.0
