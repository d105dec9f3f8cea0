"""Dataset reader for annotation files in the SPIN/CLIFF `.npz` layout: ours and real ones.

Our synthetic files (field `layout` = "metahmr-synth-v1") hold SMPL-24 joints in `part`
(2D pixels) and `S` (3D camera frame), plus `coco17`, `focal_length`, `cam_t`, `img_h/w`.
Real SPIN/CLIFF files (Human3.6M, 3DPW, MPI-INF-3DHP, COCO-EFT, ...) hold SPIN's own 24
keypoints in `part` (LSP-14 + MPII/H36M + face points); COCO-17 is read from them by joint
name, missing points filled from `openpose`. Their `S` uses SPIN's joint set, not SMPL-24,
so it is not used (has_joints3d = False); with `pose`/`shape`, the trainer gets 3D joints
from the body model.

Each item is cropped to 256x192 around its box (CLIFF bbox information included) and
optionally augmented. `collate_samples` builds an `HMRBatch`; unreadable images are
logged, counted and dropped from the batch, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from model.crop import CROP_HW, crop_affine
from training.augment import NO_AUGMENT, AugmentConfig, Person, augment_and_crop, sample_params

log = logging.getLogger(__name__)

SYNTH_LAYOUT = "metahmr-synth-v1"
REQUIRED_FIELDS = ("imgname", "center", "scale")
# SPIN's 24 2D keypoints (`part` in real SPIN files), in order.
SPIN24_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist", "neck_lsp", "head_top_lsp", "pelvis_mpii", "thorax_mpii", "spine_h36m",
    "jaw_h36m", "head_h36m", "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)


@dataclass(frozen=True)
class _PersonTensors:
    """The tensors of one person (`HMRSample`) or, stacked, of a batch (`HMRBatch`)."""

    image: Tensor
    center: Tensor
    box_size: Tensor
    img_hw: Tensor
    focal_length: Tensor
    bbox_info: Tensor
    crop_affine: Tensor
    keypoints2d: Tensor
    keypoints2d_box: Tensor
    joints2d: Tensor
    joints3d: Tensor
    pose: Tensor
    betas: Tensor
    cam_t: Tensor
    has_smpl: Tensor
    has_joints3d: Tensor
    has_cam_t: Tensor
    index: Tensor


@dataclass(frozen=True)
class HMRSample(_PersonTensors):
    """One person, ready for the network. Shapes as in `HMRBatch` without the batch dim."""


@dataclass(frozen=True)
class Skipped:
    """An item whose image could not be read (path and why)."""

    path: str
    reason: str


@dataclass(frozen=True)
class HMRBatch(_PersonTensors):
    """A batch of B people. Full-image quantities are in the *augmented* image's frame.

    image: (B, 3, 256, 192) float32 RGB in [0, 1] (normalisation belongs to the network).
    center: (B, 2) box centre px; box_size: (B,) box side px (CLIFF scale * 200).
    img_hw: (B, 2) full image (H, W); focal_length: (B,) px.
    bbox_info: (B, 3) CLIFF bbox information (`model.geometry.cliff_bbox_info`, normalised).
    crop_affine: (B, 2, 3) full-image px -> crop px.
    keypoints2d: (B, 17, 3) COCO-17 [x, y, conf] full-image px.
    keypoints2d_box: (B, 17, 3) the same in normalised box coordinates
        (`model.geometry.pixels_to_box`); conf 0 for points outside the crop.
    joints2d: (B, 24, 3) SMPL-24 [x, y, conf] px (conf 0 where unknown, e.g. real files).
    joints3d: (B, 24, 3) SMPL-24 joints, camera frame, metres (valid where has_joints3d).
    pose: (B, 72) SMPL axis-angle (root in the camera frame); betas: (B, 10).
    cam_t: (B, 3) SMPL translation in the camera frame (valid where has_cam_t).
    has_smpl, has_joints3d, has_cam_t: (B,) bool. index: (B,) int64 row in the dataset.
    skipped: paths of images dropped from this batch because they could not be read.
    """

    skipped: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> HMRBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(HMRSample)}
        return HMRBatch(**moved, skipped=self.skipped)

    def smpl_params(self):
        """Ground-truth `SMPLParams` (rotation matrices) from `pose` and `betas`."""
        from model.geometry import axis_angle_to_rotmat
        from model.outputs import SMPLParams

        rots = axis_angle_to_rotmat(self.pose.reshape(-1, 24, 3))
        return SMPLParams(rots[:, :1], rots[:, 1:], self.betas)


def collate_samples(items: Sequence[HMRSample | Skipped]) -> HMRBatch:
    """DataLoader `collate_fn`: stacks samples, drops (and lists) skipped ones."""
    good = [it for it in items if isinstance(it, HMRSample)]
    skipped = tuple(it.path for it in items if isinstance(it, Skipped))
    if not good:
        empty = {f.name: _empty_like_field(f.name) for f in fields(HMRSample)}
        return HMRBatch(**empty, skipped=skipped)
    stacked = {f.name: torch.stack([getattr(s, f.name) for s in good]) for f in fields(HMRSample)}
    return HMRBatch(**stacked, skipped=skipped)


_FIELD_SHAPES = {
    "image": (3, *CROP_HW), "center": (2,), "box_size": (), "img_hw": (2,), "focal_length": (),
    "bbox_info": (3,), "crop_affine": (2, 3), "keypoints2d": (17, 3), "keypoints2d_box": (17, 3),
    "joints2d": (24, 3), "joints3d": (24, 3), "pose": (72,), "betas": (10,), "cam_t": (3,),
    "has_smpl": (), "has_joints3d": (), "has_cam_t": (), "index": (),
}


def _empty_like_field(name: str) -> Tensor:
    dtype = torch.bool if name.startswith("has_") else torch.int64 if name == "index" else torch.float32
    return torch.zeros((0, *_FIELD_SHAPES[name]), dtype=dtype)


# -- annotation files ----------------------------------------------------------------------


@dataclass(frozen=True)
class Annotations:
    """All rows of one annotation file, in our canonical form (N rows)."""

    path: Path
    image_root: Path
    imgname: np.ndarray  # (N,) str
    center: np.ndarray  # (N, 2)
    box_size: np.ndarray  # (N,)
    keypoints: np.ndarray  # (N, 17, 3) COCO-17
    joints2d: np.ndarray  # (N, 24, 3) SMPL-24
    joints3d: np.ndarray  # (N, 24, 3)
    pose: np.ndarray  # (N, 72)
    betas: np.ndarray  # (N, 10)
    cam_t: np.ndarray  # (N, 3)
    focal: np.ndarray  # (N,), 0 = default for the image size
    has_smpl: np.ndarray  # (N,) bool
    has_joints3d: np.ndarray
    has_cam_t: np.ndarray

    def __len__(self) -> int:
        return len(self.imgname)


def _coco_from_named(points: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N, K, 3) keypoints with joint `names` -> (N, 17, 3) COCO-17 by name (absent: conf 0)."""
    from model.keypoints import get_format

    coco = get_format("coco17").names
    out = np.zeros((points.shape[0], len(coco), 3))
    index = {n: i for i, n in enumerate(names)}
    for j, name in enumerate(coco):
        if name in index:
            out[:, j] = points[:, index[name]]
    return out


def load_annotations(path: str | Path, image_root: str | Path | None = None) -> Annotations:
    """Read one SPIN/CLIFF-layout `.npz` (ours or real).

    image_root: folder `imgname` is relative to; default: for our files the data set folder
    (two levels above the file), for real files the file's own folder.
    Raises ValueError naming the file and the missing fields.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read annotation file {path}: {exc}") from exc
    with data:
        arrays = {k: data[k] for k in data.files}
    missing = [f for f in REQUIRED_FIELDS if f not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks required fields {missing} (has {sorted(arrays)}); SPIN/CLIFF files "
            f"need {list(REQUIRED_FIELDS)} plus keypoints (`part` and/or `openpose`)"
        )
    ours = "layout" in arrays and str(arrays["layout"]) == SYNTH_LAYOUT
    if not ours and "part" not in arrays and "openpose" not in arrays:
        raise ValueError(f"{path} has no 2D keypoints: add `part` (SPIN 24) or `openpose` (BODY_25)")
    n = len(arrays["imgname"])
    root = Path(image_root) if image_root is not None else (path.parent.parent if ours else path.parent)
    return _canonical(path, root, arrays, n, ours)


def _canonical(path: Path, root: Path, a: dict[str, np.ndarray], n: int, ours: bool) -> Annotations:
    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name in a:
            return np.asarray(a[name], dtype=np.float64).reshape(n, *shape)
        return np.zeros((n, *shape))

    has_pose = "pose" in a
    has_smpl = (get("has_smpl", ()) > 0) if "has_smpl" in a else np.full(n, has_pose)
    if ours:
        keypoints = get("coco17", (17, 3))
        joints2d = get("part", (24, 3))
        joints3d = get("S", (24, 4))[..., :3]
        has_j3d = np.ones(n, dtype=bool)
    else:
        from model.keypoints import get_format

        keypoints = _coco_from_named(get("part", (24, 3)), SPIN24_NAMES)
        if "openpose" in a:
            from_op = _coco_from_named(get("openpose", (25, 3)), get_format("openpose25").names)
            fill = (keypoints[..., 2] <= 0)[..., None]
            keypoints = np.where(fill, from_op, keypoints)
        joints2d = np.zeros((n, 24, 3))
        joints3d = np.zeros((n, 24, 3))
        has_j3d = np.zeros(n, dtype=bool)
    return Annotations(
        path=path,
        image_root=root,
        imgname=np.asarray(a["imgname"]).astype(str).reshape(n),
        center=get("center", (2,)),
        box_size=get("scale", ()) * 200.0,
        keypoints=keypoints,
        joints2d=joints2d,
        joints3d=joints3d,
        pose=get("pose", (72,)),
        betas=get("shape", (10,)),
        cam_t=get("cam_t", (3,)),
        focal=get("focal_length", ()),
        has_smpl=np.asarray(has_smpl, dtype=bool) & has_pose,
        has_joints3d=has_j3d,
        has_cam_t=np.full(n, "cam_t" in a),
    )


def annotation_files(source: str | Path) -> list[Path]:
    """The `.npz` files of a data set folder (its `annotations/`), or the file itself."""
    source = Path(source)
    if source.is_file():
        return [source]
    folder = source / "annotations" if (source / "annotations").is_dir() else source
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise ValueError(f"no .npz annotation files in {folder}; run `metahmr data synth` first")
    return files


# -- the dataset -----------------------------------------------------------------------------


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class HMRDataset(Dataset):
    """People from one or more annotation files, cropped (and augmented) for training.

    sources: data set folders or `.npz` files. image_root: overrides where images are found
    (see `load_annotations`). augment: None for evaluation (no randomness). seed: with the
    DataLoader's per-worker seed, makes augmentation reproducible.
    `num_skipped` counts unreadable images met in this process.
    """

    def __init__(
        self,
        sources: Sequence[str | Path] | str | Path,
        image_root: str | Path | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(sources, (str, Path)):
            sources = [sources]
        files = [f for s in sources for f in annotation_files(s)]
        self.files = [load_annotations(f, image_root) for f in files]
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])
        self.augment = augment
        self.seed = seed
        self.num_skipped = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[Annotations, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.files[k], index - int(self.offsets[k])

    def person(self, index: int) -> Person:
        """The un-augmented person at `index` (raises OSError if the image is unreadable)."""
        ann, row = self._locate(index)
        image = _read_image(ann.image_root / ann.imgname[row])
        h, w = image.shape[:2]
        focal = float(ann.focal[row]) if ann.focal[row] > 0 else float(np.hypot(h, w))
        return Person(
            image=image, center=ann.center[row].copy(), box_size=float(ann.box_size[row]),
            focal=focal, keypoints=ann.keypoints[row].copy(), joints2d=ann.joints2d[row].copy(),
            joints3d=ann.joints3d[row].copy(), pose=ann.pose[row].copy(),
            betas=ann.betas[row].copy(), cam_t=ann.cam_t[row].copy(),
            has_smpl=bool(ann.has_smpl[row]), has_joints3d=bool(ann.has_joints3d[row]),
            has_cam_t=bool(ann.has_cam_t[row]),
        )

    def __getitem__(self, index: int) -> HMRSample | Skipped:
        try:
            person = self.person(index)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
            ann, row = self._locate(index)
            path = str(ann.image_root / ann.imgname[row])
            self.num_skipped += 1
            log.warning("skipping unreadable image %s: %s", path, exc)
            return Skipped(path, str(exc))
        if self.augment is None:
            params = NO_AUGMENT
            rng = np.random.default_rng(0)
        else:
            rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**32, index])
            params = sample_params(rng, self.augment)
        crop, person = augment_and_crop(rng, person, params)
        return to_sample(crop, person, index)


def to_sample(crop: np.ndarray, p: Person, index: int) -> HMRSample:
    """Tensors for one cropped person (labels in the frame the crop is axis-aligned in)."""
    from model.geometry import cliff_bbox_info, pixels_to_box

    h, w = p.image_hw
    f32 = torch.float32
    center = torch.tensor(p.center, dtype=f32)
    box_size = torch.tensor(p.box_size, dtype=f32)
    img_hw = torch.tensor([h, w], dtype=f32)
    focal = torch.tensor(p.focal, dtype=f32)
    keypoints = torch.tensor(p.keypoints, dtype=f32)
    boxed = pixels_to_box(keypoints[None, :, :2], center[None], box_size[None])[0]
    aspect = CROP_HW[1] / CROP_HW[0]
    inside = (boxed[:, 0].abs() <= aspect) & (boxed[:, 1].abs() <= 1.0)
    box_kp = torch.cat([boxed, (keypoints[:, 2] * inside)[:, None]], dim=1)
    image = torch.from_numpy(np.array(crop, copy=True)).permute(2, 0, 1).to(f32) / 255.0
    return HMRSample(
        image=image,
        center=center,
        box_size=box_size,
        img_hw=img_hw,
        focal_length=focal,
        bbox_info=cliff_bbox_info(center[None], box_size[None], img_hw[None], focal[None])[0],
        crop_affine=torch.tensor(crop_affine(p.center, p.box_size), dtype=f32),
        keypoints2d=keypoints,
        keypoints2d_box=box_kp,
        joints2d=torch.tensor(p.joints2d, dtype=f32),
        joints3d=torch.tensor(p.joints3d, dtype=f32),
        pose=torch.tensor(p.pose, dtype=f32),
        betas=torch.tensor(p.betas, dtype=f32),
        cam_t=torch.tensor(p.cam_t, dtype=f32),
        has_smpl=torch.tensor(p.has_smpl),
        has_joints3d=torch.tensor(p.has_joints3d),
        has_cam_t=torch.tensor(p.has_cam_t),
        index=torch.tensor(index, dtype=torch.int64),
    )
