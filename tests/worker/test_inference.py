"""Specification of worker/inference.py and worker/runtime.py: the "onnx" pipeline on a real
(tiny, randomly initialised) exported model and a rendered synthetic person.

The networks are random, so "the fit helps" is checked on the person's own 2D keypoints
with a test TTO schedule (larger learning rates than the reference 1e-5, recorded in the
checkpoint, which is where the pipeline reads its schedule from).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from result_checks import reprojection_px

from cli import main as metahmr
from model.body import BUNDLED_MODEL, BodyModel, load_body_model
from model.checkpoint import random_checkpoint, save_checkpoint
from model.config import BackboneConfig, DetectorConfig, RegressorConfig, TTOConfig
from model.export import export_checkpoint, file_sha256, load_manifest
from model.keypoints import convert_keypoints
from service.contract import PersonIn, RecoverOptions
from training.example import example_person
from worker.config import WorkerSettings
from worker.factory import check_pipeline
from worker.inference import NO_KEYPOINTS, ZERO_STEPS, OnnxPipeline, build_pipeline, parse_people
from worker.pipeline import PermanentJobError, PipelineUnavailable
from worker.runtime import SHIPPED_CHECKPOINT, prepare_shipped_model
from worker.tasks import job_options

REPO = Path(__file__).resolve().parents[2]
TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
TINY_DET = DetectorConfig(BackboneConfig("resnet18", 0.25), deconv_channels=(32, 32, 32))
FAST = TTOConfig(sgd_lr=1e-4, adam_lr=3e-3, steps=10, early_stop=0.0)
TTO_STEPS = 1 + FAST.steps  # step 0 + the Adam steps


def _settings(model_dir: Path | None, **kw: object) -> WorkerSettings:
    return WorkerSettings(
        pipeline="onnx", model_dir=model_dir, onnx_threads=1, torch_threads=1, **kw
    )


@pytest.fixture(scope="session")
def body() -> BodyModel:
    return load_body_model()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, body: BodyModel) -> Path:
    out = tmp_path_factory.mktemp("model")
    ckpt = random_checkpoint(TINY, TINY_DET, FAST, body_model_id=body.id)
    export_checkpoint(ckpt, out)
    return out


@pytest.fixture(scope="session")
def exported_without_detector(tmp_path_factory: pytest.TempPathFactory, body: BodyModel) -> Path:
    out = tmp_path_factory.mktemp("model_nodet")
    ckpt = random_checkpoint(TINY, tto=FAST, body_model_id=body.id, with_detector=False)
    export_checkpoint(ckpt, out)
    return out


@pytest.fixture(scope="session")
def pipeline(exported: Path) -> OnnxPipeline:
    return build_pipeline(_settings(exported))


@pytest.fixture(scope="session")
def person() -> dict[str, object]:
    """The docs' example person: image (480, 640, 3), COCO-17 keypoints, box, focal."""
    sample = example_person()
    return {
        "image": sample.image,
        "keypoints": sample.labels["coco17"].astype(np.float64),
        "bbox": sample.labels["bbox"].astype(np.float64),
        "focal": float(sample.labels["focal_length"]),
    }


def _options(person: dict[str, object], **extra: object) -> dict[str, object]:
    kp = person["keypoints"]
    assert isinstance(kp, np.ndarray)
    return {
        "people": [{"keypoints": {"format": "coco17", "points": kp.tolist()}}],
        "tto": {"steps": FAST.steps},
        **extra,
    }


def _run(pipeline: OnnxPipeline, person: dict[str, object], options: dict[str, object]):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, int, int]] = []
    typed = RecoverOptions.model_validate(options)  # as the worker reads a job record
    out = pipeline.run(person["image"], typed, lambda *c: calls.append(c))  # type: ignore[arg-type]
    return out, calls


# --- the export ------------------------------------------------------------------------------


def test_export_dir_holds_the_checkpoint_the_graphs_came_from(exported: Path) -> None:
    manifest = load_manifest(exported)
    assert manifest["checkpoint_file"] == "checkpoint.pt"
    assert manifest["checkpoint_sha256"] == file_sha256(exported / "checkpoint.pt")


def test_check_pipeline_explains_a_missing_or_incomplete_model(
    exported: Path, tmp_path: Path
) -> None:
    assert check_pipeline(_settings(exported)) is None
    problem = check_pipeline(_settings(tmp_path / "nowhere"))
    assert problem is not None and "metahmr export" in problem
    partial = tmp_path / "partial"
    shutil.copytree(exported, partial)
    (partial / "checkpoint.pt").unlink()
    problem = check_pipeline(_settings(partial))
    assert problem is not None and "checkpoint.pt" in problem and "metahmr export" in problem


@pytest.mark.skipif(SHIPPED_CHECKPOINT.exists(), reason="this installation ships a model")
def test_without_a_shipped_model_the_user_is_told_what_to_set(tmp_path: Path) -> None:
    settings = _settings(None, cache_dir=tmp_path)
    problem = check_pipeline(settings)
    assert problem is not None
    assert "METAHMR_MODEL_DIR" in problem and "METAHMR_PIPELINE=echo" in problem
    with pytest.raises(PipelineUnavailable, match="METAHMR_MODEL_DIR"):
        build_pipeline(settings)


def test_shipped_model_is_exported_once_into_the_cache(tmp_path: Path, body: BodyModel) -> None:
    ckpt_path = save_checkpoint(
        random_checkpoint(TINY, tto=FAST, body_model_id=body.id, with_detector=False, with_aux=False),
        tmp_path / "model.pt",
    )  # fmt: skip
    settings = _settings(None, cache_dir=tmp_path / "cache")
    out = prepare_shipped_model(settings, ckpt_path)
    assert out.parent == tmp_path / "cache" / "onnx"
    assert out.name == f"default-{file_sha256(ckpt_path)[:12]}"
    manifest = load_manifest(out)
    assert manifest["checkpoint_sha256"] == file_sha256(ckpt_path)
    assert set(manifest["graphs"]) == {"f_w_backbone", "f_w_head"}
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert prepare_shipped_model(settings, ckpt_path) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == [out.name]


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.exists(), reason="this installation ships no model")
def test_the_shipped_model_recovers_the_docs_example(tmp_path: Path, body: BodyModel) -> None:
    """What `make serve` runs: the shipped checkpoint, exported into a fresh cache, on the
    README's example photo and keypoints."""
    import json

    from PIL import Image

    docs = Path(__file__).parents[2] / "docs" / "img"
    image = np.asarray(Image.open(docs / "example.jpg").convert("RGB"))
    keypoints = json.loads((docs / "example_keypoints.json").read_text())
    pipeline = build_pipeline(_settings(None, cache_dir=tmp_path / "cache"))
    options = RecoverOptions.model_validate({"people": [{"keypoints": keypoints}]})
    out = pipeline.run(image, options, lambda *c: None)
    assert out.result["model"]["body_model"] == body.id
    assert out.result["model"]["version"] != "random-init"
    (person,) = out.result["people"]
    fit = person["fit"]
    assert fit["skipped"] is None and 1 <= fit["steps_run"] <= 15
    assert fit["loss_end"] < fit["loss_start"]
    assert len(person["smpl"]["body_pose"]) == 69 and len(person["smpl"]["betas"]) == 10


# --- the result --------------------------------------------------------------------------------


def test_result_follows_the_contract(pipeline: OnnxPipeline, person, body: BodyModel) -> None:  # type: ignore[no-untyped-def]
    out, calls = _run(pipeline, person, _options(person, **{"return": ["joints3d"]}))
    result = out.result
    assert set(result) == {"model", "image", "people", "timings_ms"}
    assert result["model"] == {
        "name": "metahmr",
        "version": "random-init",
        "body_model": body.id,
        "tto_scope": "head",
    }
    assert result["image"] == {"width": 640, "height": 480, "focal_length": 800.0}
    (p,) = result["people"]
    assert set(p) == {
        "bbox", "smpl", "camera", "keypoints_2d", "keypoint_source", "fit", "initial", "joints3d"
    }  # fmt: skip
    for smpl in (p["smpl"], p["initial"]["smpl"]):
        assert {k: len(v) for k, v in smpl.items()} == {
            "global_orient": 3,
            "body_pose": 69,
            "betas": 10,
        }
    assert len(p["camera"]["translation"]) == 3 and p["camera"]["translation"][2] > 0
    assert np.asarray(p["joints3d"]).shape == (24, 3)
    assert p["keypoint_source"] == "request"
    np.testing.assert_allclose(p["keypoints_2d"], person["keypoints"], atol=1e-3)
    # No bbox given: the box around the keypoints, which it contains.
    x0, y0, x1, y1 = p["bbox"]
    kp = person["keypoints"]
    assert x0 < kp[:, 0].min() and kp[:, 0].max() < x1 and y0 < kp[:, 1].min() < kp[:, 1].max() < y1
    fit = p["fit"]
    assert fit["steps_run"] == TTO_STEPS and fit["stopped_early"] is False
    assert fit["skipped"] is None and fit["loss_end"] < fit["loss_start"]
    assert out.tto_steps == (TTO_STEPS,) and out.files == {}
    assert set(result["timings_ms"]) == {"detect", "regress", "fit", "total"}
    assert result["timings_ms"]["total"] >= result["timings_ms"]["fit"] > 0
    stages = [c[0] for c in calls]
    assert stages[:4] == ["detect", "detect", "regress", "regress"]
    assert calls[4:] == [("fit", s, TTO_STEPS) for s in range(TTO_STEPS + 1)]
    assert json.loads(json.dumps(result, allow_nan=False)) == result  # strict JSON


def test_fit_lowers_the_reprojection_error(pipeline: OnnxPipeline, person, body) -> None:  # type: ignore[no-untyped-def]
    out, _ = _run(pipeline, person, _options(person, focal_length=person["focal"]))
    (p,) = out.result["people"]
    args = (person["keypoints"], out.result["image"])
    before = reprojection_px(
        body, p["initial"]["smpl"], p["initial"]["camera"]["translation"], *args
    )
    after = reprojection_px(body, p["smpl"], p["camera"]["translation"], *args)
    assert after < 0.7 * before, (before, after)
    # The reported error is the one of the returned parameters.
    assert p["fit"]["reprojection_error_px"] == pytest.approx(after, rel=1e-3, abs=0.05)


def test_zero_steps_is_the_regression_alone(pipeline: OnnxPipeline, person) -> None:  # type: ignore[no-untyped-def]
    out, calls = _run(pipeline, person, _options(person, tto={"steps": 0}))
    (p,) = out.result["people"]
    assert p["smpl"] == p["initial"]["smpl"] and p["camera"] == p["initial"]["camera"]
    assert p["fit"]["steps_run"] == 0 and p["fit"]["skipped"] == ZERO_STEPS
    assert "fit" not in [c[0] for c in calls] and out.tto_steps == (0,)


def test_steps_not_given_run_the_models_own_schedule(pipeline: OnnxPipeline, person) -> None:  # type: ignore[no-untyped-def]
    # The service stores steps=None when a request does not ask for a number.
    out, _ = _run(pipeline, person, _options(person, tto={"steps": None, "scope": None}))
    assert out.result["people"][0]["fit"]["steps_run"] == 1 + FAST.steps  # early stop is off


def test_a_scope_other_than_the_models_is_refused(pipeline: OnnxPipeline, person) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentJobError, match="meta-trained for the 'head' scope"):
        _run(pipeline, person, _options(person, tto={"steps": 2, "scope": "full"}))
    out, _ = _run(pipeline, person, _options(person, tto={"steps": 1, "scope": "head"}))
    assert out.result["people"][0]["fit"]["steps_run"] == 2


def test_a_stored_job_with_invalid_keypoints_fails_as_bad_input(person) -> None:  # type: ignore[no-untyped-def]
    """The API refuses these (service.contract); a record that holds them anyway (written
    by another version) fails its job instead of reaching the pipeline."""
    points = person["keypoints"].tolist()
    for fmt, pts in (("coco17", points[:16]), ("openpose25", points)):
        stored = {
            "people": [{"bbox": [0, 0, 64, 64], "keypoints": {"format": fmt, "points": pts}}]
        }
        with pytest.raises(PermanentJobError, match=f"format {fmt} has"):
            job_options(stored)
    bad = [[x, y, 1.5] for x, y, _ in points]
    with pytest.raises(PermanentJobError, match=r"confidence 1.5 is not in \[0, 1\]"):
        job_options({"people": [{"keypoints": {"points": bad}}]})
    with pytest.raises(PermanentJobError, match="tto.steps"):
        job_options({"tto": {"steps": "many"}})


@pytest.mark.parametrize("fmt", ["openpose25", "mediapipe33"])
def test_other_keypoint_formats_are_fitted_as_coco17(pipeline: OnnxPipeline, person, fmt) -> None:  # type: ignore[no-untyped-def]
    coco = person["keypoints"]
    points = convert_keypoints(coco, "coco17", fmt)
    options = {
        "people": [{"keypoints": {"format": fmt, "points": points.tolist()}}],
        "tto": {"steps": 1},
    }
    out, _ = _run(pipeline, person, options)
    (p,) = out.result["people"]
    np.testing.assert_allclose(p["keypoints_2d"], coco, atol=1e-3)  # every COCO joint survives
    assert p["fit"]["steps_run"] == 2


def test_people_without_keypoints_use_the_detector_or_go_unfitted(
    pipeline: OnnxPipeline, exported_without_detector: Path, person
) -> None:  # type: ignore[no-untyped-def]
    out, _ = _run(pipeline, person, {"tto": {"steps": 1}})
    (p,) = out.result["people"]  # no people given: BlazePose's detector finds the one
    assert _iou(p["bbox"], person["bbox"]) > 0.5
    assert p["keypoint_source"] == "blazepose" and np.asarray(p["keypoints_2d"]).shape == (17, 3)
    assert all(0.0 <= c <= 1.0 for _, _, c in p["keypoints_2d"])
    # Without BlazePose the model's own heatmap detector supplies the keypoints ...
    box = [float(v) for v in person["bbox"]]
    old = build_pipeline(_settings(pipeline.model.directory, blazepose="off"))
    out, _ = _run(old, person, {"people": [{"bbox": box}], "tto": {"steps": 1}})
    assert out.result["people"][0]["keypoint_source"] == "detector"
    # ... and with neither, a person without keypoints goes unfitted.
    bare = build_pipeline(
        _settings(exported_without_detector, blazepose="off")
    )
    out, calls = _run(bare, person, {"people": [{"bbox": box}], "tto": {"steps": 3}})
    (p,) = out.result["people"]
    assert p["bbox"] == box and p["keypoint_source"] is None and p["keypoints_2d"] is None
    assert p["fit"] == {
        "steps_run": 0,
        "loss_start": None,
        "loss_end": None,
        "stopped_early": False,
        "reprojection_error_px": None,
        "skipped": NO_KEYPOINTS,
    }
    assert p["smpl"] == p["initial"]["smpl"] and "fit" not in [c[0] for c in calls]


def test_a_person_needs_a_box_or_two_confident_keypoints() -> None:
    points = np.zeros((17, 3))
    points[0] = [10, 10, 1.0]

    def person(**fields: object) -> PersonIn:
        return PersonIn.model_validate(fields)

    with pytest.raises(ValueError, match="at least 2 keypoints"):  # the contract's check
        person(keypoints={"points": points.tolist()})
    # Two MediaPipe points with no COCO-17 joint (the mouth) pass the contract, not the worker.
    mouth = np.zeros((33, 3))
    mouth[9:11] = [[10, 10, 1.0], [20, 10, 1.0]]
    with pytest.raises(PermanentJobError, match="fewer than two keypoints"):
        parse_people(
            [person(keypoints={"format": "mediapipe33", "points": mouth.tolist()})], 100, 100
        )
    points[1] = [30, 50, 0.5]
    (found,) = parse_people([person(keypoints={"points": points.tolist()})], 100, 100)
    np.testing.assert_allclose(found.bbox, [6, 6, 34, 54])  # padded by 10% of 40 px
    (boxed,) = parse_people([person(bbox=[5, 6, 50, 60])], 100, 100)
    np.testing.assert_array_equal(boxed.bbox, [5, 6, 50, 60])
    assert boxed.keypoints is None
    (whole,) = parse_people([], 100, 80)
    np.testing.assert_array_equal(whole.bbox, [0, 0, 100, 80])


# --- files -------------------------------------------------------------------------------------


def test_mesh_and_overlay_files_hold_every_person(pipeline: OnnxPipeline, person, body) -> None:  # type: ignore[no-untyped-def]
    kp = person["keypoints"]
    one = {"keypoints": {"format": "coco17", "points": kp.tolist()}}
    shifted = kp.copy()
    shifted[:, 0] -= 250  # a second person to the left
    two = {"keypoints": {"format": "coco17", "points": shifted.tolist()}}
    options = {"people": [one, two], "tto": {"steps": 2}, "return": ["mesh", "overlay"]}
    out, calls = _run(pipeline, person, options)
    assert set(out.files) == {"mesh.obj", "mesh.glb", "overlay.png"}
    assert calls[-2:] == [("render", 0, 1), ("render", 1, 1)]
    assert "render" in out.result["timings_ms"]
    v, f = body.num_vertices, len(body.faces)
    obj = trimesh.load(io.BytesIO(out.files["mesh.obj"]), file_type="obj", process=False)
    assert obj.vertices.shape == (2 * v, 3) and obj.faces.shape == (2 * f, 3)
    glb = trimesh.load(io.BytesIO(out.files["mesh.glb"]), file_type="glb", process=False)
    assert sorted(glb.geometry) == ["person_0", "person_1"]
    first = glb.geometry["person_0"]
    assert first.vertices.shape == (v, 3) and first.faces.shape == (f, 3)
    np.testing.assert_allclose(first.vertices, obj.vertices[:v], atol=1e-5)
    # glTF camera frame (y up, looking down -z): the bodies stand in front of the camera,
    # the first one right of the second.
    t0, t1 = (p["camera"]["translation"] for p in out.result["people"])
    assert first.vertices[:, 2].max() < 0
    np.testing.assert_allclose(first.vertices.mean(0), np.asarray(t0) * [1, -1, -1], atol=0.5)
    assert t0[0] > t1[0]
    overlay = Image.open(io.BytesIO(out.files["overlay.png"]))
    assert overlay.format == "PNG" and overlay.size == (640, 480) and overlay.mode == "RGB"
    changed = np.abs(np.asarray(overlay, np.int16) - person["image"]).max(-1) > 0
    assert 0.005 < changed.mean() < 0.9  # meshes drawn over part of the photo


def test_a_model_trained_on_another_body_model_is_refused(tmp_path: Path) -> None:
    ckpt = random_checkpoint(
        TINY, tto=FAST, body_model_id="SMPL_NEUTRAL:0123456789ab", with_detector=False
    )
    export_checkpoint(ckpt, tmp_path)
    with pytest.raises(PipelineUnavailable, match="METAHMR_BODY_MODEL"):
        build_pipeline(_settings(tmp_path))


def test_the_body_model_setting_chooses_the_workers_body_model(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """METAHMR_BODY_MODEL reaches the worker through its settings: a model trained on the
    bundled body model is refused by a worker set to another file, named in the error."""
    export_checkpoint(random_checkpoint(TINY, tto=FAST, with_detector=False), tmp_path / "m")
    other = tmp_path / "other_body.npz"
    shutil.copyfile(BUNDLED_MODEL, other)  # same arrays, another file: another id
    monkeypatch.setenv("METAHMR_BODY_MODEL", str(other))
    settings = _settings(tmp_path / "m")
    assert settings.body_model == other
    with pytest.raises(PipelineUnavailable, match="this worker loads 'other_body:"):
        build_pipeline(settings)
    monkeypatch.delenv("METAHMR_BODY_MODEL")
    assert _settings(tmp_path / "m").body_model is None


# --- commands ----------------------------------------------------------------------------------


def test_docs_example_is_what_the_example_command_writes(person, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    committed = json.loads((REPO / "docs" / "img" / "example_keypoints.json").read_text())
    assert committed["format"] == "coco17"
    np.testing.assert_allclose(committed["points"], person["keypoints"], atol=0.006)
    assert Image.open(REPO / "docs" / "img" / "example.jpg").size == (640, 480)
    assert person["focal"] == pytest.approx(800.0, rel=1e-5)  # the default sqrt(W² + H²)
    assert metahmr(["assets", "example", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "example_keypoints.json").read_text()) == committed
    assert Image.open(tmp_path / "example.jpg").size == (640, 480)


@pytest.mark.skipif(SHIPPED_CHECKPOINT.exists(), reason="this installation ships a model")
def test_assets_prepare_without_a_shipped_model_does_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("METAHMR_CACHE_DIR", str(tmp_path))
    assert metahmr(["assets", "prepare", "--quiet"]) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # compiles the TTO graphs of another network: minutes on 2 cores
def test_compiled_tto_steps_give_the_eager_result(exported: Path, pipeline: OnnxPipeline, person) -> None:  # type: ignore[no-untyped-def]
    """METAHMR_TTO_COMPILE=1: the worker compiles the TTO at start and fits the same."""
    from model.tto import compile_failure

    compiled = build_pipeline(_settings(exported, tto_compile=True))
    assert compiled.runtime.compile and compile_failure() is None
    options = _options(person, focal_length=person["focal"])
    eager_out, _ = _run(pipeline, person, options)
    compiled_out, _ = _run(compiled, person, options)
    (a,), (b,) = eager_out.result["people"], compiled_out.result["people"]
    assert a["fit"]["steps_run"] == b["fit"]["steps_run"] == TTO_STEPS
    assert np.allclose(a["smpl"]["betas"], b["smpl"]["betas"], atol=1e-4)
    assert np.allclose(a["smpl"]["body_pose"], b["smpl"]["body_pose"], atol=1e-4)
    assert np.allclose(a["camera"]["translation"], b["camera"]["translation"], atol=1e-4)
    assert a["smpl"]["body_pose"] != a["initial"]["smpl"]["body_pose"]  # the fit moved it


def _iou(a: list[float], b: list[float]) -> float:
    lo = np.maximum(np.asarray(a[:2]), np.asarray(b[:2]))
    hi = np.minimum(np.asarray(a[2:]), np.asarray(b[2:]))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_a_blazepose_model_reads_the_landmarks_of_each_person(
    tmp_path: Path, body: BodyModel, person
) -> None:  # type: ignore[no-untyped-def]
    config = RegressorConfig(BackboneConfig("blazepose-full", 0.25), hidden=32)
    ckpt = random_checkpoint(config, tto=FAST, body_model_id=body.id, with_detector=False)
    export_checkpoint(ckpt, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["blazepose"]["variant"] == "full"
    assert manifest["graphs"]["f_w_backbone"]["inputs"][0]["name"] == "blazepose"
    bp_pipeline = build_pipeline(_settings(tmp_path, blazepose="off"))  # its variant wins
    assert bp_pipeline.blazepose is not None
    box = [float(v) for v in person["bbox"]]
    out, _ = _run(bp_pipeline, person, {"people": [{"bbox": box}, {"bbox": box}],
                                        "tto": {"steps": 2}})  # fmt: skip
    a, b = out.result["people"]
    assert a["keypoint_source"] == "blazepose" and a["fit"]["steps_run"] >= 1
    assert a["initial"] == b["initial"]  # the same box: the same landmarks and regression
    assert all(np.isfinite(a["smpl"]["body_pose"]))
