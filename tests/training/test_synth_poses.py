"""Pose and shape samplers: limits, family semantics, left/right symmetry, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from training.synth import poses as P
from training.synth.shapes import sample_betas

# A rough SMPL-like rest skeleton (metres, y up, x = left, facing +z) and the SMPL parents,
# enough to check what the sampled rotations do to the body.
_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
_REST = np.array([
    (0, 0, 0), (0.09, -0.08, 0), (-0.09, -0.08, 0), (0, 0.11, 0), (0.1, -0.45, 0),
    (-0.1, -0.45, 0), (0, 0.24, 0), (0.1, -0.85, -0.03), (-0.1, -0.85, -0.03), (0, 0.3, 0),
    (0.11, -0.9, 0.1), (-0.11, -0.9, 0.1), (0, 0.52, 0), (0.07, 0.43, 0), (-0.07, 0.43, 0),
    (0, 0.6, 0.03), (0.17, 0.46, 0), (-0.17, 0.46, 0), (0.43, 0.45, 0), (-0.43, 0.45, 0),
    (0.68, 0.45, 0), (-0.68, 0.45, 0), (0.76, 0.45, 0), (-0.76, 0.45, 0),
])


def _fk(pose: np.ndarray) -> np.ndarray:
    rots = Rotation.from_rotvec(pose.reshape(24, 3)).as_matrix()
    world_r = [np.eye(3)] * 24
    out = np.zeros((24, 3))
    for j, p in enumerate(_PARENTS):
        if p < 0:
            world_r[j], out[j] = rots[j], _REST[j]
            continue
        world_r[j] = world_r[p] @ rots[j]
        out[j] = out[p] + world_r[p] @ (_REST[j] - _REST[p])
    return out


def _family_pose(name: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return P.sample_pose(rng, P.families_for([name])).pose


def test_clamp_keeps_every_dof_inside_its_limits() -> None:
    wild = {name: 1e3 * (-1) ** i for i, name in enumerate(P.LIMITS)}
    clamped = P.clamp_dofs(wild)
    for name, value in clamped.items():
        lo, hi = P.LIMITS[name]
        assert lo <= value <= hi


def test_rest_dofs_give_the_t_pose() -> None:
    rots = P.assemble_rotations({"l_shoulder_abd": 90.0, "r_shoulder_abd": 90.0})
    np.testing.assert_allclose(rots, np.tile(np.eye(3), (24, 1, 1)), atol=1e-12)


def test_arms_down_and_hip_flexion_move_limbs_the_anatomical_way() -> None:
    pose = P.rotations_to_axis_angle(P.assemble_rotations({"l_hip_flex": 90.0, "r_knee_flex": 90.0}))
    j = _fk(pose)
    assert j[P.L_KNEE, 2] > 0.3  # left thigh points forward
    assert j[P.R_ANKLE, 2] < -0.3  # right shin folds backwards
    # Arms hanging (shoulder_abd 0): wrists below the shoulders.
    assert j[P.L_WRIST, 1] < j[P.L_SHOULDER, 1] - 0.3
    assert j[P.R_WRIST, 1] < j[P.R_SHOULDER, 1] - 0.3


@pytest.mark.parametrize("seed", range(5))
def test_standing_poses_are_upright(seed: int) -> None:
    j = _fk(_family_pose("standing", seed))
    assert j[P.HEAD, 1] > j[P.PELVIS, 1] + 0.4
    assert j[P.L_ANKLE, 1] < j[P.PELVIS, 1] - 0.6 and j[P.R_ANKLE, 1] < j[P.PELVIS, 1] - 0.6


@pytest.mark.parametrize("seed", range(5))
def test_sitting_puts_knees_in_front_of_hips(seed: int) -> None:
    j = _fk(_family_pose("sitting", seed))
    assert j[P.L_KNEE, 2] > 0.2 and j[P.R_KNEE, 2] > 0.2


@pytest.mark.parametrize("seed", range(5))
def test_lying_bodies_are_horizontal(seed: int) -> None:
    j = _fk(_family_pose("lying", seed))
    spine = j[P.NECK] - j[P.PELVIS]
    assert abs(spine[1]) < 0.5 * np.linalg.norm(spine)


def test_mirrored_dofs_give_mirrored_skeletons() -> None:
    dofs = {"l_hip_flex": 40.0, "l_hip_abd": 20.0, "l_shoulder_flex": 60.0, "l_elbow_flex": 70.0}
    mirrored = {k.replace("l_", "r_", 1): v for k, v in dofs.items()}
    a = _fk(P.rotations_to_axis_angle(P.assemble_rotations(dofs)))
    b = _fk(P.rotations_to_axis_angle(P.assemble_rotations(mirrored)))
    swap = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
    np.testing.assert_allclose(b[swap] * [-1, 1, 1], a, atol=1e-9)


def test_sample_pose_is_deterministic_and_finite() -> None:
    fams = P.COMMON_FAMILIES + P.RARE_FAMILIES
    a = [P.sample_pose(np.random.default_rng(s), fams) for s in range(40)]
    b = [P.sample_pose(np.random.default_rng(s), fams) for s in range(40)]
    for x, y in zip(a, b, strict=True):
        assert x.family == y.family
        assert x.pose.shape == (72,) and np.isfinite(x.pose).all()
        np.testing.assert_array_equal(x.pose, y.pose)
    assert len({x.family for x in a}) > 5


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="valid"):
        P.families_for(["moonwalk"])


def test_betas_follow_sigma_and_clip() -> None:
    rng = np.random.default_rng(0)
    betas = np.stack([sample_betas(rng, sigma=0.5) for _ in range(2000)])
    assert betas.shape == (2000, 10)
    assert abs(betas.std() - 0.5) < 0.03
    assert np.abs(betas).max() <= 1.5
    with pytest.raises(ValueError):
        sample_betas(rng, sigma=-1.0)
