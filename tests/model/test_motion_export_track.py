"""The motion track type (model/motion.py): shapes checked at construction, image people as
one-frame tracks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.geometry import axis_angle_to_rotmat
from model.motion import IMAGE_FPS, MotionTrack, tracks_from_output
from model.outputs import CropInfo, RegressorOutput, SMPLParams


def _track(t: int = 3) -> MotionTrack:
    return MotionTrack.create(
        7, np.arange(t) + 10, np.zeros((t, 72)), np.zeros((t, 3)), np.zeros(10), 25.0
    )


def test_track_casts_arrays_and_times_frames() -> None:
    track = _track()
    assert track.frames.dtype == np.int64 and track.poses.dtype == np.float32
    assert track.num_frames == 3
    np.testing.assert_allclose(track.times, [0.4, 0.44, 0.48])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("poses", np.zeros((3, 69)), "poses must be"),
        ("trans", np.zeros((2, 3)), "trans must be"),
        ("frames", np.array([0, 2, 1]), "strictly increasing"),
        ("frames", np.zeros(0), "T >= 1"),
        ("fps", 0.0, "fps must be positive"),
        ("betas", np.full(10, np.nan), "NaN"),
    ],
)
def test_track_rejects_bad_arrays(field: str, value: object, message: str) -> None:
    good = _track()
    kwargs = {
        "track_id": 0, "frames": good.frames, "poses": good.poses, "trans": good.trans,
        "betas": good.betas, "fps": good.fps, field: value,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        MotionTrack(**kwargs)  # type: ignore[arg-type]


def test_tracks_from_output_keeps_each_person_pose_and_translation() -> None:
    g = torch.Generator().manual_seed(0)
    aa = torch.randn(2, 24, 3, generator=g) * 0.5
    rot = axis_angle_to_rotmat(aa)
    betas = torch.randn(2, 10, generator=g)
    cam = torch.tensor([[0.9, 0.1, -0.2]] * 2)
    pred = RegressorOutput(SMPLParams(rot[:, :1], rot[:, 1:], betas), cam)
    crop = CropInfo.from_boxes(
        torch.tensor([[300.0, 200.0], [100.0, 250.0]]), torch.tensor([200.0, 150.0]),
        torch.tensor([[480.0, 640.0]] * 2),
    )  # fmt: skip
    tracks = tracks_from_output(pred, crop)
    assert [t.track_id for t in tracks] == [0, 1]
    for i, track in enumerate(tracks):
        assert track.fps == IMAGE_FPS and track.frames.tolist() == [0]
        back = axis_angle_to_rotmat(torch.from_numpy(track.poses[0]).double().reshape(24, 3))
        np.testing.assert_allclose(back.numpy(), rot[i].double().numpy(), atol=1e-5)
        np.testing.assert_allclose(track.trans[0], pred.translation(crop)[i].numpy(), rtol=1e-6)
        np.testing.assert_allclose(track.betas, betas[i].numpy())
