"""Per-split settings of the synthetic engine: `train`, `test` (same distribution as train,
other seeds) and `shifted` (a domain gap: rare poses, extreme views and lenses, unseen
backgrounds and occluder styles)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.synth import textures
from training.synth.backgrounds import BackgroundConfig
from training.synth.cameras import CameraConfig
from training.synth.degrade import DegradeConfig
from training.synth.occluders import SHIFTED_STYLES, OccluderConfig
from training.synth.poses import COMMON_FAMILIES, RARE_FAMILIES, PoseFamily

SPLITS: tuple[str, ...] = ("train", "test", "shifted")


@dataclass(frozen=True)
class SplitConfig:
    name: str
    split_id: int  # part of every per-sample seed, so splits never share a sample
    pose_families: tuple[PoseFamily, ...] = COMMON_FAMILIES
    betas_sigma: float = 1.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    occluders: OccluderConfig = field(default_factory=OccluderConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)


def _half(families: tuple[PoseFamily, ...]) -> tuple[PoseFamily, ...]:
    total = sum(f.weight for f in families)
    return tuple(PoseFamily(f.name, 0.5 * f.weight / total, f.sampler) for f in families)


def split_config(name: str, long_side: int = 640) -> SplitConfig:
    """Settings for split `name`; `long_side` is the image's longer side in pixels."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid: {list(SPLITS)}")
    if name in ("train", "test"):
        return SplitConfig(name, SPLITS.index(name), camera=CameraConfig(long_side=long_side))
    return SplitConfig(
        name,
        SPLITS.index(name),
        pose_families=_half(COMMON_FAMILIES) + _half(RARE_FAMILIES),
        camera=CameraConfig(
            long_side=long_side, fov_deg=(20.0, 100.0), pitch_deg=(-60.0, 60.0),
            roll_deg=(-12.0, 12.0),
        ),
        background=BackgroundConfig(
            procedural=("cells", "rings"), photos=textures.SHIFTED_PHOTOS, photo_prob=0.5
        ),
        occluders=OccluderConfig(
            styles=SHIFTED_STYLES, prob=0.6, max_count=3, photos=textures.SHIFTED_PHOTOS
        ),
    )
