"""ONNX export of a checkpoint for the worker: graphs, a manifest, and a parity check.

Written to ``DIR``:

- ``f_w_backbone.onnx`` / ``f_u_backbone.onnx``: ``image (N, 3, 256, 192)`` -> ``features (N, F)``;
- ``f_w_head.onnx`` / ``f_u_head.onnx``: ``features (N, F)``, ``bbox_info (N, 3)`` ->
  ``rotmat (N, 24, 3, 3)``, ``betas (N, 10)``, ``crop_cam (N, 3)``;
- ``detector.onnx``: ``image (N, 3, 256, 192)`` -> ``heatmaps (N, 17, 64, 48)``;
- ``checkpoint.pt``: the checkpoint itself (copied, or saved when exported from memory):
  the worker's TTO runs f_w in PyTorch, so an export directory is self-contained;
- ``manifest.json``: every graph's inputs/outputs (names, shapes with "N" for the dynamic
  batch, dtypes), model name/version, body model id, TTO scope and settings, opset, input
  normalisation, and the checkpoint's file name and sha256 so the worker can check that its
  PyTorch copy (used for the TTO) matches the graphs.

Exporter: the legacy TorchScript-based one (``dynamo=False``), chosen deliberately. On this
torch 2.13 the dynamo exporter needs the extra `onnxscript` package (not installed here),
writes weights to a separate ``.onnx.data`` file unless told otherwise, ignores
``opset_version=17`` (emits 18), and takes ~10 s a graph; the legacy exporter handles the
five graphs of a resnet18 model in ~1 s (resnet50: ~7 s), embeds the weights, and
honours the opset. Every graph is checked against PyTorch by `check_parity` (max abs
error, <= 1e-4 is the bar).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.backbones import IMAGENET_MEAN, IMAGENET_STD, is_landmark_backbone
from model.blazepose import FEATURE_DIM
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import to_dict
from model.keypoint_detector import COCO17_FLIP_PERM, KeypointDetector
from model.regressor import Regressor

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MANIFEST = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FORMAT = "metahmr-onnx"
MANIFEST_VERSION = 1
BATCH = "N"


class _BackboneGraph(nn.Module):
    def __init__(self, regressor: Regressor) -> None:
        super().__init__()
        self.backbone = regressor.backbone

    def forward(self, image: Tensor) -> Tensor:
        return self.backbone(image)


class _HeadGraph(nn.Module):
    def __init__(self, regressor: Regressor) -> None:
        super().__init__()
        self.head = regressor.head

    def forward(self, features: Tensor, bbox_info: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.head(features, bbox_info)
        return out.params.rotmats(), out.params.betas, out.crop_cam


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: its module, example inputs, and I/O names and shapes."""

    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: dict[str, tuple[Any, ...]]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def graph_specs(ckpt: Checkpoint) -> list[GraphSpec]:
    """The graphs a checkpoint exports to (f_u and the detector only when present)."""
    crop_h, crop_w = ckpt.regressor_config.crop_hw
    image = torch.zeros(2, 3, crop_h, crop_w)
    specs: list[GraphSpec] = []
    nets = {"f_w": ckpt.build_f_w(), "f_u": ckpt.build_f_u()}
    for net, model in nets.items():
        if model is None:
            continue
        feat = model.feature_dim
        # A BlazePose regressor's backbone graph is its encoder over BlazePose's output
        # vector (BlazePose itself runs in LiteRT in the worker, model.blazepose).
        landmarks = is_landmark_backbone(model.config.backbone.name)
        specs.append(
            GraphSpec(
                f"{net}_backbone",
                _BackboneGraph(model).eval(),
                {"blazepose": torch.zeros(2, FEATURE_DIM)} if landmarks else {"image": image},
                {"features": (BATCH, feat)},
            )
        )
        specs.append(
            GraphSpec(
                f"{net}_head",
                _HeadGraph(model).eval(),
                {"features": torch.zeros(2, feat), "bbox_info": torch.zeros(2, 3)},
                {"rotmat": (BATCH, 24, 3, 3), "betas": (BATCH, 10), "crop_cam": (BATCH, 3)},
            )
        )
    detector = ckpt.build_detector()
    if detector is not None:
        dh, dw = detector.config.crop_hw
        k, s = detector.config.num_keypoints, detector.stride
        specs.append(
            GraphSpec(
                "detector",
                detector.eval(),
                {"image": torch.zeros(2, 3, dh, dw)},
                {"heatmaps": (BATCH, k, dh // s, dw // s)},
            )
        )
    return specs


def export_graph(spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export one graph with a dynamic batch dimension (legacy exporter, see module doc)."""
    names_in, names_out = list(spec.inputs), list(spec.outputs)
    dynamic = {n: {0: BATCH} for n in names_in + names_out}
    with warnings.catch_warnings():
        # The tracer warns about Python-level shape checks (e.g. in rot6d_to_rotmat); they
        # only guard against wrong inputs and are constant for a given graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            spec.module,
            tuple(spec.inputs.values()),
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _io(name: str, shape: tuple[Any, ...]) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32"}


def build_manifest(
    ckpt: Checkpoint, specs: list[GraphSpec], opset: int, checkpoint_sha256: str | None
) -> dict[str, Any]:
    """The worker-facing description of an export (see the module docstring)."""
    graphs = {
        spec.name: {
            "file": spec.file,
            "inputs": [_io(n, (BATCH, *t.shape[1:])) for n, t in spec.inputs.items()],
            "outputs": [_io(n, s) for n, s in spec.outputs.items()],
        }
        for spec in specs
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model": {"name": ckpt.model_name, "version": ckpt.model_version},
        "body_model_id": ckpt.body_model_id,
        "tto_scope": ckpt.tto.scope,
        "tto": to_dict(ckpt.tto),
        "opset": opset,
        "exporter": "torch.onnx legacy (dynamo=False)",
        "torch_version": torch.__version__,
        "crop_hw": list(ckpt.regressor_config.crop_hw),
        "regressor": to_dict(ckpt.regressor_config),
        "image_input": {
            "layout": "NCHW",
            "color": "RGB",
            "scale": 1.0 / 255.0,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "graphs": graphs,
        "metrics": ckpt.metrics,
        "checkpoint_file": CHECKPOINT_FILE,
        "checkpoint_sha256": checkpoint_sha256,
    }
    name = ckpt.regressor_config.backbone.name
    if is_landmark_backbone(name):
        from model.backbones import landmark_variant
        from model.blazepose_files import WHEEL_PACKAGE, WHEEL_VERSION

        manifest["blazepose"] = {
            "variant": landmark_variant(name), "feature_dim": FEATURE_DIM,
            "package": f"{WHEEL_PACKAGE}=={WHEEL_VERSION}", "licence": "Apache-2.0",
        }  # fmt: skip
    if ckpt.detector_config is not None:
        manifest["detector"] = {
            "config": to_dict(ckpt.detector_config),
            "keypoint_format": "coco17",
            "stride": KeypointDetector(ckpt.detector_config).stride,
            "flip_perm": list(COCO17_FLIP_PERM),
        }
    return manifest


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_checkpoint(
    ckpt: Checkpoint,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    checkpoint_path: str | Path | None = None,
) -> dict[str, Any]:
    """Export every graph of `ckpt` into out_dir, put the checkpoint next to them (a copy of
    `checkpoint_path`, else `ckpt` saved) and write the manifest; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(ckpt)
    for spec in specs:
        export_graph(spec, out / spec.file, opset)
        log.info("exported %s", out / spec.file)
    target = out / CHECKPOINT_FILE
    if checkpoint_path is None:
        save_checkpoint(ckpt, target)
    elif Path(checkpoint_path).resolve() != target.resolve():
        shutil.copyfile(checkpoint_path, target)
    sha = file_sha256(target)
    manifest = build_manifest(ckpt, specs, opset, sha)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read DIR/manifest.json, checking its format marker."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {out_dir}; run `metahmr export` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a metahmr ONNX manifest")
    return manifest


def check_parity(
    ckpt: Checkpoint, out_dir: str | Path, batch: int = 3, seed: int = 0
) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and PyTorch for every exported graph.

    Uses random inputs of `batch` (a batch size other than the export's, so the dynamic
    axis is exercised). Returns {graph name: max abs error over its outputs}.
    """
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for spec in graph_specs(ckpt):
        inputs = {
            n: torch.randn((batch, *t.shape[1:]), generator=gen) for n, t in spec.inputs.items()
        }
        with torch.no_grad():
            ref = spec.module(*inputs.values())
        refs = ref if isinstance(ref, tuple) else (ref,)
        session = ort.InferenceSession(
            str(Path(out_dir) / spec.file), providers=["CPUExecutionProvider"]
        )
        got = session.run(list(spec.outputs), {n: t.numpy() for n, t in inputs.items()})
        errors[spec.name] = max(
            float(np.abs(g - r.numpy()).max()) for g, r in zip(got, refs, strict=True)
        )
    return errors
