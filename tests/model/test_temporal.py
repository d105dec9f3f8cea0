"""Temporal smoothing: the windowed fit and the One-Euro filter on noisy synthetic tracks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model.body import load_body_model
from model.geometry import perspective_projection
from model.temporal import (
    OneEuroConfig,
    TemporalConfig,
    TrackParams,
    acceleration,
    filter_track,
    one_euro,
    refine_track,
    windows,
)
from training.metrics import pa_mpjpe
from training.synth.motion import MotionConfig, camera_track, clip_rng, person_path

T = 48
FOCAL = 400.0
CENTER = torch.tensor([160.0, 120.0])


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def track(body):
    """A smooth ground-truth motion, per-frame fits with jitter (4 degrees per joint, 8 cm
    in depth) and the 2D keypoints they came from (2 px noise)."""
    cfg = MotionConfig(frames=T)
    rng = clip_rng(5, 0)
    views, centres = camera_track(rng, cfg)
    path = person_path(rng, cfg, np.array([-0.5, 0.0, -5.0]), np.array([0.5, 0.0, -5.0]))
    rots = path.rots.copy()
    rots[:, 0] = views @ rots[:, 0]
    gt = TrackParams(
        torch.from_numpy(rots).float(),
        torch.from_numpy(path.betas).float().expand(T, -1),
        torch.from_numpy(np.einsum("tij,tj->ti", views, path.pelvis - centres)).float(),
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = body(gt.smpl())
    px = perspective_projection(out.coco17, gt.trans, torch.full((T,), FOCAL), CENTER.expand(T, 2))
    keypoints = torch.cat([px + 2.0 * torch.randn(px.shape, generator=gen), torch.ones(T, 17, 1)], -1)
    jitter = Rotation.from_rotvec(np.random.default_rng(1).normal(0, np.radians(4), (T * 24, 3)))
    noisy = TrackParams(
        gt.rotmats @ torch.from_numpy(jitter.as_matrix()).float().view(T, 24, 3, 3),
        gt.betas + 0.1 * torch.randn(T, 10, generator=gen),
        gt.trans + torch.randn(T, 3, generator=gen) * torch.tensor([0.01, 0.01, 0.08]),
    )
    return gt, noisy, keypoints


def _errors(body, params: TrackParams, gt: TrackParams) -> tuple[float, float]:
    """(PA-MPJPE mm, acceleration error mm/frame^2 of pelvis-relative joints)."""
    with torch.no_grad():
        j = body(params.smpl()).joints + params.trans[:, None]
        g = body(gt.smpl()).joints + gt.trans[:, None]
    rel_j, rel_g = j - j[:, :1], g - g[:, :1]
    accel = (acceleration(rel_j) - acceleration(rel_g)).norm(dim=-1).mean() * 1000
    return float(pa_mpjpe(j, g).mean()), float(accel)


def test_windows_cover_every_frame_with_the_given_overlap() -> None:
    spans = windows(100, 32, 8)
    assert spans[0] == slice(0, 32) and spans[-1].stop == 100
    covered = np.zeros(100, int)
    for s in spans:
        covered[s] += 1
        assert s.stop - s.start == 32
    assert covered.min() >= 1
    assert windows(10, 32, 8) == [slice(0, 10)]


def test_refine_cuts_acceleration_error_and_keeps_the_pose(body, track) -> None:
    gt, noisy, keypoints = track
    pa0, acc0 = _errors(body, noisy, gt)
    # A window shorter than the track: the cross-faded windows are what runs.
    out = refine_track(body, noisy, keypoints, FOCAL, CENTER, TemporalConfig(window=24, overlap=8))
    assert out.rotmats.shape == (T, 24, 3, 3) and out.trans.shape == (T, 3)
    assert torch.allclose(out.betas, out.betas[:1].expand(T, -1))  # one shape per track
    pa1, acc1 = _errors(body, out, gt)
    assert acc1 <= 0.5 * acc0, (acc0, acc1)
    assert pa1 <= 1.02 * pa0, (pa0, pa1)


def test_zero_steps_returns_the_per_frame_fits(body, track) -> None:
    _, noisy, keypoints = track
    out = refine_track(body, noisy, keypoints, FOCAL, CENTER, TemporalConfig(steps=0))
    assert torch.equal(out.rotmats, noisy.rotmats) and torch.equal(out.trans, noisy.trans)


def test_one_euro_smooths_jitter_and_follows_a_step() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(120) / 30.0
    clean = np.sin(2 * np.pi * 0.5 * t)[:, None]
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    out = one_euro(noisy, 30.0, OneEuroConfig(min_cutoff=1.0, beta=5.0))
    assert out.shape == noisy.shape
    assert np.abs(np.diff(out, 2, axis=0)).mean() < 0.7 * np.abs(np.diff(noisy, 2, axis=0)).mean()
    assert np.abs(out - clean).mean() < 1.1 * np.abs(noisy - clean).mean()  # speed opens it: little lag
    still = one_euro(rng.normal(0, 0.05, (120, 1)), 30.0, OneEuroConfig(min_cutoff=1.0, beta=0.0))
    assert still[30:].std() < 0.5 * 0.05  # the 1 Hz low-pass alone
    step = one_euro(np.r_[np.zeros(30), np.ones(60)][:, None], 30.0, OneEuroConfig(beta=1.0))
    assert step[-1, 0] == pytest.approx(1.0, abs=1e-3)  # no lasting lag


def test_filter_track_keeps_rotations_valid(body, track) -> None:
    gt, noisy, _ = track
    out = filter_track(noisy, 30.0)
    eye = torch.eye(3).expand(T, 24, 3, 3)
    assert torch.allclose(out.rotmats @ out.rotmats.transpose(-1, -2), eye, atol=1e-5)
    assert _errors(body, out, gt)[1] < _errors(body, noisy, gt)[1]


def test_bad_inputs_are_rejected(body, track) -> None:
    _, noisy, keypoints = track
    with pytest.raises(ValueError, match="keypoints must be"):
        refine_track(body, noisy, keypoints[:, :10], FOCAL, CENTER)
    with pytest.raises(ValueError, match="overlap"):
        TemporalConfig(window=8, overlap=8)
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroConfig(min_cutoff=0.0)
