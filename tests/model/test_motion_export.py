"""Motion exports (model/motion_export/): animation.glb, animation.bvh and smpl.npz, each read
back by a reader from outside the project (the Khronos glTF validator, trimesh, the `bvh`
package from PyPI, numpy) and held to the body model's own posing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from gltf_checks import read_glb, skinned_vertices, validate_glb

from model.body import BodyModel, load_body_model
from model.geometry import axis_angle_to_rotmat
from model.motion import MotionTrack
from model.motion_export import (
    CAMERA_TO_GL,
    EULER_ORDER,
    animation_bvh,
    animation_glb,
    rest_body,
    smpl_npz,
)
from model.motion_export.bvh import depth_first, euler_zyx_to_matrix, matrix_to_euler_zyx
from model.motion_export.gltf import influence_sets
from model.outputs import SMPLParams


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body_model()


def _track(track_id: int, frames: np.ndarray, seed: int) -> MotionTrack:
    rng = np.random.default_rng(seed)
    t = len(frames)
    # A smooth motion with large angles (past 90° at the root) and a walk in depth.
    phase = np.linspace(0, 1, t)[:, None]
    poses = rng.normal(size=(1, 72)) * 0.4 + np.sin(3 * phase + rng.normal(size=(1, 72))) * 0.5
    poses[:, :3] = np.array([np.pi, 0.0, 0.0]) + phase * np.array([0.3, 1.8, -0.2])
    trans = np.array([0.2 * track_id, 0.1, 4.0]) + phase * np.array([0.5, 0.0, -1.0])
    return MotionTrack.create(track_id, frames, poses, trans, rng.normal(size=10), 25.0)


@pytest.fixture(scope="module")
def tracks() -> list[MotionTrack]:
    return [_track(0, np.arange(6), seed=1), _track(3, np.arange(2, 9), seed=2)]


def _posed_gl(body: BodyModel, track: MotionTrack, k: int) -> np.ndarray:
    """The body model's own mesh for key k of `track`, in the export frame (V, 3)."""
    rot = axis_angle_to_rotmat(torch.from_numpy(track.poses[k]).double().reshape(1, 24, 3))
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.from_numpy(track.betas)[None])
    with torch.no_grad():
        out = body(params, torch.from_numpy(track.trans[k])[None])
    return out.vertices[0].double().numpy() @ CAMERA_TO_GL.T


def _geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) of the rotation between (..., 3, 3) matrices a and b."""
    cos = (np.einsum("...ij,...ij->...", a, b) - 1) / 2
    return np.arccos(np.clip(cos, -1.0, 1.0))


# animation.glb


def test_glb_passes_the_khronos_validator(
    body: BodyModel, tracks: list[MotionTrack], tmp_path: Path
) -> None:
    one_frame = _track(5, np.zeros(1), seed=3)  # an image job's person
    for chosen in ([one_frame], tracks[:1], tracks):
        report = validate_glb(animation_glb(body, chosen), tmp_path)
        assert report["numErrors"] == 0, report["messages"]
        assert report["numWarnings"] == 0, report["messages"]


def test_glb_loads_in_trimesh_as_the_shaped_rest_meshes(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    import trimesh

    scene = trimesh.load(io.BytesIO(animation_glb(body, tracks)), file_type="glb")
    assert sorted(scene.geometry) == ["track_0", "track_3"]
    for track in tracks:
        mesh = scene.geometry[f"track_{track.track_id}"]
        rest = rest_body(body, track.betas)
        assert mesh.vertices.shape == (body.num_vertices, 3)
        np.testing.assert_allclose(mesh.vertices, rest.vertices, atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, body.faces)


def test_glb_skin_reproduces_the_body_models_posed_mesh(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    data = animation_glb(body, tracks)
    doc, _ = read_glb(data)
    for k in (0, 3, 5):  # key k of every track (6 and 7 keys)
        posed = skinned_vertices(data, k)
        for track in tracks:
            want = _posed_gl(body, track, k)
            np.testing.assert_allclose(posed[f"track_{track.track_id}"], want, atol=1e-4)
    # Key times are the track's frames / fps, for every sampler of the track.
    times = {doc["accessors"][s["input"]]["count"] for s in doc["animations"][0]["samplers"]}
    assert times == {6, 7}
    first = doc["animations"][0]["samplers"][0]["input"]
    assert doc["accessors"][first]["min"] == [0.0]
    assert doc["accessors"][first]["max"] == pytest.approx([5 / 25.0])


def test_glb_skeleton_is_the_smpl_tree_with_shaped_rest_offsets(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    doc, _ = read_glb(animation_glb(body, tracks[:1]))
    skin = doc["skins"][0]
    names = [doc["nodes"][j]["name"] for j in skin["joints"]]
    assert len(names) == 24 and names[0] == "pelvis" and names[15] == "head"
    rest = rest_body(body, tracks[0].betas)
    for j, node in enumerate(skin["joints"]):
        children = doc["nodes"][node].get("children", [])
        assert [skin["joints"].index(c) for c in children] == rest.children(j)
        np.testing.assert_allclose(doc["nodes"][node]["translation"], rest.offsets[j], atol=1e-9)


def test_glb_rejects_no_tracks(body: BodyModel) -> None:
    with pytest.raises(ValueError, match="at least one track"):
        animation_glb(body, [])


def test_skin_weight_sets_keep_every_influence() -> None:
    weights = np.zeros((3, 24))
    weights[0, [0, 3, 5, 7, 9, 11]] = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1]
    weights[1, 4] = 1.0
    weights[2, [1, 2]] = [0.25, 0.75]
    joints, sets = influence_sets(weights)
    assert len(joints) == 2 and joints[0].dtype == np.uint8 and sets[0].shape == (3, 4)
    back = np.zeros_like(weights)
    for j, w in zip(joints, sets, strict=True):
        np.add.at(back, (np.arange(3)[:, None], j.astype(int)), w)
    np.testing.assert_allclose(back, weights, atol=1e-7)


# animation.bvh


def _read_bvh(data: bytes):  # type: ignore[no-untyped-def]
    from bvh import Bvh

    return Bvh(data.decode())


def test_bvh_reads_back_to_the_same_joint_rotations(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    track = tracks[0]
    mocap = _read_bvh(animation_bvh(body, [track]))
    rest = rest_body(body, track.betas)
    assert mocap.nframes == track.num_frames
    assert mocap.frame_time == pytest.approx(1 / track.fps)
    assert mocap.get_joints_names() == [rest.names[j] for j in depth_first(rest)]
    channels = [f"{axis}rotation" for axis in EULER_ORDER]  # the file's own channel order
    expected = axis_angle_to_rotmat(torch.from_numpy(track.poses).double().reshape(-1, 24, 3))
    expected = expected.numpy()
    for j, name in enumerate(rest.names):
        angles = np.radians(np.array(mocap.frames_joint_channels(name, channels)))
        got = euler_zyx_to_matrix(angles)
        want = expected[:, j] if j else CAMERA_TO_GL @ expected[:, 0]
        assert _geodesic(got, want).max() < 1e-4, name
        if j:
            np.testing.assert_allclose(mocap.joint_offset(name), rest.offsets[j], atol=1e-6)
    root = np.array(mocap.frames_joint_channels("pelvis", ["Xposition", "Yposition", "Zposition"]))
    np.testing.assert_allclose(root, (rest.joints[0] + track.trans) @ CAMERA_TO_GL.T, atol=1e-5)


def test_bvh_several_tracks_share_a_world_root_and_hold_outside_their_frames(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    mocap = _read_bvh(animation_bvh(body, tracks))
    assert mocap.nframes == 9  # frames 0..8: track 0 covers 0..5, track 3 covers 2..8
    names = mocap.get_joints_names()
    assert names[0] == "world" and "track0_pelvis" in names and "track3_left_wrist" in names
    wrist = tracks[1].poses.reshape(-1, 24, 3)[:, 20]
    want = axis_angle_to_rotmat(torch.from_numpy(wrist).double()).numpy()
    angles = np.radians(
        mocap.frames_joint_channels("track3_left_wrist", ["Zrotation", "Yrotation", "Xrotation"])
    )
    got = euler_zyx_to_matrix(np.array(angles))
    assert _geodesic(got[2:], want).max() < 1e-4  # its own frames
    assert _geodesic(got[:2], want[:1]).max() < 1e-4  # before its first: its first pose
    pos = np.array(mocap.frames_joint_channels("track0_pelvis", ["Xposition"]))
    assert np.all(pos[6:] == pos[5])  # after its last: its last pose


def test_bvh_rejects_mixed_frame_rates(body: BodyModel, tracks: list[MotionTrack]) -> None:
    other = MotionTrack.create(9, tracks[0].frames, tracks[0].poses, tracks[0].trans,
                               tracks[0].betas, 30.0)  # fmt: skip
    with pytest.raises(ValueError, match="one frame rate"):
        animation_bvh(body, [tracks[0], other])


def test_euler_zyx_round_trip_including_gimbal_lock() -> None:
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(200, 3)) * 1.5
    rot = axis_angle_to_rotmat(torch.from_numpy(aa)).numpy()
    locked = euler_zyx_to_matrix(np.array([[0.3, np.pi / 2, -0.4], [1.0, -np.pi / 2, 2.0]]))
    rot = np.concatenate([rot, locked])
    back = euler_zyx_to_matrix(matrix_to_euler_zyx(rot))
    assert _geodesic(back, rot).max() < 1e-7


# smpl.npz


def test_npz_has_the_amass_keys_for_the_first_track(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    with np.load(io.BytesIO(smpl_npz(tracks[:1], body.id)), allow_pickle=False) as data:
        assert data["poses"].shape == (6, 72) and data["trans"].shape == (6, 3)
        assert data["betas"].shape == (10,)
        np.testing.assert_array_equal(data["poses"], tracks[0].poses)
        np.testing.assert_array_equal(data["trans"], tracks[0].trans)
        assert float(data["mocap_framerate"]) == 25.0
        assert str(data["body_model"]) == body.id and str(data["gender"]) == "neutral"
        assert "track_ids" not in data.files


def test_npz_stores_every_track_under_suffixed_keys(
    body: BodyModel, tracks: list[MotionTrack]
) -> None:
    with np.load(io.BytesIO(smpl_npz(tracks, body.id)), allow_pickle=False) as data:
        assert data["track_ids"].tolist() == [0, 3]
        np.testing.assert_array_equal(data["poses"], data["poses_0"])
        np.testing.assert_array_equal(data["poses_3"], tracks[1].poses)
        np.testing.assert_array_equal(data["frames_3"], np.arange(2, 9))
        np.testing.assert_array_equal(data["betas_3"], tracks[1].betas)
