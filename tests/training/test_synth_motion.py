"""Synthetic motion clips: ground truth that agrees with itself, smooth motion, video files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model.body import load_body_model
from model.outputs import SMPLParams
from training.synth.cameras import project
from training.synth.motion import MotionConfig, encode_video, make_clip


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def moving(body):
    return make_clip(MotionConfig(frames=20, image_hw=(96, 128), camera="moving"), seed=1, body=body)


def test_clip_shapes(moving) -> None:
    (p,) = moving.people
    assert moving.frames.shape == (20, 96, 128, 3) and moving.frames.dtype == np.uint8
    assert p.pose.shape == (20, 72) and p.betas.shape == (10,) and p.trans.shape == (20, 3)
    assert p.joints.shape == (20, 24, 3) and p.coco17.shape == (20, 17, 3) and p.bbox.shape == (20, 4)
    assert (p.visible > 0).all()  # the person is in every frame


def test_ground_truth_pose_and_translation_give_the_joints(moving, body) -> None:
    p = moving.people[0]
    rots = torch.from_numpy(Rotation.from_rotvec(p.pose.reshape(-1, 3)).as_matrix()).float().view(20, 24, 3, 3)
    with torch.no_grad():
        out = body(SMPLParams(rots[:, :1], rots[:, 1:], torch.from_numpy(p.betas).expand(20, -1)))
    joints = out.joints.numpy() + p.trans[:, None]
    np.testing.assert_allclose(joints, p.joints, atol=1e-4)
    center = np.array([64.0, 48.0])
    coco = project(out.coco17.numpy() + p.trans[:, None], moving.focal, center)
    np.testing.assert_allclose(coco, p.coco17[..., :2], atol=1e-2)


def test_motion_is_smooth_and_the_moving_camera_moves(moving) -> None:
    j = moving.people[0].joints
    accel = np.linalg.norm(j[2:] - 2 * j[1:-1] + j[:-2], axis=-1).max()
    speed = np.linalg.norm(j[1:] - j[:-1], axis=-1).max()
    assert accel < 0.04 and speed < 0.15  # m/frame^2 (36 m/s^2: a brisk arm swing), m/frame
    # The background slides with the camera: the first and last frames' corners differ.
    assert np.abs(moving.frames[0, :8, :8].astype(int) - moving.frames[-1, :8, :8]).mean() > 1


def test_the_same_seed_gives_the_same_clip(moving, body) -> None:
    again = make_clip(MotionConfig(frames=20, image_hw=(96, 128), camera="moving"), seed=1, body=body)
    np.testing.assert_array_equal(again.frames, moving.frames)


@pytest.mark.parametrize("container", ["mp4", "webm", "mov"])
def test_encoded_clip_decodes_to_the_same_frames(moving, container: str) -> None:
    av = pytest.importorskip("av")
    data = encode_video(moving.frames, moving.fps, container)
    with av.open(io.BytesIO(data)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 20
    assert np.abs(np.stack(frames).astype(int) - moving.frames).mean() < 6


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="camera"):
        MotionConfig(camera="shaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 5, 4, 3), np.uint8), 30.0)
