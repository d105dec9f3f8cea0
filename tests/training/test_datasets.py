"""Dataset reader and augmentation: our files, real SPIN-layout files, flips, bad images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.crop import apply_affine, crop_affine
from model.keypoints import get_format
from training.augment import NO_AUGMENT, AugmentConfig, augment_and_crop, flip_person, roll_labels
from training.datasets import SPIN24_NAMES, HMRBatch, HMRDataset, collate_samples, load_annotations
from training.synth.writer import SynthJob, synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "train"
    synthesize(SynthJob("train", 6, out, seed=3, workers=0, shard_size=3), progress=False)
    return out


def _project(points: np.ndarray, focal: float, hw: tuple[int, int]) -> np.ndarray:
    return points[:, :2] / points[:, 2:] * focal + np.array([hw[1] / 2, hw[0] / 2])


def test_batches_have_the_documented_shapes(synth_dir: Path) -> None:
    ds = HMRDataset(synth_dir, augment=AugmentConfig())
    assert len(ds) == 6
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert isinstance(batch, HMRBatch) and batch.batch_size == 4
    assert batch.image.shape == (4, 3, 256, 192) and batch.image.dtype == torch.float32
    assert 0.0 <= float(batch.image.min()) and float(batch.image.max()) <= 1.0
    expected = {"bbox_info": (4, 3), "keypoints2d": (4, 17, 3), "keypoints2d_box": (4, 17, 3),
                "joints2d": (4, 24, 3), "joints3d": (4, 24, 3), "pose": (4, 72), "betas": (4, 10),
                "cam_t": (4, 3), "crop_affine": (4, 2, 3), "center": (4, 2), "box_size": (4,)}
    for name, shape in expected.items():
        assert tuple(getattr(batch, name).shape) == shape, name
    assert batch.has_smpl.all() and batch.has_joints3d.all() and batch.has_cam_t.all()
    params = batch.smpl_params()
    assert params.body_pose.shape == (4, 23, 3, 3)


def test_without_augmentation_the_crop_keypoints_match_the_affine(synth_dir: Path) -> None:
    ds = HMRDataset(synth_dir)
    p = ds.person(0)
    sample = ds[0]
    crop_px = apply_affine(p.keypoints[:, :2], crop_affine(p.center, p.box_size))
    box = sample.keypoints2d_box[:, :2].numpy()
    np.testing.assert_allclose(crop_px, np.column_stack([96 + 128 * box[:, 0], 128 + 128 * box[:, 1]]), atol=1e-3)


def test_flip_swaps_left_and_right(synth_dir: Path) -> None:
    ds = HMRDataset(synth_dir)
    p = ds.person(1)
    q = flip_person(p)
    w = p.image_hw[1]
    names = get_format("coco17").names
    ls, rs = names.index("left_shoulder"), names.index("right_shoulder")
    np.testing.assert_allclose(q.keypoints[ls, 0], w - p.keypoints[rs, 0])
    np.testing.assert_allclose(q.keypoints[ls, 1:], p.keypoints[rs, 1:])
    smpl = get_format("smpl24").names
    lw, rw = smpl.index("left_wrist"), smpl.index("right_wrist")
    np.testing.assert_allclose(q.joints3d[lw], p.joints3d[rw] * [-1, 1, 1])
    np.testing.assert_array_equal(q.image[:, 0], p.image[:, -1])
    # Labels stay consistent with the full-image camera after the flip.
    np.testing.assert_allclose(_project(q.joints3d, q.focal, q.image_hw), q.joints2d[:, :2], atol=0.05)
    # Flipping twice is the identity.
    back = flip_person(q)
    np.testing.assert_allclose(back.keypoints, p.keypoints, atol=1e-9)
    np.testing.assert_allclose(back.pose, p.pose, atol=1e-9)


def test_flipped_smpl_pose_gives_the_mirrored_body(synth_dir: Path) -> None:
    from model.body import load_body_model
    from model.geometry import axis_angle_to_rotmat
    from model.outputs import SMPLParams

    body = load_body_model()
    ds = HMRDataset(synth_dir)
    p = ds.person(2)
    q = flip_person(p)

    def joints(pose: np.ndarray, cam_t: np.ndarray) -> np.ndarray:
        rots = axis_angle_to_rotmat(torch.tensor(pose, dtype=torch.float32).reshape(1, 24, 3))
        params = SMPLParams(rots[:, :1], rots[:, 1:], torch.tensor(p.betas, dtype=torch.float32)[None])
        with torch.no_grad():
            out = body.keypoints_only(params, transl=torch.tensor(cam_t, dtype=torch.float32)[None])
        return out.joints[0].numpy()

    np.testing.assert_allclose(joints(p.pose, p.cam_t), p.joints3d, atol=2e-3)
    # The open body model is near-symmetric: the mirrored pose lands within a centimetre.
    np.testing.assert_allclose(joints(q.pose, q.cam_t), q.joints3d, atol=1e-2)


def test_rotation_turns_2d_and_3d_labels_together(synth_dir: Path) -> None:
    ds = HMRDataset(synth_dir)
    p = ds.person(0)
    q = roll_labels(p, 25.0)
    np.testing.assert_allclose(_project(q.joints3d, q.focal, q.image_hw), q.joints2d[:, :2], atol=0.05)
    # The rotated crop of the original image is the axis-aligned crop of the rolled frame.
    a = apply_affine(p.keypoints[:, :2], crop_affine(p.center, p.box_size, rotation_deg=25.0))
    b = apply_affine(q.keypoints[:, :2], crop_affine(q.center, q.box_size))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_augmented_crop_keeps_keypoints_on_the_person(synth_dir: Path) -> None:
    ds = HMRDataset(synth_dir)
    p = ds.person(0)
    params = replace(NO_AUGMENT, flip=True, rotation_deg=20.0, scale=1.1)
    crop, q = augment_and_crop(np.random.default_rng(0), p, params)
    assert crop.shape == (256, 192, 3)
    np.testing.assert_allclose(_project(q.joints3d, q.focal, q.image_hw), q.joints2d[:, :2], atol=0.05)


def _write_spin_file(root: Path, n: int = 3, corrupt: int | None = None) -> Path:
    """A file in the real SPIN layout: SPIN's field names and dtypes (float64, '<U' names)."""
    rng = np.random.default_rng(0)
    names = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"images/im{i:04d}.jpg"
        path = root / name
        if i == corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
        names.append(name)
    part = np.zeros((n, 24, 3))
    part[..., 0] = rng.uniform(150, 250, (n, 24))
    part[..., 1] = rng.uniform(50, 250, (n, 24))
    part[..., 2] = 1.0
    part[:, SPIN24_NAMES.index("nose"), 2] = 0.0  # not annotated: filled from openpose
    openpose = np.zeros((n, 25, 3))
    openpose[:, 0] = [[123.0, 45.0, 1.0]] * n  # BODY_25 point 0 is the nose
    path = root / "spin_train.npz"
    np.savez(
        path,
        imgname=np.array(names), center=rng.uniform(150, 250, (n, 2)), scale=np.full(n, 1.2),
        part=part, openpose=openpose, pose=rng.normal(0, 0.2, (n, 72)), shape=rng.normal(0, 1, (n, 10)),
        has_smpl=np.ones(n), S=np.zeros((n, 24, 4)),
    )
    return path


def test_a_real_spin_layout_file_loads_through_the_same_reader(tmp_path: Path) -> None:
    path = _write_spin_file(tmp_path)
    ann = load_annotations(path)
    coco = get_format("coco17").names
    assert ann.keypoints.shape == (3, 17, 3)
    src = np.load(path)
    np.testing.assert_allclose(ann.keypoints[:, coco.index("left_wrist")], src["part"][:, SPIN24_NAMES.index("left_wrist")])
    np.testing.assert_allclose(ann.keypoints[:, coco.index("nose")], [[123.0, 45.0, 1.0]] * 3)
    ds = HMRDataset(path, augment=AugmentConfig())
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch.batch_size == 3 and batch.has_smpl.all()
    assert not batch.has_joints3d.any() and not batch.has_cam_t.any()
    np.testing.assert_allclose(batch.focal_length.numpy(), 500.0)  # sqrt(300^2 + 400^2)


def test_missing_fields_are_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"broken\.npz.*scale"):
        load_annotations(path)


def test_a_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    path = _write_spin_file(tmp_path, n=4, corrupt=2)
    ds = HMRDataset(path)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch.batch_size == 3
    assert len(batch.skipped) == 1 and batch.skipped[0].endswith("im0002.jpg")
    assert ds.num_skipped == 1
    empty = collate_samples([ds[2]])
    assert empty.batch_size == 0 and empty.image.shape == (0, 3, 256, 192)
