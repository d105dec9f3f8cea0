"""BlazePose's landmark network as shipped ONNX (`model.blazepose_onnx`, for CUDA workers):
the same landmarks as LiteRT's on a real photo, through ONNX Runtime's CPU provider here; a
file that does not match its manifest is refused; the worker picks the runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model import blazepose as bp
from model import blazepose_onnx as bpo
from model.blazepose_files import BlazePoseUnavailable
from worker.inference import blazepose_runtime

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "img" / "example.jpg"


def test_onnx_landmarks_equal_litert_on_the_example_photo() -> None:
    from PIL import Image

    image = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    litert = bp.BlazePose("full", threads=1)
    onnx = bp.BlazePose("full", threads=1, landmark_runtime="onnx")
    assert (litert.landmark_backend, onnx.landmark_backend) == ("LiteRT", "CPUExecutionProvider")
    found = litert.detect_people(image)
    assert len(found.scores) >= 1
    a, b = litert.landmarks(image, found.roi), onnx.landmarks(image, found.roi)
    box = float(found.roi.size[0])
    assert np.abs(a.image[..., :2] - b.image[..., :2]).max() < 1e-3 * box  # pixels
    assert np.abs(a.world - b.world).max() < 0.005  # metres
    assert np.abs(a.visibility - b.visibility).max() < 0.01
    assert np.abs(a.score - b.score).max() < 1e-3
    assert a.score[0] > 0.9  # a person, not two agreeing failures


def test_a_shipped_file_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    path = bpo.onnx_path("full")
    manifest = json.loads((path.parent / bpo.MANIFEST).read_text())
    assert manifest["full"]["file"] == path.name
    assert "Apache-2.0" in manifest["full"]["licence"]
    assert len(bpo.load_onnx(path)) > 1_000_000
    shutil.copy(path, tmp_path / path.name)
    manifest["full"]["sha256"] = "0" * 64
    (tmp_path / bpo.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BlazePoseUnavailable, match="does not match"):
        bpo.load_onnx(tmp_path / path.name)
    with pytest.raises(BlazePoseUnavailable, match="model.blazepose_onnx --variant heavy"):
        bpo.onnx_path("heavy", tmp_path)


def test_outputs_are_found_by_shape_and_a_missing_one_is_named() -> None:
    shapes = {"a": (195,), "b": (1,), "c": (64, 64, 39), "d": (117,), "seg": (256, 256, 1)}
    assert bpo.output_roles(shapes) == {"landmarks": "a", "score": "b", "heatmap": "c", "world": "d"}
    with pytest.raises(BlazePoseUnavailable, match="world"):
        bpo.output_roles({k: v for k, v in shapes.items() if k != "d"})


def test_auto_runs_onnx_on_cuda_workers_that_have_the_file() -> None:
    assert blazepose_runtime("auto", "full", "cuda") == "onnx"
    assert blazepose_runtime("auto", "full", "cpu") == "litert"
    assert blazepose_runtime("auto", "heavy", "cuda") == "litert"  # no shipped heavy ONNX
    assert blazepose_runtime("litert", "full", "cuda") == "litert"
    assert blazepose_runtime("onnx", "full", "cpu") == "onnx"
