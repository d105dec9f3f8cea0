"""End to end: an image job's motion exports (animation.glb, animation.bvh, smpl.npz) asked for
with `metahmr recover`'s flags, made by a real worker running a tiny exported model, and
downloaded over HTTP; each file is held to the job's own JSON result."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from gltf_checks import skinned_vertices, validate_glb

from cli import main as metahmr
from model.body import load_body_model
from model.geometry import axis_angle_to_rotmat
from model.motion_export import CAMERA_TO_GL
from model.motion_export.bvh import euler_zyx_to_matrix
from model.outputs import SMPLParams

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "img" / "example.jpg"
EXAMPLE_KEYPOINTS = REPO / "docs" / "img" / "example_keypoints.json"


def test_recover_writes_the_motion_exports_of_an_image_job(
    stack, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    stack.workers.start(
        METAHMR_PIPELINE="onnx", METAHMR_MODEL_DIR=str(tiny_model_dir),
        METAHMR_ONNX_THREADS="1", METAHMR_TORCH_THREADS="1",
    )  # fmt: skip
    files = {"glb": tmp_path / "a.glb", "bvh": tmp_path / "a.bvh", "npz": tmp_path / "s.npz"}
    rc = metahmr([
        "recover", str(EXAMPLE), "--keypoints", str(EXAMPLE_KEYPOINTS), "--server", stack.url,
        "--steps", "2", "--animation", str(files["glb"]), "--bvh", str(files["bvh"]),
        "--smpl-npz", str(files["npz"]), "--out", str(tmp_path / "result.json"),
        "--timeout", "60",
    ])  # fmt: skip
    assert rc == 0
    result = json.loads((tmp_path / "result.json").read_text())
    (person,) = result["people"]
    smpl = person["smpl"]
    aa = np.array(smpl["global_orient"] + smpl["body_pose"]).reshape(24, 3)
    trans = np.array(person["camera"]["translation"])
    body = load_body_model()

    # animation.glb: skinned by its own skin at its one key, it is the result's posed body.
    glb = files["glb"].read_bytes()
    rot = axis_angle_to_rotmat(torch.from_numpy(aa)[None])
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.tensor([smpl["betas"]], dtype=torch.float64))
    with torch.no_grad():
        want = body(params, torch.from_numpy(trans)[None]).vertices[0].double().numpy()
    posed = skinned_vertices(glb, 0)["track_0"]
    np.testing.assert_allclose(posed, want @ CAMERA_TO_GL.T, atol=1e-4)
    scene = trimesh.load(io.BytesIO(glb), file_type="glb")
    assert [g.vertices.shape for g in scene.geometry.values()] == [(body.num_vertices, 3)]
    if shutil.which("npm"):
        report = validate_glb(glb, tmp_path)
        assert report["numErrors"] == 0, report["messages"]

    # animation.bvh: one frame, the root turned into the glTF camera frame.
    from bvh import Bvh

    mocap = Bvh(files["bvh"].read_text())
    assert mocap.nframes == 1
    zyx = mocap.frame_joint_channels(0, "pelvis", ["Zrotation", "Yrotation", "Xrotation"])
    root = euler_zyx_to_matrix(np.radians(zyx))
    np.testing.assert_allclose(root, CAMERA_TO_GL @ rot[0, 0].numpy(), atol=1e-5)

    # smpl.npz: the result's parameters in AMASS's layout, and the body model that made them.
    with np.load(files["npz"], allow_pickle=False) as data:
        np.testing.assert_allclose(data["poses"], aa.reshape(1, 72), atol=1e-6)
        np.testing.assert_allclose(data["trans"], trans[None], atol=1e-6)
        np.testing.assert_allclose(data["betas"], smpl["betas"], atol=1e-6)
        assert str(data["body_model"]) == result["model"]["body_model"]
