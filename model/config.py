"""Typed configuration for the networks, the losses and the test-time optimisation.

Plain frozen dataclasses, built explicitly and passed in (never read at import time).
`to_dict` / `from_dict` turn them into plain dicts of builtins, which is how checkpoints
store them (so a checkpoint loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

CROP_HW = (256, 192)

TTO_SCOPES = ("head", "full")
HEAD_SUBSETS = ("all", "output")


@dataclass(frozen=True)
class BackboneConfig:
    """An image backbone (see `model.backbones.build_backbone`).

    name: "resnet18" | "resnet34" | "resnet50", or "timm:<model name>" when timm is installed.
    width: channel multiplier of the in-house ResNets (1.0 = the standard widths; 0.5 halves
        every layer, a quarter of the compute, for the CPU-sized model).
    input_noise: for "blazepose-*" (BlazePose's outputs as the features), the std of the
        Gaussian noise added to them while training.
    blocks: for "blazepose-*", the residual blocks of the encoder over BlazePose's outputs
        (0: the plain two-layer MLP of the first BlazePose models).
    """

    name: str = "resnet50"
    width: float = 1.0
    input_noise: float = 0.0
    blocks: int = 0


@dataclass(frozen=True)
class RegressorConfig:
    """A CLIFF-style regressor (f_w and f_u share this).

    hidden: width of the head's two fully connected layers (1024 in HMR/CLIFF).
    n_iter: iterative-refinement steps from the mean parameters (3 in HMR/CLIFF).
    dropout: dropout after each hidden layer during training (0.5 in HMR/CLIFF; the TTO and
        the exported graphs run in eval mode, where it is off).
    crop_hw: input crop (height, width).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden: int = 1024
    n_iter: int = 3
    dropout: float = 0.5
    crop_hw: tuple[int, int] = CROP_HW


@dataclass(frozen=True)
class DetectorConfig:
    """The built-in 2D keypoint detector (SimpleBaseline-style heatmap network).

    deconv_channels: channels of each stride-2 transposed convolution after the backbone
        (three of them take the stride-32 features to a stride-4 heatmap).
    num_keypoints: heatmap channels, COCO-17 order.
    """

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("resnet18", 1.0))
    deconv_channels: tuple[int, ...] = (256, 256, 256)
    num_keypoints: int = 17
    crop_hw: tuple[int, int] = CROP_HW


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the reference code's defaults).

    keypoints_2d and keypoints_3d share the reference's `keypoint_loss_weight` (5);
    cam_scale weights ``exp(-10 s)²``, which keeps the crop-camera scale s positive.
    """

    keypoints_2d: float = 5.0
    keypoints_3d: float = 5.0
    pose: float = 1.0
    betas: float = 0.001
    vertices: float = 0.5
    cam_scale: float = 1.0


@dataclass(frozen=True)
class TTOConfig:
    """The test-time optimisation schedule (ARCHITECTURE §3; reference eval settings).

    scope: "head" (backbone features fixed, only the regressor head adapts) or "full".
    head_subset: which head parameters adapt in the "head" scope: "all", or "output" (the
        three decoder layers that emit pose, shape and camera; far cheaper to batch).
    sgd_lr: step 0, one SGD step on L_test-u. adam_lr: the Adam steps on the 2D loss.
    steps: maximum number of Adam steps after step 0 (14 in the reference evaluation).
    early_stop: stop once the 2D loss changes by less than this between steps.
    use_aux: include agreement with the auxiliary prediction in step 0 (False = EFT-style
        2D-only step 0, also used when no auxiliary prediction is given).

    This is the method's schedule, saved in checkpoints; how a fit runs on this machine
    (threads, compiled steps) is `TTORuntime`, passed to `model.tto.fit` separately.
    """

    # Runtime flags older checkpoints saved with the schedule; `from_dict` drops them.
    RETIRED_KEYS: ClassVar[tuple[str, ...]] = ("num_threads", "compile", "fused_head")

    scope: str = "head"
    head_subset: str = "all"
    sgd_lr: float = 1e-5
    adam_lr: float = 1e-5
    steps: int = 14
    early_stop: float = 2e-5
    use_aux: bool = True
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.scope not in TTO_SCOPES:
            raise ValueError(f"unknown TTO scope {self.scope!r}; valid scopes: {TTO_SCOPES}")
        if self.head_subset not in HEAD_SUBSETS:
            raise ValueError(
                f"unknown head_subset {self.head_subset!r}; valid values: {HEAD_SUBSETS}"
            )
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass(frozen=True)
class TTORuntime:
    """How `model.tto.fit` runs here, never saved with a model (the schedule is `TTOConfig`).

    num_threads: torch intra-op threads while fitting (None = leave as is).
    compile: each step's forward and loss as one `torch.compile`d graph, its backward
        compiled with it (same maths, several times less per-step overhead on a CPU; the
        first fit of a shape compiles, seconds to minutes, so a worker warms it up at
        start). Needs a C++ compiler on CPU; without one the fit falls back to eager.
    batched: fit the "head" scope's people in one pass (a weight copy each) rather than one
        by one; None picks the faster (`model.tto.default_batched`). Results are equal.
    """

    num_threads: int | None = None
    compile: bool = False
    batched: bool | None = None


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict of builtins (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from `to_dict`'s output (nested configs included).

    Unknown keys raise ValueError, so a checkpoint from a newer version fails loudly; keys
    a class lists in its `RETIRED_KEYS` (settings that moved elsewhere) are dropped.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    retired = getattr(cls, "RETIRED_KEYS", ())
    data = {k: v for k, v in data.items() if k not in retired}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; valid: {sorted(fields)}")
    defaults = cls() if _has_defaults(cls) else None
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(defaults, name, None)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )
