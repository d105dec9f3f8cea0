"""Specification of model/regressor.py and the typed outputs it produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import BackboneConfig, RegressorConfig
from model.crop import crop_affine
from model.geometry import cam_crop2full
from model.outputs import CropInfo, RegressorOutput, SMPLParams
from model.regressor import MEAN_CROP_CAM, Regressor, build_regressor, mean_rotations

torch.set_num_threads(1)

TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)


def crops(batch: int = 3) -> CropInfo:
    center = torch.tensor([[320.0, 240.0], [100.0, 300.0], [500.0, 90.0]])[:batch]
    box = torch.tensor([300.0, 150.0, 80.0])[:batch]
    img_hw = torch.tensor([[480.0, 640.0]]).expand(batch, 2)
    return CropInfo.from_boxes(center, box, img_hw)


def assert_rotations(r: torch.Tensor) -> None:
    eye = torch.eye(3).expand_as(r)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2]), atol=1e-5)


def test_output_shapes_and_valid_rotations() -> None:
    net = build_regressor(TINY, seed=0).eval()
    crop = crops()
    out = net(torch.randn(3, 3, 256, 192), crop.bbox_info())
    assert isinstance(out, RegressorOutput)
    assert out.params.global_orient.shape == (3, 1, 3, 3)
    assert out.params.body_pose.shape == (3, 23, 3, 3)
    assert out.params.betas.shape == (3, 10)
    assert out.crop_cam.shape == (3, 3)
    assert_rotations(out.params.rotmats())
    assert out.translation(crop).shape == (3, 3)


def test_untrained_prediction_starts_near_the_mean_parameters() -> None:
    net = build_regressor(TINY, seed=0).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 256, 192), torch.zeros(2, 3))
    mean = mean_rotations()
    assert torch.allclose(out.params.rotmats(), mean.expand(2, -1, -1, -1), atol=0.05)
    assert torch.allclose(out.crop_cam, torch.tensor([MEAN_CROP_CAM]).expand(2, 3), atol=0.05)
    # The mean root turns the y-up body upright in the y-down camera, facing the camera.
    assert torch.equal(mean[0], torch.diag(torch.tensor([1.0, -1.0, -1.0])))


def test_head_alone_from_features_equals_the_full_forward() -> None:
    net = build_regressor(TINY, seed=1).eval()
    images, info = torch.randn(2, 3, 256, 192), torch.randn(2, 3)
    with torch.no_grad():
        full = net(images, info)
        feats = net.backbone(images)
        head = net.head(feats, info)
    assert feats.shape == (2, net.feature_dim)
    assert torch.equal(full.crop_cam, head.crop_cam)
    assert torch.equal(full.params.body_pose, head.params.body_pose)


def test_bbox_info_changes_the_prediction() -> None:
    net = build_regressor(TINY, seed=2).eval()
    feats = torch.randn(1, net.feature_dim)
    with torch.no_grad():
        a = net.head(feats, torch.zeros(1, 3))
        b = net.head(feats, torch.ones(1, 3))
    assert not torch.allclose(a.crop_cam, b.crop_cam)


def test_main_and_auxiliary_nets_are_one_class_with_their_own_weights() -> None:
    f_w, f_u = build_regressor(TINY, seed=0), build_regressor(TINY, seed=1)
    assert type(f_w) is type(f_u) is Regressor
    assert not torch.equal(f_w.head.fc1_feat.weight, f_u.head.fc1_feat.weight)
    again = build_regressor(TINY, seed=0)
    assert torch.equal(f_w.head.fc1_feat.weight, again.head.fc1_feat.weight)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    net = build_regressor(TINY, seed=0)
    feats, info = torch.randn(4, net.feature_dim) * 10, torch.randn(4, 3)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net.head(feats, info).crop_cam, net.head(feats, info).crop_cam)
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(net.head(feats, info).crop_cam, net.head(feats, info).crop_cam)


def test_output_layers_are_the_decoder() -> None:
    names = build_regressor(TINY).head.output_parameter_names()
    assert set(names) == {"dec.weight", "dec.bias"}


def test_three_decoder_state_dict_loads_into_the_fused_decoder_with_equal_outputs() -> None:
    """Checkpoints from before the fused decoder (decpose/decshape/deccam) load unchanged:
    the fused layer is their concatenation and predicts the same."""
    net = build_regressor(TINY, seed=3).eval()
    with torch.no_grad():
        net.head.dec.weight.normal_(0, 0.05)
        net.head.dec.bias.normal_(0, 0.05)
    state = net.state_dict()
    legacy = {k: v for k, v in state.items() if not k.startswith("head.dec.")}
    sizes = {"decpose": 144, "decshape": 10, "deccam": 3}
    start = 0
    for name, size in sizes.items():
        for part in ("weight", "bias"):
            legacy[f"head.{name}.{part}"] = state[f"head.dec.{part}"][start : start + size].clone()
        start += size
    other = build_regressor(TINY, seed=9).eval()
    other.load_state_dict(legacy)
    images, info = torch.randn(2, 3, 128, 96), torch.randn(2, 3)
    with torch.no_grad():
        a, b = net(images, info), other(images, info)
    assert torch.equal(a.crop_cam, b.crop_cam)
    assert torch.equal(a.params.body_pose, b.params.body_pose)
    assert torch.equal(a.params.betas, b.params.betas)


def test_regressor_gradients_are_finite() -> None:
    net = build_regressor(TINY, seed=0).train()
    out = net(torch.randn(2, 3, 64, 48), torch.randn(2, 3))
    (out.params.rotmats().square().sum() + out.crop_cam.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_output_select_and_cat_round_trip() -> None:
    net = build_regressor(TINY, seed=0).eval()
    with torch.no_grad():
        out = net.head(torch.randn(3, net.feature_dim), torch.randn(3, 3))
    parts = [out.select(i) for i in range(3)]
    assert parts[1].batch_size == 1
    joined = RegressorOutput.cat(parts)
    assert torch.equal(joined.params.body_pose, out.params.body_pose)
    assert torch.equal(joined.crop_cam, out.crop_cam)
    with pytest.raises(ValueError, match="at least one"):
        RegressorOutput.cat([])


def test_crop_info_from_boxes_matches_crop_module_and_cliff_camera() -> None:
    crop = crops()
    np.testing.assert_allclose(
        crop.affine[1].numpy(), crop_affine([100.0, 300.0], 150.0), rtol=1e-6
    )
    assert torch.allclose(crop.focal_length, torch.full((3,), 800.0))  # sqrt(640² + 480²)
    assert torch.equal(crop.camera_center(), torch.tensor([[320.0, 240.0]]).expand(3, 2))
    cam = torch.tensor([[0.9, 0.1, -0.2]]).expand(3, 3)
    rot = torch.eye(3).expand(3, 24, 3, 3)
    out = RegressorOutput(SMPLParams(rot[:, :1], rot[:, 1:], torch.zeros(3, 10)), cam)
    expected = cam_crop2full(cam, crop.center, crop.box_size, crop.img_hw, crop.focal_length)
    assert torch.equal(out.translation(crop), expected)
    assert crop.select(2).batch_size == 1
    assert crop.bbox_info().shape == (3, 3)


@pytest.mark.parametrize(
    ("box", "message"),
    [(0.0, "degenerate box"), (-5.0, "degenerate box"), (float("nan"), "NaN/Inf")],
)
def test_crop_info_rejects_degenerate_boxes(box: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CropInfo.from_boxes(
            torch.tensor([[10.0, 10.0]]), torch.tensor([box]), torch.tensor([[100.0, 100.0]])
        )


def test_crop_info_validate_checks_shapes() -> None:
    crop = crops(2)
    bad = CropInfo(crop.center, crop.box_size, crop.img_hw, crop.focal_length[:1], crop.affine)
    with pytest.raises(ValueError, match="focal_length"):
        bad.validate()


def test_cached_feature_term_gives_the_same_prediction() -> None:
    net = build_regressor(TINY, seed=3).eval()
    feats, info = torch.randn(2, net.feature_dim), torch.randn(2, 3)
    with torch.no_grad():
        direct = net.head(feats, info)
        cached = net.head(feats, info, net.head.feature_term(feats, info))
    assert torch.equal(direct.crop_cam, cached.crop_cam)
    assert net.head.feature_term(feats, info).shape == (2, 64)


def test_compiled_one_row_linear_is_the_layer_with_its_weight_gradient() -> None:
    """model.regressor.linear: inside a compiled graph, one row goes through a broadcast
    product (the TTO's compiled steps); value and weight gradient equal the layer's."""
    from torch.func import functional_call, grad_and_value

    from model.regressor import linear

    torch.manual_seed(0)
    wrap = _OneLinear(torch.nn.Linear(40, 24))
    x = torch.randn(1, 40)
    params = {n: p.detach() for n, p in wrap.named_parameters()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(wrap, p, (x,)).square().sum()

    expected, value = grad_and_value(loss)(params)  # eager: the layer itself
    grads, got = torch.compile(grad_and_value(loss))(params)
    assert torch.allclose(got, value, rtol=1e-5)
    for name in params:
        assert torch.allclose(grads[name], expected[name], rtol=1e-5, atol=1e-6), name
    # The compiled graph holds a broadcast product for one row, the layer for more.
    assert "linear" not in _compiled_ops(wrap, x) and "mul" in _compiled_ops(wrap, x)
    assert "linear" in _compiled_ops(wrap, torch.randn(5, 40))
    # More rows (or eager): the layer itself, bit for bit.
    xs = torch.randn(5, 40)
    assert torch.equal(linear(wrap.layer, xs), wrap.layer(xs))


def _compiled_ops(module: torch.nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the functions in the graph torch.compile captures for module(x)."""
    names: set[str] = set()

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        names.update(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=backend)(x)
    return names


class _OneLinear(torch.nn.Module):
    def __init__(self, layer: torch.nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from model.regressor import linear

        return linear(self.layer, x)
