"""The one checkpoint format: a `torch.save`d dict of plain builtins and tensors.

Layout (format_version 1)::

    {"format": "metahmr-checkpoint", "format_version": 1,
     "model": {"name": str, "version": str},
     "body_model_id": str, "tto_scope": "head" | "full",
     "configs": {"regressor": dict, "detector": dict | None, "tto": dict},
     "state_dicts": {"f_w": dict, "f_u": dict | None, "detector": dict | None},
     "metrics": {str: float}, "extra": dict}

Only builtins and tensors, so `load_checkpoint` uses ``torch.load(weights_only=True)`` (no
pickled code runs) and needs nothing from `training/`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.config import DetectorConfig, RegressorConfig, TTOConfig, from_dict, to_dict
from model.keypoint_detector import KeypointDetector, build_detector
from model.regressor import Regressor, build_regressor

FORMAT = "metahmr-checkpoint"
FORMAT_VERSION = 1
MODEL_NAME = "metahmr"

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class Checkpoint:
    """Weights and settings of one trained (or randomly initialised) model.

    f_w: main network state dict (the meta-parameters). f_u: auxiliary network, or None
    (methods without one). detector: keypoint detector, or None.
    tto: the TTO settings the model was meta-trained with (its scope must be used at test
    time). body_model_id: which body model the networks were trained against.
    """

    regressor_config: RegressorConfig
    tto: TTOConfig
    f_w: StateDict
    body_model_id: str
    f_u: StateDict | None = None
    detector_config: DetectorConfig | None = None
    detector: StateDict | None = None
    model_name: str = MODEL_NAME
    model_version: str = "0"
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tto_scope(self) -> str:
        return self.tto.scope

    def build_f_w(self, device: torch.device | str = "cpu") -> Regressor:
        """f_w with its weights, in eval mode."""
        return _load_regressor(self.regressor_config, self.f_w, device)

    def build_f_u(self, device: torch.device | str = "cpu") -> Regressor | None:
        """f_u with its weights, in eval mode (None when the checkpoint has none)."""
        if self.f_u is None:
            return None
        return _load_regressor(self.regressor_config, self.f_u, device)

    def build_detector(self, device: torch.device | str = "cpu") -> KeypointDetector | None:
        """The keypoint detector, in eval mode (None when the checkpoint has none)."""
        if self.detector is None or self.detector_config is None:
            return None
        model = KeypointDetector(self.detector_config)
        model.load_state_dict(self.detector)
        return model.to(device).eval()


def _load_regressor(config: RegressorConfig, state: StateDict, device: Any) -> Regressor:
    model = Regressor(config)
    model.load_state_dict(state)
    return model.to(device).eval()


def _cpu_state(module: torch.nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def checkpoint_from_models(
    f_w: Regressor,
    tto: TTOConfig,
    body_model_id: str,
    f_u: Regressor | None = None,
    detector: KeypointDetector | None = None,
    model_version: str = "0",
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Snapshot live networks (weights copied to CPU) into a `Checkpoint`."""
    if f_u is not None and f_u.config != f_w.config:
        raise ValueError("f_w and f_u must share one RegressorConfig")
    return Checkpoint(
        regressor_config=f_w.config,
        tto=tto,
        f_w=_cpu_state(f_w),
        body_model_id=body_model_id,
        f_u=None if f_u is None else _cpu_state(f_u),
        detector_config=None if detector is None else detector.config,
        detector=None if detector is None else _cpu_state(detector),
        model_version=model_version,
        metrics=dict(metrics or {}),
        extra=dict(extra or {}),
    )


def random_checkpoint(
    regressor_config: RegressorConfig | None = None,
    detector_config: DetectorConfig | None = None,
    tto: TTOConfig | None = None,
    body_model_id: str | None = None,
    seed: int = 0,
    with_detector: bool = True,
    with_aux: bool = True,
) -> Checkpoint:
    """A randomly initialised checkpoint (for service tests and `metahmr export`).

    body_model_id: defaults to the id of the body model `model.body.load_body_model()`
    loads (the bundled open model unless METAHMR_BODY_MODEL is set).
    """
    regressor_config = regressor_config or RegressorConfig()
    if body_model_id is None:
        from model.body import load_body_model

        body_model_id = load_body_model().id
    f_w = build_regressor(regressor_config, seed=seed)
    f_u = build_regressor(regressor_config, seed=seed + 1) if with_aux else None
    detector = build_detector(detector_config, seed=seed + 2) if with_detector else None
    return checkpoint_from_models(
        f_w, tto or TTOConfig(), body_model_id, f_u, detector, model_version="random-init"
    )


def half_precision(ckpt: Checkpoint) -> Checkpoint:
    """The same checkpoint with float16 weights, for shipping in git (half the bytes).

    Only learned weights are halved; BatchNorm statistics stay float32 (running variances
    can be smaller than float16 resolves). Loading needs nothing special:
    `load_state_dict` copies into the float32 parameters. Measure a halved model as shipped:
    its outputs differ from the float32 original by float16 rounding (~1e-3 relative).
    """

    def halve(state: StateDict | None) -> StateDict | None:
        if state is None:
            return None
        return {
            k: v.half() if v.is_floating_point() and not k.endswith(_KEEP_FLOAT32) else v
            for k, v in state.items()
        }

    from dataclasses import replace

    return replace(
        ckpt,
        f_w=halve(ckpt.f_w) or {},
        f_u=halve(ckpt.f_u),
        detector=halve(ckpt.detector),
        extra={**ckpt.extra, "weights_dtype": "float16"},
    )


_KEEP_FLOAT32 = ("running_mean", "running_var", "init_pose", "init_betas", "init_cam")


def to_payload(ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint as the plain dict that is saved (see the module docstring)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": ckpt.model_name, "version": ckpt.model_version},
        "body_model_id": ckpt.body_model_id,
        "tto_scope": ckpt.tto.scope,
        "configs": {
            "regressor": to_dict(ckpt.regressor_config),
            "detector": None if ckpt.detector_config is None else to_dict(ckpt.detector_config),
            "tto": to_dict(ckpt.tto),
        },
        "state_dicts": {"f_w": ckpt.f_w, "f_u": ckpt.f_u, "detector": ckpt.detector},
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "extra": ckpt.extra,
    }


def from_payload(payload: dict[str, Any], source: str = "checkpoint") -> Checkpoint:
    """Inverse of `to_payload`; raises ValueError naming what is wrong."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{source} is not a metahmr checkpoint (no format={FORMAT!r} marker)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{source} has checkpoint format_version {version}; this code reads "
            f"{FORMAT_VERSION} (re-save it with a matching metahmr version)"
        )
    configs, states = payload["configs"], payload["state_dicts"]
    tto = from_dict(TTOConfig, configs["tto"])
    if payload.get("tto_scope") != tto.scope:
        raise ValueError(f"{source}: tto_scope {payload.get('tto_scope')!r} != {tto.scope!r}")
    detector_cfg = configs.get("detector")
    return Checkpoint(
        regressor_config=from_dict(RegressorConfig, configs["regressor"]),
        tto=tto,
        f_w=states["f_w"],
        body_model_id=str(payload["body_model_id"]),
        f_u=states.get("f_u"),
        detector_config=None if detector_cfg is None else from_dict(DetectorConfig, detector_cfg),
        detector=states.get("detector"),
        model_name=str(payload["model"]["name"]),
        model_version=str(payload["model"]["version"]),
        metrics=dict(payload.get("metrics", {})),
        extra=dict(payload.get("extra", {})),
    )


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(to_payload(ckpt), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (safe: weights_only loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found at {path}; pass the path of a .pt file written by the "
            "training commands (see `metahmr --help`)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ValueError(f"{path} could not be read as a metahmr checkpoint: {exc}") from exc
    return from_payload(payload, str(path))
