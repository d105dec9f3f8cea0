"""Specification of training/metrics.py on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from model.geometry import axis_angle_to_rotmat
from training.metrics import SampleErrors, mpjpe, pa_mpjpe, pck, pve


def _joints(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 24, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_pa_mpjpe_of_a_rotated_scaled_shifted_copy_is_zero() -> None:
    target = _joints()
    rot = axis_angle_to_rotmat(torch.tensor([[0.3, -1.2, 0.7]] * 3, dtype=torch.float64))
    pred = 1.7 * target @ rot.transpose(-1, -2) + torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    err = pa_mpjpe(pred, target)
    assert err.shape == (3,)
    assert float(err.abs().max()) < 1e-6
    assert float(mpjpe(pred, target).min()) > 10.0  # but not without the alignment


def test_mpjpe_ignores_a_global_offset_and_measures_a_joint_offset_in_mm() -> None:
    target = _joints()
    assert float(mpjpe(target + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), target).max()) < 1e-9
    pred = target.clone()
    pred[:, 10, 0] += 0.024  # 24 mm on one of 24 joints (not a hip: the pelvis stays put)
    torch.testing.assert_close(mpjpe(pred, target), torch.full((3,), 1.0, dtype=torch.float64))


def test_pve_aligns_each_mesh_on_its_own_pelvis() -> None:
    joints = _joints(2)
    verts = torch.randn(2, 50, 3, dtype=torch.float64)
    shift = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    assert float(pve(verts + shift, verts, joints + shift, joints).max()) < 1e-9
    offset = torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(pve(verts + offset, verts, joints, joints),
                               torch.full((2,), 10.0, dtype=torch.float64))


def test_pck_counts_visible_points_within_five_percent_of_the_box() -> None:
    target = torch.zeros(1, 4, 3)
    target[..., 2] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last point is not visible
    pred = torch.zeros(1, 4, 2)
    pred[0, 1, 0] = 9.0  # within 0.05 * 200 = 10 px
    pred[0, 2, 1] = 11.0  # outside
    pred[0, 3, 0] = 500.0  # invisible: ignored
    torch.testing.assert_close(pck(pred, target, torch.tensor([200.0])), torch.tensor([2 / 3]))
    none_visible = torch.zeros(1, 4, 3)
    assert math.isnan(float(pck(pred, none_visible, torch.tensor([200.0]))[0]))


def test_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        mpjpe(torch.zeros(2, 24, 3), torch.zeros(2, 17, 3))
    with pytest.raises(ValueError, match="pck"):
        pck(torch.zeros(2, 17, 3), torch.zeros(2, 17, 3), torch.ones(2))


def test_sample_errors_means_skip_nan_pck() -> None:
    e = SampleErrors(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]),
                     torch.tensor([0.5, float("nan")]))
    assert SampleErrors.cat([e, e]).means() == {"mpjpe": 2.0, "pa_mpjpe": 1.0, "pve": 2.0, "pck": 0.5}
