"""Detector-like keypoint noise used by evaluation."""

from __future__ import annotations

import pytest
import torch

from training.keypoint_noise import detector_noise


def test_noise_scale_and_drop_rate_match_the_protocol() -> None:
    kp = torch.zeros(400, 17, 3)
    kp[..., 2] = 1.0
    heights = torch.full((400,), 200.0)
    out = detector_noise(kp, heights, torch.Generator().manual_seed(0))
    assert out.shape == (400, 17, 3)
    kept = out[..., 2] > 0
    assert abs(out[..., :2].std().item() - 6.0) < 0.2  # 3% of 200 px
    assert abs(1 - kept.float().mean().item() - 0.10) < 0.01
    assert torch.all(out[..., 2][kept] == 1.0)


def test_noise_is_reproducible_and_keeps_missing_points_missing() -> None:
    kp = torch.rand(4, 17, 3) * 100
    kp[:, 0, 2] = 0.0
    h = torch.full((4,), 50.0)
    a = detector_noise(kp, h, torch.Generator().manual_seed(3))
    b = detector_noise(kp, h, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert torch.all(a[:, 0, 2] == 0)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="B, K, 3"):
        detector_noise(torch.zeros(17, 3), torch.ones(1))
    with pytest.raises(ValueError, match="box_height"):
        detector_noise(torch.zeros(2, 17, 3), torch.ones(3))
