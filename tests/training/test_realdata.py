"""Specification of training/realdata.py: the real-photo set and how predictions are scored.

The loading tests read the shared real-photo folder and skip when it is absent; the metric and
scoring tests use synthetic people and run anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.keypoints import get_format
from training.realdata import (
    LIMB_JOINTS,
    LIMB_SOURCE_NAMES,
    REALDATA_ENV,
    PersonPrediction,
    Pinhole,
    RealImage,
    RealPerson,
    RealSet,
    find_realdata,
    load_realdata,
    read_image,
)
from training.realdata_scores import (
    RealScores,
    limb_error,
    markdown_section,
    match_people,
    pa_mpjpe,
    score,
)

# Where each format stores the limb joints, by position, in LIMB_JOINTS order, written from the
# orders in the set's README and mmpose's dataset definitions (not from joint names), so the
# name-based mapping is checked against an independent source.
EXPECTED_INDICES = {
    # AIC: R shoulder, elbow, wrist, L shoulder, elbow, wrist, R hip, knee, ankle, L hip, ...
    "aic_14": (3, 0, 4, 1, 5, 2, 9, 6, 10, 7, 11, 8),
    # J-HMDB: neck, belly, head, R/L shoulder, R/L hip, R/L elbow, R/L knee, R/L wrist, R/L ankle
    "jhmdb_15": (4, 3, 8, 7, 12, 11, 6, 5, 10, 9, 14, 13),
    # MPII: R ankle, knee, hip, L hip, knee, ankle, pelvis, thorax, neck, head, R wrist, elbow,
    # shoulder, L shoulder, elbow, wrist
    "mpii_16": (13, 12, 14, 11, 15, 10, 3, 2, 4, 1, 5, 0),
    # PoseTrack18: COCO order with head_bottom / head_top in place of the eyes
    "posetrack18_17": (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
    # LSP: R ankle, knee, hip, L hip, knee, ankle, R wrist, elbow, shoulder, L shoulder, elbow, wrist
    "lsp_14": (9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0),
    # H36M (mmpose): root, R hip, knee, foot, L hip, knee, foot, spine, thorax, neck, head,
    # L shoulder, elbow, wrist, R shoulder, elbow, wrist
    "h36m_17": (11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3),
}


def _joint(name: str) -> int:
    return LIMB_JOINTS.index(name)


@pytest.fixture(scope="module")
def realdata_root() -> Path:
    root = find_realdata()
    if root is None:
        pytest.skip(f"real-photo folder not found (set {REALDATA_ENV}); real-photo tests skipped")
    return root


@pytest.fixture(scope="module")
def annotations(realdata_root: Path) -> dict:
    return json.loads((realdata_root / "annotations.json").read_text())


@pytest.fixture(scope="module")
def realset(realdata_root: Path) -> RealSet:
    return load_realdata(realdata_root)


# --- the joint set ---------------------------------------------------------------------------


def test_limb_joints_are_the_twelve_coco_limb_joints_in_coco_order() -> None:
    coco = get_format("coco17").names
    assert len(LIMB_JOINTS) == 12
    assert list(LIMB_JOINTS) == [n for n in coco if n in LIMB_JOINTS]
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
        assert f"left_{part}" in LIMB_JOINTS and f"right_{part}" in LIMB_JOINTS


def test_every_format_of_the_set_has_a_limb_mapping_with_the_documented_positions(
    annotations: dict,
) -> None:
    formats = annotations["keypoint_formats"]
    assert set(formats) == set(LIMB_SOURCE_NAMES)
    for name, joints in formats.items():
        by_position = tuple(joints.index(n) for n in LIMB_SOURCE_NAMES[name])
        assert by_position == EXPECTED_INDICES[name], name


# --- loading ---------------------------------------------------------------------------------


def test_load_realdata_reads_all_25_images_and_every_annotated_person(
    realset: RealSet, annotations: dict
) -> None:
    assert len(realset.images) == 25
    expected_people = sum(len(im["people"]) for im in annotations["images"])
    assert expected_people > 0
    assert realset.num_people == expected_people
    kinds = [im.kind for im in realset.images]
    assert kinds.count("unannotated") == sum(
        im["kind"] == "unannotated" for im in annotations["images"]
    )
    for image in realset.images:
        assert image.path.is_absolute() and image.path.is_file()
        if image.kind == "unannotated":
            assert image.people == ()
        if image.kind == "3d_gt":
            assert all(p.limb3d is not None and p.camera is not None for p in image.people)
        else:
            assert all(p.limb3d is None and p.camera is None for p in image.people)


def test_labelled_limb_points_lie_inside_their_image(realset: RealSet) -> None:
    for image in realset.images:
        for person in image.people:
            assert person.limb2d.shape == (12, 3)
            assert set(np.unique(person.limb2d[:, 2])) <= {0.0, 1.0}
            xy = person.limb2d[person.labelled, :2]
            assert (xy >= -1).all(), image.path.name
            assert (xy[:, 0] <= image.width).all() and (xy[:, 1] <= image.height).all()
            assert person.box_height > 0


def test_limb2d_takes_the_documented_rows_of_each_source_and_maps_flags_to_labelled(
    realset: RealSet, annotations: dict
) -> None:
    for image, entry in zip(realset.images, annotations["images"], strict=True):
        for person, src in zip(image.people, entry["people"], strict=True):
            fmt = src["keypoints_2d"]["format"]
            assert person.source_format == fmt
            raw = np.asarray(src["keypoints_2d"]["array"])[list(EXPECTED_INDICES[fmt])]
            np.testing.assert_allclose(person.limb2d[:, :2], raw[:, :2])
            np.testing.assert_array_equal(person.labelled, raw[:, 2] > 0)
            x, y, w, h = src["bbox_xywh"]
            np.testing.assert_allclose(person.bbox_xyxy, [x, y, x + w, y + h])


def test_h36m_limb3d_projects_onto_limb2d_through_the_pinhole(realset: RealSet) -> None:
    frames = [im for im in realset.images if im.kind == "3d_gt"]
    assert frames
    for image in frames:
        (person,) = image.people
        fx, fy, cx, cy = person.camera
        x, y, z = person.limb3d.T
        projected = np.stack([fx * x / z + cx, fy * y / z + cy], -1)
        np.testing.assert_allclose(person.camera.project(person.limb3d), projected)
        err = np.linalg.norm(projected - person.limb2d[:, :2], axis=-1)
        assert person.labelled.all()
        assert err.max() < 5.0, image.path.name
        # The person's own left: in H36M's camera frame the left and right hips are apart.
        hips = person.limb3d[[_joint("left_hip"), _joint("right_hip")]]
        assert 0.15 < np.linalg.norm(hips[0] - hips[1]) < 0.45


def test_read_image_gives_rgb_uint8_of_the_annotated_size(realset: RealSet) -> None:
    png = next(im for im in realset.images if im.path.suffix == ".png")  # J-HMDB, palette mode
    pixels = read_image(png.path)
    assert pixels.shape == (png.height, png.width, 3) and pixels.dtype == np.uint8


def test_read_image_converts_grayscale_and_alpha(tmp_path: Path) -> None:
    Image.new("LA", (5, 4), (120, 30)).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    gray, alpha = read_image(tmp_path / "gray.png"), read_image(tmp_path / "alpha.png")
    assert gray.shape == alpha.shape == (4, 5, 3)
    assert (gray == 120).all()
    assert (alpha == [10, 20, 30]).all()


def test_load_realdata_of_a_missing_folder_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="skipped") as info:
        load_realdata(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_find_realdata_prefers_the_explicit_path_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for folder in (explicit, env):
        folder.mkdir()
        (folder / "annotations.json").write_text("{}")
    monkeypatch.setenv(REALDATA_ENV, str(env))
    assert find_realdata(explicit) == explicit.resolve()
    assert find_realdata() == env.resolve()
    assert find_realdata(tmp_path / "missing") is None
    monkeypatch.setenv(REALDATA_ENV, str(tmp_path / "missing"))
    assert find_realdata() is None


# --- metrics ---------------------------------------------------------------------------------


def _gt2d(seed: int = 0, unlabelled: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gt = np.concatenate([rng.uniform(0, 100, (12, 2)), np.ones((12, 1))], -1)
    gt[list(unlabelled)] = 0.0
    return gt


def test_limb_error_of_a_perfect_prediction_is_zero() -> None:
    gt = _gt2d()
    assert limb_error(gt[:, :2], gt, 100.0) == 0.0


def test_limb_error_of_a_10px_shift_in_a_100px_box_is_a_tenth() -> None:
    gt = _gt2d()
    assert limb_error(gt[:, :2] + [6.0, 8.0], gt, 100.0) == pytest.approx(0.1)


def test_limb_error_ignores_unlabelled_joints_and_is_none_without_labels() -> None:
    gt = _gt2d(unlabelled=(0, 5))
    pred = gt[:, :2].copy()
    pred[[0, 5]] += 1000.0
    pred[3] += [0.0, 20.0]  # one of 10 labelled joints off by 20 px: mean 2 px
    assert limb_error(pred, gt, 50.0) == pytest.approx(2.0 / 50.0)
    assert limb_error(pred, _gt2d(unlabelled=tuple(range(12))), 50.0) is None


def test_limb_error_rejects_mismatched_shapes_and_empty_boxes() -> None:
    gt = _gt2d()
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        limb_error(gt, gt, 100.0)
    with pytest.raises(ValueError, match="box_height"):
        limb_error(gt[:, :2], gt, 0.0)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def test_pa_mpjpe_is_zero_for_a_rotated_scaled_shifted_copy() -> None:
    gt = np.random.default_rng(1).normal(0, 0.3, (12, 3))
    pred = 1.3 * gt @ _rotation(np.array([0.2, 1.0, -0.4]), 0.9).T + [0.4, -1.0, 5.0]
    assert pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-6)


def test_pa_mpjpe_is_positive_for_a_perturbed_copy_and_in_millimetres() -> None:
    gt = np.random.default_rng(2).normal(0, 0.3, (12, 3))
    pred = gt + np.random.default_rng(3).normal(0, 0.02, (12, 3))
    err = pa_mpjpe(pred, gt)
    assert 1.0 < err < 40.0  # 2 cm noise per coordinate: tens of mm, not metres


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def _person(box: np.ndarray, n_labelled: int = 12) -> RealPerson:
    x0, y0, x1, y1 = box
    grid = np.linspace(0.1, 0.9, 12)
    limb = np.stack([x0 + grid * (x1 - x0), y0 + grid[::-1] * (y1 - y0), np.ones(12)], -1)
    limb[n_labelled:] = 0.0
    return RealPerson(bbox_xyxy=box, limb2d=limb)


def test_match_people_pairs_each_person_with_its_best_overlapping_box() -> None:
    people = [_person(_box(0, 0, 100, 200)), _person(_box(300, 0, 400, 200))]
    preds = [
        _box(310, 5, 405, 210),  # person 1
        _box(600, 0, 700, 200),  # an unlabelled bystander: matches nobody, costs nothing
        _box(2, 0, 98, 190),  # person 0
        _box(20, 30, 120, 230),  # a second, worse box on person 0: left unmatched
    ]
    assert match_people(preds, people) == [2, 0]


def test_match_people_needs_half_overlap_and_is_one_to_one() -> None:
    person = _person(_box(0, 0, 100, 100))
    assert match_people([_box(50, 0, 150, 100)], [person]) == [None]  # IoU 1/3
    assert match_people([_box(0, 0, 100, 80)], [person, person]) == [0, None]
    assert match_people([], [person]) == [None]
    # One box around a whole crowd holds every person's joints but matches none of them.
    crowd = [_person(_box(100 * i, 0, 100 * i + 80, 200)) for i in range(4)]
    assert match_people([_box(0, 0, 400, 200)], crowd) == [None] * 4


# --- scoring ---------------------------------------------------------------------------------


def _synthetic_set() -> RealSet:
    rng = np.random.default_rng(4)
    camera = Pinhole(1000.0, 1000.0, 250.0, 250.0)
    joints3d = rng.normal(0, 0.3, (12, 3)) + [0.0, 0.0, 5.0]
    projected = camera.project(joints3d)
    lo, hi = projected.min(0) - 20, projected.max(0) + 20
    h36m = RealPerson(
        bbox_xyxy=np.concatenate([lo, hi]),
        limb2d=np.concatenate([projected, np.ones((12, 1))], -1),
        limb3d=joints3d,
        camera=camera,
        source_format="h36m_17",
    )
    return RealSet(
        images=(
            RealImage(
                Path("/synthetic/a.jpg"),
                500,
                300,
                "2d_keypoints",
                (_person(_box(0, 0, 100, 200)), _person(_box(300, 0, 400, 200), n_labelled=6)),
            ),
            RealImage(Path("/synthetic/b.jpg"), 500, 500, "3d_gt", (h36m,)),
            RealImage(Path("/synthetic/c.jpg"), 500, 500, "unannotated"),
        )
    )


def _truth(person: RealPerson, shift: tuple[float, float] = (0.0, 0.0)) -> PersonPrediction:
    """A prediction equal to the labels, its 2D moved by `shift` pixels."""
    xy = person.limb2d[:, :2] + shift
    joints3d = None
    if person.limb3d is not None:  # any similarity of the truth is exact after PA alignment
        joints3d = 0.8 * person.limb3d @ _rotation(np.array([0.0, 1.0, 0.0]), 0.5).T + 1.0
    keypoints = np.concatenate([xy, np.ones((12, 1))], -1)
    return PersonPrediction(person.bbox_xyxy, keypoints, xy, joints3d)


def _predict_truth(image: RealImage, people: list[RealPerson], use_labels: bool) -> list:
    return [_truth(p) for p in people]


def _find_truth(image: RealImage) -> list[PersonPrediction]:
    if image.kind == "unannotated":
        return [_truth(_person(_box(0, 0, 50, 50))) for _ in range(3)]
    return [_truth(p) for p in image.people]


def test_score_of_the_ground_truth_is_zero_error_and_full_recall() -> None:
    scores = score(_synthetic_set(), _predict_truth, _find_truth)
    for source in (scores.labelled, scores.builtin):
        assert source.n_people == 3
        assert source.body.n == 3
        assert source.body.median == source.body.mean == 0.0
        assert source.body.under_0_10 == 1.0
        assert source.pa_mpjpe.n == 1
        assert source.pa_mpjpe.median == pytest.approx(0.0, abs=1e-6)
    assert scores.labelled.keypoint is None
    assert scores.builtin.keypoint.median == 0.0
    # The person with 6 labelled limb joints is not counted for recall.
    assert (scores.recall.found, scores.recall.eligible) == (2, 2)
    assert scores.recall.value == 1.0
    assert scores.recall.unannotated_people_found == 3


def test_score_of_a_shifted_prediction_is_the_shift_over_the_box_height() -> None:
    realset = _synthetic_set()

    def shifted(image: RealImage, people: list[RealPerson], use_labels: bool) -> list:
        return [_truth(p, shift=(3.0, 4.0)) for p in people]  # 5 px

    scores = score(realset, shifted)
    expected = sorted(5.0 / p.box_height for im in realset.images for p in im.people)
    assert scores.builtin.body.median == pytest.approx(expected[1])
    assert scores.builtin.body.mean == pytest.approx(np.mean(expected))
    assert scores.builtin.keypoint.mean == pytest.approx(np.mean(expected))
    assert scores.builtin.body.under_0_10 == pytest.approx(np.mean(np.array(expected) < 0.1))
    assert scores.recall is None


def test_score_rejects_a_predictor_that_skips_people() -> None:
    with pytest.raises(ValueError, match="one per given person"):
        score(_synthetic_set(), lambda image, people, use_labels: [])


def test_prediction_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="body2d"):
        PersonPrediction(_box(0, 0, 1, 1), np.zeros((12, 3)), np.zeros((17, 2)))


def test_scores_to_json_is_plain_numbers_and_markdown_has_a_row_per_method() -> None:
    scores = score(_synthetic_set(), _predict_truth, _find_truth)
    data = scores.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["builtin"]["body"]["median"] == 0.0
    assert data["labelled"]["keypoint"] is None
    assert data["recall"] == {
        "recall": 1.0,
        "found": 2,
        "eligible": 2,
        "unannotated_people_found": 3,
    }
    methods: dict[str, RealScores] = {"regression": scores, "meta-dual": scores}
    text = markdown_section(methods)
    assert text.count("| regression | 3 |") == 2 and text.count("| meta-dual | 3 |") == 2
    assert "| regression | 3 | 0.000 | 0.000 | 1.000 | 0.0 / 0.0 (n=1) |" in text
    assert "regression 2/2 (1.000)" in text
