"""The synthetic writer: determinism, worker independence, resume, labels that reproject."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from training.synth.writer import ANNOTATION_FIELDS, SynthJob, shard_path, synthesize


def _checksums(out: Path) -> dict[str, str]:
    files = sorted((out / "annotations").glob("*.npz"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "test"
    synthesize(SynthJob("test", 8, out, seed=1, workers=0, shard_size=4), progress=False)
    return out


def test_same_seed_gives_identical_annotations_whatever_the_worker_count(
    synth_dir: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    summary = synthesize(SynthJob("test", 8, again, seed=1, workers=2, shard_size=4), progress=False)
    assert summary.written == 8
    first = _checksums(synth_dir)
    assert len(first) == 2 and first == _checksums(again)
    other = tmp_path / "other-seed"
    synthesize(SynthJob("test", 4, other, seed=2, workers=0, shard_size=4), progress=False)
    assert _checksums(other)["test_00000.npz"] != first["test_00000.npz"]


def test_an_interrupted_run_resumes_at_the_missing_shard(synth_dir: Path, tmp_path: Path) -> None:
    before = _checksums(synth_dir)
    shard_path(synth_dir, "test", 1).unlink()
    summary = synthesize(SynthJob("test", 8, synth_dir, seed=1, workers=0, shard_size=4), progress=False)
    assert (summary.written, summary.skipped) == (4, 4)
    assert _checksums(synth_dir) == before


def test_other_arguments_in_the_same_folder_are_refused(synth_dir: Path) -> None:
    with pytest.raises(ValueError, match="another --out"):
        synthesize(SynthJob("test", 8, synth_dir, seed=5, workers=0, shard_size=4), progress=False)


def test_annotation_fields_shapes_and_images(synth_dir: Path) -> None:
    data = np.load(shard_path(synth_dir, "test", 0))
    for name in ANNOTATION_FIELDS:
        assert name in data.files, name
    n = 4
    shapes = {
        "center": (n, 2), "scale": (n,), "part": (n, 24, 3), "S": (n, 24, 4), "pose": (n, 72),
        "shape": (n, 10), "has_smpl": (n,), "openpose": (n, 25, 3), "focal_length": (n,),
        "cam_t": (n, 3), "img_h": (n,), "img_w": (n,), "coco17": (n, 17, 3), "bbox": (n, 4),
    }
    for name, shape in shapes.items():
        assert data[name].shape == shape, name
    assert str(data["layout"]) == "metahmr-synth-v1"
    from PIL import Image

    for name, h, w in zip(data["imgname"], data["img_h"], data["img_w"], strict=True):
        with Image.open(synth_dir / str(name)) as img:
            assert img.size == (w, h) and img.format == "JPEG"
    assert np.all(data["cam_t"][:, 2] > 1.0)
    assert np.all((data["part"][..., 2] >= 0) & (data["part"][..., 2] <= 1))


def test_stored_3d_joints_reproject_onto_stored_2d_keypoints(synth_dir: Path) -> None:
    for shard in (0, 1):
        data = np.load(shard_path(synth_dir, "test", shard))
        joints = data["S"][..., :3].astype(np.float64)
        f = data["focal_length"].astype(np.float64)[:, None]
        center = np.stack([data["img_w"] / 2.0, data["img_h"] / 2.0], axis=-1)[:, None, :]
        projected = joints[..., :2] / joints[..., 2:] * f[..., None] + center
        err = np.linalg.norm(projected - data["part"][..., :2], axis=-1)
        assert err.max() < 0.5, err.max()


def test_stored_smpl_reproduces_the_stored_joints(synth_dir: Path) -> None:
    import torch

    from model.body import load_body_model
    from model.geometry import axis_angle_to_rotmat
    from model.outputs import SMPLParams

    data = np.load(shard_path(synth_dir, "test", 0))
    rots = axis_angle_to_rotmat(torch.tensor(data["pose"]).reshape(-1, 24, 3))
    params = SMPLParams(rots[:, :1], rots[:, 1:], torch.tensor(data["shape"]))
    with torch.no_grad():
        out = load_body_model().keypoints_only(params, transl=torch.tensor(data["cam_t"]))
    np.testing.assert_allclose(out.joints.numpy(), data["S"][..., :3], atol=2e-3)


@pytest.mark.slow
def test_cli_synth_200_twice_gives_identical_checksums(tmp_path: Path) -> None:
    from cli import main

    for name in ("a", "b"):
        args = ["data", "synth", "--split", "test", "--num", "200", "--out", str(tmp_path / name),
                "--seed", "1", "--workers", "2", "--no-progress"]
        assert main(args) == 0
    a, b = _checksums(tmp_path / "a"), _checksums(tmp_path / "b")
    assert a and a == b
