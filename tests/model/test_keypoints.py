"""Specification of model/keypoints.py: named keypoint formats, conversion and flipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import keypoints as kp

EXPECTED_LENGTHS = {"coco17": 17, "openpose25": 25, "smpl24": 24, "mediapipe33": 33, "h36m17": 17}


def random_points(k: int, batch: tuple[int, ...] = (), seed: int = 0) -> np.ndarray:
    """(*batch, k, 3) pixel keypoints with confidences in (0, 1]."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 640, size=(*batch, k, 2))
    conf = rng.uniform(0.1, 1.0, size=(*batch, k, 1))
    return np.concatenate([xy, conf], axis=-1)


def test_all_formats_have_the_expected_lengths_and_unique_names() -> None:
    assert set(kp.FORMATS) == set(EXPECTED_LENGTHS)
    for name, length in EXPECTED_LENGTHS.items():
        fmt = kp.get_format(name)
        assert fmt.name == name
        assert fmt.num_keypoints == length == len(fmt.names) == len(fmt.flip_perm)
        assert len(set(fmt.names)) == length
        assert all(n == n.lower() and " " not in n for n in fmt.names)


def test_formats_use_the_documented_orders() -> None:
    assert kp.get_format("coco17").index("left_shoulder") == 5
    assert kp.get_format("openpose25").names[:2] == ("nose", "neck")
    assert kp.get_format("openpose25").index("mid_hip") == 8
    assert kp.get_format("openpose25").index("right_heel") == 24
    assert kp.get_format("smpl24").index("neck") == 12
    assert kp.get_format("smpl24").index("right_hand") == 23
    assert kp.get_format("mediapipe33").index("left_shoulder") == 11
    assert kp.get_format("mediapipe33").index("right_foot_index") == 32
    assert kp.get_format("h36m17").index("head_top") == 10
    assert kp.get_format("h36m17").index("right_wrist") == 16


@pytest.mark.parametrize("name", kp.FORMATS)
def test_flip_perm_is_an_involution_that_swaps_left_and_right(name: str) -> None:
    fmt = kp.get_format(name)
    perm = fmt.flip_perm
    assert sorted(perm) == list(range(fmt.num_keypoints))
    assert all(perm[perm[i]] == i for i in range(fmt.num_keypoints))
    for i, joint in enumerate(fmt.names):
        partner = fmt.names[perm[i]]
        if joint.startswith("left_"):
            assert partner == "right_" + joint[len("left_") :]
        elif joint.startswith("right_"):
            assert partner == "left_" + joint[len("right_") :]
        elif joint.endswith(("_left", "_right")):
            assert partner != joint and partner.rsplit("_", 1)[0] == joint.rsplit("_", 1)[0]
        else:
            assert partner == joint  # midline joints stay put


def test_mediapipe_mouth_corners_flip_into_each_other() -> None:
    fmt = kp.get_format("mediapipe33")
    assert fmt.names[fmt.flip_perm[fmt.index("mouth_left")]] == "mouth_right"
    assert fmt.names[fmt.flip_perm[fmt.index("mouth_right")]] == "mouth_left"


def test_unknown_format_raises_value_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="coco17") as err:
        kp.get_format("coco18")
    for name in kp.FORMATS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid formats"):
        kp.convert_keypoints(random_points(17), "coco17", "body_25")


def test_index_of_an_absent_joint_names_the_format() -> None:
    with pytest.raises(ValueError, match="coco17.*neck"):
        kp.get_format("coco17").index("neck")


def test_index_map_returns_minus_one_for_absent_joints() -> None:
    mapping = kp.index_map("coco17", "openpose25")
    op = kp.get_format("openpose25")
    assert len(mapping) == 25
    for joint in ("neck", "mid_hip", "left_big_toe", "right_heel"):
        assert mapping[op.index(joint)] == -1
    assert mapping[op.index("left_shoulder")] == 5
    assert mapping[op.index("right_ankle")] == 16
    back = kp.index_map("openpose25", "coco17")
    assert back == tuple(op.index(n) for n in kp.get_format("coco17").names)


def test_index_map_uses_aliases_for_mediapipe_foot_index() -> None:
    op = kp.get_format("openpose25")
    to_op = kp.index_map("mediapipe33", "openpose25")
    assert to_op[op.index("left_big_toe")] == 31
    assert to_op[op.index("right_big_toe")] == 32
    assert to_op[op.index("left_small_toe")] == -1
    mp = kp.get_format("mediapipe33")
    assert kp.index_map("openpose25", "mediapipe33")[mp.index("left_foot_index")] == 19


def test_coco17_to_openpose25_to_coco17_round_trip_is_the_identity() -> None:
    points = random_points(17, batch=(4,))
    op = kp.convert_keypoints(points, "coco17", "openpose25")
    assert op.shape == (4, 25, 3)
    back = kp.convert_keypoints(op, "openpose25", "coco17")
    np.testing.assert_array_equal(back, points)


def test_openpose25_neck_is_derived_from_the_shoulders_when_converting_from_coco17() -> None:
    coco = kp.get_format("coco17")
    op = kp.get_format("openpose25")
    points = random_points(17)
    points[coco.index("left_shoulder")] = [100.0, 50.0, 0.9]
    points[coco.index("right_shoulder")] = [60.0, 54.0, 0.4]
    points[coco.index("left_hip")] = [96.0, 150.0, 0.7]
    points[coco.index("right_hip")] = [64.0, 152.0, 0.8]
    out = kp.convert_keypoints(points, "coco17", "openpose25")
    np.testing.assert_allclose(out[op.index("neck")], [80.0, 52.0, 0.4])
    np.testing.assert_allclose(out[op.index("mid_hip")], [80.0, 151.0, 0.7])
    # Joints COCO does not have stay unobserved.
    np.testing.assert_array_equal(out[op.index("left_big_toe")], [0.0, 0.0, 0.0])


def test_smpl24_neck_is_kept_and_mid_hip_derived_when_converting_to_openpose25() -> None:
    smpl = kp.get_format("smpl24")
    op = kp.get_format("openpose25")
    points = random_points(24, seed=3)
    out = kp.convert_keypoints(points, "smpl24", "openpose25")
    np.testing.assert_array_equal(out[op.index("neck")], points[smpl.index("neck")])
    hips = points[[smpl.index("left_hip"), smpl.index("right_hip")]]
    np.testing.assert_allclose(out[op.index("mid_hip"), :2], hips[:, :2].mean(axis=0))
    assert out[op.index("mid_hip"), 2] == hips[:, 2].min()


def test_mediapipe33_to_coco17_picks_the_right_indices() -> None:
    points = random_points(33, batch=(2,), seed=1)
    out = kp.convert_keypoints(points, "mediapipe33", "coco17")
    assert out.shape == (2, 17, 3)
    np.testing.assert_array_equal(out[:, 5], points[:, 11])  # left_shoulder
    np.testing.assert_array_equal(out[:, 0], points[:, 0])  # nose
    np.testing.assert_array_equal(out[:, 1], points[:, 2])  # left_eye, not left_eye_inner
    np.testing.assert_array_equal(out[:, 16], points[:, 28])  # right_ankle


def test_mediapipe33_to_openpose25_fills_big_toes_from_foot_index() -> None:
    points = random_points(33, seed=2)
    op = kp.get_format("openpose25")
    out = kp.convert_keypoints(points, "mediapipe33", "openpose25")
    np.testing.assert_array_equal(out[op.index("left_big_toe")], points[31])
    np.testing.assert_array_equal(out[op.index("right_big_toe")], points[32])
    np.testing.assert_array_equal(out[op.index("left_heel")], points[29])


def test_h36m17_to_coco17_leaves_the_face_unobserved() -> None:
    points = random_points(17, seed=4)
    out = kp.convert_keypoints(points, "h36m17", "coco17")
    np.testing.assert_array_equal(out[:5], np.zeros((5, 3)))
    np.testing.assert_array_equal(out[5], points[11])  # left_shoulder
    np.testing.assert_array_equal(out[12], points[1])  # right_hip


def test_wrong_keypoint_count_raises_value_error_with_expected_and_got() -> None:
    with pytest.raises(ValueError, match="17 joints.*got 25"):
        kp.convert_keypoints(random_points(25), "coco17", "openpose25")
    with pytest.raises(ValueError, match="33 joints.*got 17"):
        kp.flip_keypoints(random_points(17), "mediapipe33", 640)


def test_last_dim_other_than_three_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 3\)"):
        kp.convert_keypoints(np.zeros((17, 2)), "coco17", "smpl24")
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 3\)"):
        kp.flip_keypoints(np.zeros(17), "coco17", 640)


def test_convert_keeps_arbitrary_leading_dims_and_numpy_dtype() -> None:
    points = random_points(24, batch=(2, 3)).astype(np.float32)
    out = kp.convert_keypoints(points, "smpl24", "h36m17")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3, 17, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_tensor_input_returns_a_torch_tensor_with_the_same_dtype(dtype: torch.dtype) -> None:
    points = torch.as_tensor(random_points(17, batch=(3,)), dtype=dtype)
    out = kp.convert_keypoints(points, "coco17", "openpose25")
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (3, 25, 3)
    expected = kp.convert_keypoints(points.numpy(), "coco17", "openpose25")
    np.testing.assert_allclose(out.numpy(), expected)
    flipped = kp.flip_keypoints(points, "coco17", 640)
    assert isinstance(flipped, torch.Tensor) and flipped.dtype == dtype


def test_torch_conversion_passes_gradients_to_the_source_points() -> None:
    points = torch.as_tensor(random_points(17), dtype=torch.float64).requires_grad_()
    kp.convert_keypoints(points, "coco17", "openpose25")[..., :2].sum().backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()
    # Each COCO point is copied once; shoulders and hips also feed a derived midpoint.
    coco = kp.get_format("coco17")
    assert points.grad[coco.index("nose"), 0] == 1.0
    assert points.grad[coco.index("left_shoulder"), 0] == 1.5


def test_absent_joints_are_zero_even_if_the_source_has_nan() -> None:
    points = random_points(17)
    points[0] = np.nan  # index 0 stands in for absent joints internally
    out = kp.convert_keypoints(points, "coco17", "openpose25")
    np.testing.assert_array_equal(out[kp.get_format("openpose25").index("left_heel")], 0.0)


def test_flip_mirrors_x_and_swaps_left_and_right() -> None:
    coco = kp.get_format("coco17")
    points = random_points(17, batch=(2,))
    flipped = kp.flip_keypoints(points, "coco17", 640)
    assert flipped.shape == (2, 17, 3)
    ls, rs = coco.index("left_shoulder"), coco.index("right_shoulder")
    np.testing.assert_allclose(flipped[:, ls, 0], 640 - points[:, rs, 0])
    np.testing.assert_array_equal(flipped[:, ls, 1:], points[:, rs, 1:])
    np.testing.assert_allclose(flipped[:, 0, 0], 640 - points[:, 0, 0])  # nose stays the nose


@pytest.mark.parametrize("name", kp.FORMATS)
def test_flipping_twice_is_the_identity(name: str) -> None:
    fmt = kp.get_format(name)
    points = random_points(fmt.num_keypoints, batch=(3,))
    twice = kp.flip_keypoints(kp.flip_keypoints(points, fmt, 512), name, 512)
    np.testing.assert_allclose(twice, points, atol=1e-9)


def test_a_format_without_a_mirror_joint_is_rejected() -> None:
    with pytest.raises(ValueError, match="'left_hand'.*'right_hand'"):
        kp.KeypointFormat("bad", ("pelvis", "left_hand"))
    with pytest.raises(ValueError, match="repeats"):
        kp.KeypointFormat("bad", ("pelvis", "pelvis"))


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, model.keypoints; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
