"""Specification of model/keypoint_detector.py: heatmap network, decoders, SimCC ONNX loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from model.config import BackboneConfig, DetectorConfig
from model.crop import apply_affine, crop_affine
from model.keypoint_detector import (
    COCO17_FLIP_PERM,
    SimCCOnnxDetector,
    build_detector,
    crop_to_image,
    decode_heatmaps,
    decode_simcc,
    detect,
    flip_average,
    gaussian_heatmaps,
)

torch.set_num_threads(1)

TINY_DET = DetectorConfig(BackboneConfig("resnet18", 0.25), deconv_channels=(32, 32, 32))


def test_heatmaps_are_a_quarter_of_the_crop() -> None:
    net = build_detector(TINY_DET, seed=0).eval()
    with torch.no_grad():
        heat = net(torch.randn(2, 3, 256, 192))
    assert heat.shape == (2, 17, 64, 48)
    assert net.stride == 4


def test_decoding_recovers_gaussian_peaks_within_a_quarter_cell() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate(
        [rng.uniform([8, 8], [184, 248], size=(17, 2)), np.ones((17, 1))], axis=1
    )
    maps = gaussian_heatmaps(points, (64, 48), stride=4)
    decoded = decode_heatmaps(maps[None], stride=4)[0]
    err = np.abs(decoded[:, :2] - points[:, :2])
    assert err.max() <= 0.25 * 4 + 1e-4
    assert err.mean() < 0.6  # the quarter shift beats plain arg-max (mean 1 px) on average
    np.testing.assert_allclose(decoded[:, 2], maps.reshape(17, -1).max(-1), rtol=1e-6)


def test_decoding_is_exact_at_cell_centres() -> None:
    points = np.array([[(10 + 0.5) * 4, (20 + 0.5) * 4, 1.0]] * 17)
    decoded = decode_heatmaps(gaussian_heatmaps(points, (64, 48), 4)[None], 4)[0]
    np.testing.assert_allclose(decoded[:, :2], points[:, :2], atol=1e-5)


def test_zero_confidence_keypoints_get_empty_target_maps() -> None:
    points = np.array([[50.0, 60.0, 0.0], [50.0, 60.0, 1.0]])
    maps = gaussian_heatmaps(points, (64, 48), 4)
    assert maps[0].max() == 0 and maps[1].max() > 0.9


def test_flip_average_of_mirrored_targets_gives_back_the_same_keypoints() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(20, 170, size=(17, 2)), np.ones((17, 1))], axis=1)
    mirrored = points[list(COCO17_FLIP_PERM)].copy()
    mirrored[:, 0] = 192 - mirrored[:, 0]
    maps = gaussian_heatmaps(points, (64, 48), 4)[None]
    maps_of_mirror = gaussian_heatmaps(mirrored, (64, 48), 4)[None]
    merged = flip_average(maps, maps_of_mirror, COCO17_FLIP_PERM)
    np.testing.assert_allclose(merged, maps, atol=1e-6)


def test_flip_averaged_detection_is_mirror_equivariant() -> None:
    net = build_detector(TINY_DET, seed=0).eval()
    with torch.no_grad():  # larger outputs than the tiny initial ones, for distinct peaks
        net.final.weight.mul_(1000)
    crops = np.random.default_rng(2).integers(0, 255, size=(2, 256, 192, 3), dtype=np.uint8)
    kp = detect(net, crops)
    kp_mirror = detect(net, np.ascontiguousarray(crops[:, :, ::-1]))
    expected = kp[:, list(COCO17_FLIP_PERM)].copy()
    expected[..., 0] = 192 - expected[..., 0]
    assert kp.shape == (2, 17, 3)
    np.testing.assert_allclose(kp_mirror, expected, atol=1e-3)


def test_crop_to_image_inverts_the_crop_affine() -> None:
    affines = np.stack(
        [crop_affine([300.0, 200.0], 250.0), crop_affine([50.0, 80.0], 90.0, rotation_deg=20)]
    )
    full = np.random.default_rng(3).uniform(0, 400, size=(2, 5, 2))
    in_crop = np.stack([apply_affine(full[i], affines[i]) for i in range(2)])
    conf = np.full((2, 5, 1), 0.7)
    back = crop_to_image(np.concatenate([in_crop, conf], -1), affines)
    np.testing.assert_allclose(back[..., :2], full, atol=1e-3)
    np.testing.assert_allclose(back[..., 2], 0.7, rtol=1e-6)


def test_decode_simcc_takes_argmax_over_split_bins_and_min_confidence() -> None:
    sx, sy = np.zeros((1, 2, 384), np.float32), np.zeros((1, 2, 512), np.float32)
    sx[0, 0, 101], sy[0, 0, 300] = 0.9, 0.6
    sx[0, 1, 7], sy[0, 1, 9] = -0.2, -0.1
    kp = decode_simcc(sx, sy, split_ratio=2.0)
    np.testing.assert_allclose(kp[0, 0], [50.5, 150.0, 0.6], rtol=1e-6)
    assert kp[0, 1, 2] == 0.0
    with pytest.raises(ValueError, match="must agree"):
        decode_simcc(sx, sy[:, :1])


def _simcc_model(path: Path, peaks: np.ndarray) -> None:
    """A tiny ONNX model with RTMPose's signature whose SimCC peaks are `peaks` (K, 2) crop px.

    The outputs are constants plus 0 * mean(input), so the graph consumes its input.
    """
    k = len(peaks)
    sx = np.full((1, k, 384), 0.01, np.float32)
    sy = np.full((1, k, 512), 0.01, np.float32)
    for i, (x, y) in enumerate(peaks):
        sx[0, i, int(round(x * 2))] = 0.8
        sy[0, i, int(round(y * 2))] = 0.5 + 0.01 * i
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["cx", "z"], ["simcc_x"]),
        helper.make_node("Add", ["cy", "z"], ["simcc_y"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(sx, "cx"),
        numpy_helper.from_array(sy, "cy"),
    ]
    graph = helper.make_graph(
        nodes,
        "rtmpose_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 256, 192])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, k, 384]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, k, 512]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_simcc_onnx_loader_recovers_known_peaks(tmp_path: Path) -> None:
    peaks = np.random.default_rng(4).integers(1, 180, size=(17, 2)) + 0.5
    _simcc_model(tmp_path / "rtm.onnx", peaks)
    det = SimCCOnnxDetector(tmp_path / "rtm.onnx", threads=1)
    crops = np.random.default_rng(5).integers(0, 255, size=(2, 256, 192, 3), dtype=np.uint8)
    kp = det.predict(crops)
    assert kp.shape == (2, 17, 3)
    np.testing.assert_allclose(kp[0, :, :2], peaks, atol=1e-6)
    np.testing.assert_allclose(kp[1], kp[0])
    np.testing.assert_allclose(kp[0, :, 2], 0.5 + 0.01 * np.arange(17), rtol=1e-6)
    with pytest.raises(ValueError, match="crops must be"):
        det.predict(crops[:, :128])


def test_missing_onnx_model_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metahmr export"):
        SimCCOnnxDetector(tmp_path / "none.onnx")
