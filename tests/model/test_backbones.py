"""Specification of model/backbones.py: in-house ResNets, the factory, input normalisation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from model.backbones import (
    BACKBONE_NAMES,
    build_backbone,
    count_parameters,
    feature_shape,
    normalize_crops,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "channels"), [("resnet18", 128), ("resnet34", 128), ("resnet50", 512)]
)
def test_quarter_width_resnets_give_stride_32_features(name: str, channels: int) -> None:
    net = build_backbone(name, width=0.25).eval()
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        fmap = net.forward_features(x)
        pooled = net(x)
    assert fmap.shape == (2, channels, 8, 6)
    assert pooled.shape == (2, channels)
    assert torch.allclose(pooled, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert feature_shape(net, (256, 192)) == (channels, 8, 6)


@pytest.mark.parametrize(
    # torchvision's resnet18/50 parameter counts minus their 1000-way classifier.
    ("name", "expected"),
    [("resnet18", 11_689_512 - 513_000), ("resnet50", 25_557_032 - 2_049_000)],
)
def test_standard_width_matches_the_published_architectures(name: str, expected: int) -> None:
    assert count_parameters(build_backbone(name)) == expected


def test_width_multiplier_scales_channels_and_keeps_multiples_of_8() -> None:
    narrow = build_backbone("resnet18", width=0.3)
    widths = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)
    assert narrow.out_channels == 152  # round(512 * 0.3 / 8) * 8


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50") as err:
        build_backbone("resnet101")
    assert "timm:" in str(err.value)
    assert "resnet50" in BACKBONE_NAMES


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan")])
def test_width_must_be_positive(width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        build_backbone("resnet18", width=width)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_backbone_without_timm_says_how_to_install() -> None:
    with pytest.raises(ValueError, match="pip install timm"):
        build_backbone("timm:hrnet_w48")


def test_backbone_gradients_are_finite() -> None:
    net = build_backbone("resnet18", width=0.25)
    net(torch.randn(2, 3, 64, 48)).square().sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_normalize_crops_is_imagenet_normalised_nchw() -> None:
    crops = np.zeros((2, 4, 3, 3), np.uint8)
    crops[..., 0] = 255
    x = normalize_crops(crops)
    assert x.shape == (2, 3, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0, 0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1, 0, 0], (0 - 0.456) / 0.224, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        normalize_crops(np.zeros((4, 3, 3), np.uint8))


def test_residual_landmark_encoder_keeps_its_width_and_blocks() -> None:
    from model.blazepose import FEATURE_DIM

    enc = build_backbone("blazepose-full", 1.0, 0.0, blocks=2).eval()
    assert enc.out_channels == 512
    assert len(enc.blocks) == 2
    out = enc(torch.randn(5, FEATURE_DIM))
    assert out.shape == (5, 512)
    assert bool((out >= 0).all())  # each block ends in a ReLU
    with pytest.raises(ValueError, match="blocks"):
        build_backbone("blazepose-full", 1.0, 0.0, blocks=-1)


def test_two_layer_encoder_state_dicts_still_load() -> None:
    """The first BlazePose models (blocks = 0) saved `net.0` and `net.2` only."""
    old = build_backbone("blazepose-full", 0.5)
    assert sorted(old.state_dict()) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    build_backbone("blazepose-full", 0.5).load_state_dict(old.state_dict())


def test_residual_encoder_exports_to_onnx_like_pytorch(tmp_path) -> None:
    from model.checkpoint import checkpoint_from_models
    from model.config import BackboneConfig, RegressorConfig, TTOConfig
    from model.export import check_parity, export_checkpoint
    from model.regressor import build_regressor

    cfg = RegressorConfig(BackboneConfig("blazepose-full", 0.25, blocks=2), hidden=64, dropout=0.0)
    nets = [build_regressor(cfg, seed=s).eval() for s in (0, 1)]
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ckpt = checkpoint_from_models(nets[0], TTOConfig(scope="head"), "test-body", f_u=nets[1])
    export_checkpoint(ckpt, tmp_path)
    errors = check_parity(ckpt, tmp_path, batch=3)
    assert set(errors) >= {"f_w_backbone", "f_w_head"}
    assert max(errors.values()) < 1e-4, errors
