"""Specification of model/crop.py: boxes, the crop affine, and the crop itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.crop import (
    CROP_HW,
    apply_affine,
    box_from_xyxy,
    crop_affine,
    crop_image,
    invert_affine,
)


def test_box_from_xyxy_fits_tall_and_wide_detections():
    # Tall: the height decides. Wide: the width, stretched to the crop's 4:3 height.
    center, size = box_from_xyxy([[100, 50, 150, 250], [0, 0, 300, 100]], rescale=1.2)
    np.testing.assert_allclose(center, [[125, 150], [150, 50]])
    np.testing.assert_allclose(size, [200 * 1.2, 300 * 256 / 192 * 1.2])
    # The detection, times the rescale margin, fits inside the crop window.
    for (x0, y0, x1, y1), b in zip([[100, 50, 150, 250], [0, 0, 300, 100]], size, strict=True):
        assert (x1 - x0) * 1.2 <= b * 192 / 256 + 1e-9
        assert (y1 - y0) * 1.2 <= b + 1e-9


def test_box_from_xyxy_single_and_torch():
    center, size = box_from_xyxy(np.array([10.0, 20.0, 50.0, 100.0]), rescale=1.0)
    assert center.shape == (2,) and np.ndim(size) == 0
    np.testing.assert_allclose(size, 80.0)
    tc, ts = box_from_xyxy(torch.tensor([[10.0, 20.0, 50.0, 100.0]]), rescale=1.0)
    assert isinstance(tc, torch.Tensor) and tc.shape == (1, 2) and ts.shape == (1,)
    torch.testing.assert_close(ts, torch.tensor([80.0]))


def test_box_from_xyxy_rejects_empty_boxes():
    with pytest.raises(ValueError, match="x1 > x0"):
        box_from_xyxy([10, 10, 5, 20])
    with pytest.raises(ValueError, match=r"\(4,\) or \(B, 4\)"):
        box_from_xyxy([1, 2, 3])


def test_crop_affine_maps_box_corners_to_crop_corners():
    center, size = np.array([300.0, 200.0]), 160.0
    affine = crop_affine(center, size)
    half_w, half_h = size * 192 / 256 / 2, size / 2
    corners = np.array(
        [
            [center[0] - half_w, center[1] - half_h],
            [center[0] + half_w, center[1] - half_h],
            [center[0] + half_w, center[1] + half_h],
            [center[0] - half_w, center[1] + half_h],
            center,
        ]
    )
    expected = [[0, 0], [192, 0], [192, 256], [0, 256], [96, 128]]
    np.testing.assert_allclose(apply_affine(corners, affine), expected, atol=1e-9)


def test_crop_affine_rotation_turns_content_counter_clockwise():
    center, size = np.array([300.0, 200.0]), 256.0  # 1 px = 1 crop px
    affine = crop_affine(center, size, rotation_deg=90.0)
    # A point right of the centre ends up above it (y points down in images).
    moved = apply_affine(np.array([[310.0, 200.0], [300.0, 200.0]]), affine)
    np.testing.assert_allclose(moved, [[96, 118], [96, 128]], atol=1e-9)


def test_apply_affine_numpy_torch_batched_and_inverse():
    affine = crop_affine([120.0, 80.0], 200.0, rotation_deg=17.0)
    pts = np.random.default_rng(0).uniform(0, 300, size=(4, 7, 2))
    out = apply_affine(pts, affine)
    assert out.shape == (4, 7, 2)
    np.testing.assert_allclose(apply_affine(out, invert_affine(affine)), pts, atol=1e-9)
    tout = apply_affine(torch.from_numpy(pts), affine)
    assert isinstance(tout, torch.Tensor) and tout.dtype == torch.float64
    np.testing.assert_allclose(tout.numpy(), out)
    batched = np.stack([affine, crop_affine([0.0, 0.0], 100.0), affine, affine])
    bout = apply_affine(torch.from_numpy(pts), torch.from_numpy(batched))
    np.testing.assert_allclose(bout[0].numpy(), out[0])
    np.testing.assert_allclose(bout[1].numpy(), apply_affine(pts[1], batched[1]))


SLOPE = 4  # grey levels per pixel: half a pixel off is 2 levels, beyond the tolerance


def ramp_image(height: int = 100, width: int = 120) -> np.ndarray:
    """R = SLOPE * column, G = SLOPE * row (clipped): linear, so bilinear is exact."""
    rows, cols = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.clip(SLOPE * cols, 0, 255)
    img[..., 1] = np.clip(SLOPE * rows, 0, 255)
    return img


def expected_ramp(affine: np.ndarray, out_hw=CROP_HW) -> tuple[np.ndarray, np.ndarray]:
    """Ramp values at each crop pixel centre's source point (pixel centres at +0.5)."""
    rows, cols = np.mgrid[0 : out_hw[0], 0 : out_hw[1]]
    src = apply_affine(np.stack([cols + 0.5, rows + 0.5], -1), invert_affine(affine))
    return SLOPE * (src[..., 0] - 0.5), SLOPE * (src[..., 1] - 0.5)


@pytest.mark.parametrize(
    "center,size,rotation",
    [((30.0, 32.0), 50.0, 0.0), ((31.3, 30.7), 45.0, 0.0), ((32.0, 32.0), 40.0, 30.0)],
)
def test_crop_image_samples_the_right_pixels(center, size, rotation):
    img = ramp_image()
    crop, affine = crop_image(img, np.array(center), size, rotation_deg=rotation)
    assert crop.shape == (256, 192, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(affine, crop_affine(center, size, rotation_deg=rotation))
    red, green = expected_ramp(affine)
    inside = (red > 4) & (red < 250) & (green > 4) & (green < 250)
    assert inside.mean() > 0.7
    # Within 1 grey level (PIL truncates); half a pixel off would be a full level more.
    assert np.abs(crop[..., 0][inside] - red[inside]).max() <= 1.0
    assert np.abs(crop[..., 1][inside] - green[inside]).max() <= 1.0


@pytest.mark.parametrize("size,rotation", [(150.0, 0.0), (700.0, 0.0), (1100.0, 25.0)])
def test_crop_image_keeps_a_marker_where_the_affine_puts_it(size, rotation):
    """Also for boxes big enough to be box-filtered down first (700 and 1100 px)."""
    img = np.zeros((1200, 1400, 3), np.uint8)
    center = np.array([700.0 + size / 20, 600.0 - size / 30])
    # A square marker up-left of the centre, well inside the crop.
    x0, y0, side = int(center[0] - size / 5), int(center[1] - size / 8), int(size // 25)
    img[y0 : y0 + side, x0 : x0 + side] = 255
    crop, affine = crop_image(img, center, size, rotation_deg=rotation)
    weight = crop[..., 0].astype(float)
    rows, cols = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    centroid = np.array([(weight * (cols + 0.5)).sum(), (weight * (rows + 0.5)).sum()])
    centroid /= weight.sum()
    expected = apply_affine(np.array([x0 + side / 2, y0 + side / 2]), affine)
    assert np.abs(centroid - expected).max() < 0.25
    # The marker's brightness is preserved on average (area in crop px x 255).
    scale = 256 / size
    assert weight.sum() == pytest.approx((side * scale) ** 2 * 255, rel=0.12)


def test_crop_image_is_black_outside_the_image_and_finds_a_marker():
    img = np.full((200, 300, 3), 80, np.uint8)
    img[100:104, 40:44] = (255, 0, 0)  # a 4x4 marker centred at (42, 102)
    crop, affine = crop_image(img, np.array([20.0, 100.0]), 128.0)  # 2 crop px per px
    marker = apply_affine(np.array([42.0, 102.0]), affine)
    u, v = int(marker[0]), int(marker[1])
    assert tuple(crop[v, u]) == (255, 0, 0)
    assert (crop[:, :40] == 0).all()  # left of x = 0 in the source
    assert (crop[:, 60:70] == 80).all()


def test_crop_image_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        crop_image(np.zeros((10, 10, 3), np.float32), (5, 5), 10.0)
