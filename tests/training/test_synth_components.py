"""Camera, background, occluder, degradation and visibility pieces of the synthetic engine."""

from __future__ import annotations

import numpy as np
import pytest

from training.synth import labels as L
from training.synth import textures
from training.synth.backgrounds import BackgroundConfig, sample_background
from training.synth.cameras import (
    CameraConfig,
    focal_from_fov,
    place_person,
    project,
    sample_camera,
)
from training.synth.degrade import DegradeConfig, degrade
from training.synth.occluders import OccluderConfig, draw_occluders
from training.synth.splits import split_config


def test_default_focal_is_a_53_degree_diagonal_lens() -> None:
    hw = (480, 640)
    fov = 2 * np.degrees(np.arctan(0.5))
    assert focal_from_fov(fov, hw) == pytest.approx(np.hypot(*hw))


def test_cameras_follow_the_split_ranges() -> None:
    rng = np.random.default_rng(0)
    cfg = CameraConfig()
    for _ in range(200):
        cam = sample_camera(rng, cfg)
        h, w = cam.image_hw
        assert max(h, w) == 640 and h % 2 == 0 and w % 2 == 0
        fov = 2 * np.degrees(np.arctan(np.hypot(h, w) / 2 / cam.focal))
        assert 40 - 1e-6 <= fov <= 70 + 1e-6
        np.testing.assert_allclose(cam.view @ cam.view.T, np.eye(3), atol=1e-12)
        # The body's up axis (y) points up in the image (camera -y) within pitch+roll bounds.
        up = cam.view @ np.array([0.0, 1.0, 0.0])
        assert -up[1] > np.cos(np.radians(30 + 8)) - 1e-9


def test_place_person_keeps_untruncated_bodies_inside_the_frame() -> None:
    rng = np.random.default_rng(1)
    cfg = CameraConfig(truncation_prob=0.0)
    body = np.array([[0.0, -0.9, 0.0], [0.0, 0.8, 0.0], [0.3, 0.4, 0.1], [-0.3, 0.4, -0.1]])
    for _ in range(200):
        cam = sample_camera(rng, cfg)
        pts = body @ cam.view.T
        t = place_person(rng, pts, cam, cfg)
        px = project(pts + t, cam.focal, cam.center)
        h, w = cam.image_hw
        assert 2.0 - 0.3 <= (pts + t)[:, 2].mean() <= 12.0 + 0.3
        assert np.all(px[:, 0] > -0.1 * w) and np.all(px[:, 0] < 1.1 * w)
        assert np.all(px[:, 1] > -0.1 * h) and np.all(px[:, 1] < 1.1 * h)


def test_shifted_split_uses_unseen_backgrounds_and_wider_ranges() -> None:
    train, shifted = split_config("train"), split_config("shifted")
    assert not set(train.background.photos) & set(shifted.background.photos)
    assert not set(train.background.procedural) & set(shifted.background.procedural)
    assert not set(train.occluders.styles) & set(shifted.occluders.styles)
    assert shifted.camera.fov_deg == (20.0, 100.0) and shifted.camera.pitch_deg == (-60.0, 60.0)
    train_families = {f.name for f in train.pose_families}
    assert "acrobatic" in {f.name for f in shifted.pose_families} - train_families
    with pytest.raises(ValueError, match="valid"):
        split_config("validation")


def test_no_background_photo_shows_a_person() -> None:
    people = {"astronaut.png", "camera.png"}
    assert not people & set(textures.TRAIN_PHOTOS + textures.SHIFTED_PHOTOS)
    for name in textures.TRAIN_PHOTOS + textures.SHIFTED_PHOTOS:
        assert textures.load_photo(name).ndim == 3


@pytest.mark.parametrize("split", ["train", "shifted"])
def test_backgrounds_are_deterministic_images(split: str) -> None:
    cfg = split_config(split).background
    for seed in range(12):
        a = sample_background(np.random.default_rng(seed), (240, 320), cfg)
        b = sample_background(np.random.default_rng(seed), (240, 320), cfg)
        assert a.shape == (240, 320, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="valid"):
        BackgroundConfig(procedural=("plasma",))


def test_occluders_overlap_the_person_box() -> None:
    rng = np.random.default_rng(0)
    box = np.array([100.0, 50.0, 180.0, 230.0])
    for styles in (("box", "ellipse", "polygon"), ("bars", "photo_blob")):
        cfg = OccluderConfig(styles=styles, prob=1.0, photos=textures.SHIFTED_PHOTOS)
        for _ in range(10):
            image = np.zeros((240, 320, 3), np.uint8)
            mask = draw_occluders(rng, image, box, cfg)
            assert mask[50:230, 100:180].any()
            assert np.all(image[~mask] == 0)


def test_degrade_keeps_size_and_draws_jpeg_quality_in_range() -> None:
    image = np.full((60, 80, 3), 128, np.uint8)
    cfg = DegradeConfig(blur_prob=1.0, motion_prob=1.0, noise_prob=1.0)
    out, quality = degrade(np.random.default_rng(0), image, cfg)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 60 <= quality <= 95 and out.std() > 0


def test_visibility_separates_visible_self_occluded_occluded_and_outside() -> None:
    focal, center = 500.0, np.array([50.0, 50.0])
    # A 'limb' surface at z = 2.0 around keypoint A; a second surface at z = 1.5 in front
    # of keypoint B (whose own surface is at z = 2.0).
    grid = np.stack(np.meshgrid(np.linspace(-0.05, 0.05, 11), np.linspace(-0.05, 0.05, 11)), -1).reshape(-1, 2)
    own_a = np.column_stack([grid + [-0.04, 0.0], np.full(len(grid), 2.0)])
    own_b = np.column_stack([grid + [0.04, 0.0], np.full(len(grid), 2.0)])
    vertices = np.concatenate([own_a, own_b])
    points = np.array([[-0.04, 0.0, 2.05], [0.04, 0.0, 2.05], [-0.04, 0.02, 2.05], [5.0, 0.0, 2.0]])
    pixels = project(points, focal, center)
    depth = np.full((100, 100), 2.0, np.float32)
    pb = pixels[1].astype(int)
    depth[pb[1] - 2:pb[1] + 3, pb[0] - 2:pb[0] + 3] = 1.5  # something in front of B
    occ = np.zeros((100, 100), bool)
    pc = pixels[2].astype(int)
    occ[pc[1], pc[0]] = True
    codes = L.visibility_codes(points, pixels, vertices, project(vertices, focal, center), depth, occ, focal)
    assert codes.tolist() == [L.VISIBLE, L.SELF_OCCLUDED, L.OCCLUDED, L.OUTSIDE]
    kp = L.with_confidence(pixels, codes)
    assert kp[:, 2].tolist() == pytest.approx([1.0, 0.5, 0.3, 0.0])


def test_box_from_mask() -> None:
    mask = np.zeros((10, 20), bool)
    assert L.box_from_mask(mask) is None
    mask[2:5, 3:9] = True
    assert L.box_from_mask(mask).tolist() == [3, 2, 9, 5]
