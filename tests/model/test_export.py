"""Specification of model/export.py and `metahmr export`: graphs, manifest, parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cli import main as metahmr
from model.checkpoint import Checkpoint, checkpoint_from_models, save_checkpoint
from model.config import BackboneConfig, DetectorConfig, RegressorConfig, TTOConfig
from model.export import (
    check_parity,
    export_checkpoint,
    file_sha256,
    load_manifest,
)
from model.keypoint_detector import HeatmapOnnxDetector, build_detector, detect
from model.regressor import build_regressor

torch.set_num_threads(1)

TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
TINY_DET = DetectorConfig(BackboneConfig("resnet18", 0.25), deconv_channels=(32, 32, 32))
GRAPHS = ("f_w_backbone", "f_w_head", "f_u_backbone", "f_u_head", "detector")


def _scramble(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Randomise every parameter and BatchNorm statistic, so parity covers every path.

    A fresh network has zero-initialised residual branches and tiny decoder weights, which
    would let a broken graph pass a parity check.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")):
                # Below 1, so activations stay O(1-10) through the residual stack and the
                # 1e-4 absolute bar stays a real test of the graph, not of float32 rounding.
                t.copy_(0.2 + 0.4 * torch.rand(t.shape, generator=gen))
            elif name.startswith("head.init"):
                continue
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=gen))
    return module.eval()


@pytest.fixture(scope="module")
def scrambled() -> Checkpoint:
    return checkpoint_from_models(
        _scramble(build_regressor(TINY, seed=0), 1),
        TTOConfig(scope="head"),
        "test-body",
        f_u=_scramble(build_regressor(TINY, seed=2), 3),
        detector=_scramble(build_detector(TINY_DET, seed=4), 5),
        model_version="t1",
        metrics={"mpjpe_mm": 123.0},
    )


@pytest.fixture(scope="module")
def exported(scrambled: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_checkpoint(scrambled, out)
    return out


def test_every_graph_matches_pytorch_at_other_batch_sizes(
    scrambled: Checkpoint, exported: Path
) -> None:
    for batch in (1, 3):
        errors = check_parity(scrambled, exported, batch=batch, seed=batch)
        assert set(errors) == set(GRAPHS)
        assert max(errors.values()) <= 1e-4, errors


def test_manifest_describes_every_graph_as_exported(exported: Path) -> None:
    manifest = load_manifest(exported)
    assert manifest["model"] == {"name": "metahmr", "version": "t1"}
    assert manifest["body_model_id"] == "test-body"
    assert manifest["tto_scope"] == "head" and manifest["tto"]["steps"] == 14
    assert manifest["opset"] == 17 and manifest["crop_hw"] == [256, 192]
    assert manifest["image_input"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["detector"]["stride"] == 4 and len(manifest["detector"]["flip_perm"]) == 17
    assert set(manifest["graphs"]) == set(GRAPHS)
    for name, spec in manifest["graphs"].items():
        model = onnx.load(exported / spec["file"])
        onnx.checker.check_model(model)
        assert model.opset_import[0].version == 17
        assert [i.name for i in model.graph.input] == [i["name"] for i in spec["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in spec["outputs"]]
        for io in spec["inputs"] + spec["outputs"]:
            assert io["shape"][0] == "N" and io["dtype"] == "float32"
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "N", name
    head = manifest["graphs"]["f_w_head"]
    assert head["inputs"] == [
        {"name": "features", "shape": ["N", 128], "dtype": "float32"},
        {"name": "bbox_info", "shape": ["N", 3], "dtype": "float32"},
    ]
    assert [o["shape"] for o in head["outputs"]] == [["N", 24, 3, 3], ["N", 10], ["N", 3]]
    assert manifest["graphs"]["detector"]["outputs"][0]["shape"] == ["N", 17, 64, 48]
    assert not any(p.suffix == ".data" for p in exported.iterdir())  # weights embedded


def test_exported_detector_gives_the_pytorch_keypoints(
    scrambled: Checkpoint, exported: Path
) -> None:
    crops = np.random.default_rng(0).integers(0, 255, size=(2, 256, 192, 3), dtype=np.uint8)
    onnx_kp = HeatmapOnnxDetector(exported / "detector.onnx", threads=1).predict(crops)
    torch_kp = detect(scrambled.build_detector(), crops)
    np.testing.assert_allclose(onnx_kp, torch_kp, atol=1e-4)


def test_export_without_aux_or_detector_writes_only_f_w(tmp_path: Path) -> None:
    ckpt = checkpoint_from_models(build_regressor(TINY), TTOConfig(), "b")
    manifest = export_checkpoint(ckpt, tmp_path)
    assert set(manifest["graphs"]) == {"f_w_backbone", "f_w_head"}
    assert "detector" not in manifest


def test_metahmr_export_command_on_a_random_checkpoint(
    scrambled: Checkpoint, tmp_path: Path
) -> None:
    ckpt_path = save_checkpoint(scrambled, tmp_path / "model.pt")
    out = tmp_path / "export"
    assert metahmr(["export", "--checkpoint", str(ckpt_path), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == file_sha256(ckpt_path)
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(f"{g}.onnx" for g in GRAPHS)


def test_metahmr_export_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        metahmr(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path)])
