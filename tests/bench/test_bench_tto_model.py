"""Specification of bench/tto_model.py: a BlazePose model's request path, timed per part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.timing import BenchSettings
from bench.tto import machine_info
from bench.tto_model import bench_model, render_markdown
from model.checkpoint import checkpoint_from_models, save_checkpoint
from model.config import BackboneConfig, RegressorConfig, TTOConfig
from model.regressor import build_regressor

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def body():
    from model.body import load_body_model

    return load_body_model()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, body) -> Path:
    cfg = RegressorConfig(BackboneConfig("blazepose-full", 0.25, blocks=1), hidden=64, dropout=0.0)
    ckpt = checkpoint_from_models(
        build_regressor(cfg, seed=0), TTOConfig(scope="head", sgd_lr=1e-4, adam_lr=1e-4), body.id,
        f_u=build_regressor(cfg, seed=1), model_version="bench-test",
    )
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint(ckpt, path)
    return path


def test_model_bench_times_every_part_of_the_request_path(small_model: Path, body) -> None:
    settings = BenchSettings(repeats=1, threads=1)
    torch.set_num_threads(1)
    r = bench_model(small_model, settings, body, compiled=False)
    assert r["version"] == "bench-test" and r["variant"] == "full"
    for key in ("forward_ms", "detector_ms", "landmarks_ms", "heads_ms", "head_tto_ms"):
        assert 0.0 < r[key] < 60_000.0, (key, r[key])
    assert r["head_tto_overhead"] == pytest.approx(r["head_tto_ms"] / r["forward_ms"])
    assert "head_tto_compiled_ms" not in r
    assert r["tto"] == {"subset": "all", "sgd_lr": 1e-4, "adam_lr": 1e-4}
    text = render_markdown({"model_result": r, "machine": machine_info(settings)}, "metahmr bench tto")
    row = next(line for line in text.splitlines() if line.startswith("| bench-test"))
    assert f"{r['forward_ms']:.1f}" in row and row.count("–") == 2
    assert "Target: head TTO / fwd <= 0.5." in text


def test_model_bench_rejects_an_image_backbone(tmp_path: Path, body) -> None:
    cfg = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
    path = tmp_path / "r.pt"
    save_checkpoint(checkpoint_from_models(build_regressor(cfg, seed=0), TTOConfig(), body.id), path)
    with pytest.raises(ValueError, match="not a BlazePose model"):
        bench_model(path, BenchSettings(repeats=1, threads=1), body, compiled=False)
