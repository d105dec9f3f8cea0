"""Specification of model/checkpoint.py: one format, safe loading, random initialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import (
    FORMAT_VERSION,
    checkpoint_from_models,
    load_checkpoint,
    random_checkpoint,
    save_checkpoint,
    to_payload,
)
from model.config import BackboneConfig, DetectorConfig, LossWeights, RegressorConfig, TTOConfig
from model.regressor import build_regressor

torch.set_num_threads(1)

TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
TINY_DET = DetectorConfig(BackboneConfig("resnet18", 0.25), deconv_channels=(32, 32, 32))
TTO = TTOConfig(scope="full", steps=5, loss_weights=LossWeights(vertices=0.0))


def tiny_checkpoint(**kw: object) -> object:
    return random_checkpoint(TINY, TINY_DET, TTO, body_model_id="test-body", **kw)


def test_round_trip_keeps_weights_configs_and_metadata(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(seed=3)
    path = save_checkpoint(ckpt, tmp_path / "sub" / "model.pt")
    loaded = load_checkpoint(path)
    assert loaded.regressor_config == TINY
    assert loaded.detector_config == TINY_DET
    assert loaded.tto == TTO and loaded.tto_scope == "full"
    assert loaded.body_model_id == "test-body"
    assert loaded.model_version == "random-init"
    for name in ("f_w", "f_u", "detector"):
        before, after = getattr(ckpt, name), getattr(loaded, name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    x, info = torch.randn(1, 3, 256, 192), torch.randn(1, 3)
    with torch.no_grad():
        a, b = ckpt.build_f_w()(x, info), loaded.build_f_w()(x, info)
    assert torch.equal(a.crop_cam, b.crop_cam)
    assert not loaded.build_f_w().training


def test_file_is_plain_data_loadable_with_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(tiny_checkpoint(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "metahmr-checkpoint"
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["tto_scope"] == "full"
    assert payload["configs"]["regressor"]["backbone"] == {
        "name": "resnet18", "width": 0.25, "input_noise": 0.0, "blocks": 0
    }
    assert set(payload["state_dicts"]) == {"f_w", "f_u", "detector"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_random_checkpoints_are_reproducible_and_f_u_differs() -> None:
    a, b = tiny_checkpoint(seed=0), tiny_checkpoint(seed=0)
    key = "head.fc1_feat.weight"
    assert torch.equal(a.f_w[key], b.f_w[key])
    assert not torch.equal(a.f_w[key], a.f_u[key])
    assert tiny_checkpoint(with_aux=False, with_detector=False).build_f_u() is None


def test_checkpoint_from_models_needs_one_regressor_config() -> None:
    other = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=32)
    with pytest.raises(ValueError, match="share one RegressorConfig"):
        checkpoint_from_models(build_regressor(TINY), TTO, "b", f_u=build_regressor(other))


def test_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_foreign_and_newer_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a metahmr checkpoint"):
        load_checkpoint(other)
    newer = tmp_path / "newer.pt"
    payload = to_payload(tiny_checkpoint())
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, newer)
    with pytest.raises(ValueError, match="format_version"):
        load_checkpoint(newer)


def test_unknown_config_keys_fail_loudly(tmp_path: Path) -> None:
    payload = to_payload(tiny_checkpoint())
    payload["configs"]["tto"]["mystery"] = 1
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="mystery"):
        load_checkpoint(path)


def test_half_precision_checkpoint_is_smaller_and_loads_into_float32(tmp_path) -> None:
    import torch

    from model.checkpoint import half_precision, load_checkpoint, random_checkpoint, save_checkpoint
    from model.config import BackboneConfig, RegressorConfig

    config = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
    full = random_checkpoint(config, body_model_id="test:0")
    a = save_checkpoint(full, tmp_path / "full.pt")
    b = save_checkpoint(half_precision(full), tmp_path / "half.pt")
    assert b.stat().st_size < 0.6 * a.stat().st_size
    half = load_checkpoint(b)
    assert half.f_w["head.fc2.weight"].dtype == torch.float16
    bn = [k for k in half.f_w if k.endswith("running_var")]
    assert bn and all(half.f_w[k].dtype == torch.float32 for k in bn)
    nets = full.build_f_w(), half.build_f_w()
    assert all(p.dtype == torch.float32 for p in nets[1].parameters())
    x, info = torch.randn(2, 3, 256, 192), torch.randn(2, 3) * 0.3
    with torch.no_grad():
        out = [n.eval()(x, info) for n in nets]
    torch.testing.assert_close(out[1].crop_cam, out[0].crop_cam, atol=2e-3, rtol=2e-3)
    assert half.extra["weights_dtype"] == "float16"


def test_pack_command_takes_the_detector_of_another_checkpoint(tmp_path) -> None:
    import torch

    from cli import main
    from model.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
    from model.config import BackboneConfig, RegressorConfig

    config = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
    model = save_checkpoint(random_checkpoint(config, body_model_id="b:1", with_detector=False),
                            tmp_path / "model.pt")
    donor_ckpt = random_checkpoint(config, body_model_id="b:1", seed=5)
    donor = save_checkpoint(donor_ckpt, tmp_path / "donor.pt")
    out = tmp_path / "shipped.pt"
    assert main(["pack", "--model", str(model), "--detector-from", str(donor), "--half",
                 "--version", "v9", "--out", str(out)]) == 0
    packed = load_checkpoint(out)
    assert packed.model_version == "v9" and packed.detector_config == donor_ckpt.detector_config
    name = next(k for k, v in donor_ckpt.detector.items() if v.is_floating_point() and "weight" in k)
    torch.testing.assert_close(packed.detector[name].float(), donor_ckpt.detector[name], atol=1e-2, rtol=1e-3)
    assert main(["pack", "--model", str(model), "--detector-from", str(model), "--out", str(out)]) == 2
