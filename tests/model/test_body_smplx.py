"""Our posing (`model/lbs.py`, `BodyModel`) held equal to the smplx package's, on the bundled
open model and on an SMPL-format file with non-zero pose blend shapes, to 1e-5 m.

smplx is the `smpl` extra (non-commercial licence), not part of a default install: these
tests are skipped without it and run by `make test-smpl`, which installs it on the side.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from model import lbs
from model.body import BUNDLED_MODEL, EXTRA_JOINTS, SMPL_EXTRA_VERTEX_IDS, BodyModel
from model.geometry import axis_angle_to_rotmat
from model.outputs import SMPLParams

pytestmark = pytest.mark.smplx
smplx = pytest.importorskip("smplx")

TOLERANCE_M = 1e-5


def bundled_arrays() -> dict[str, np.ndarray]:
    with np.load(BUNDLED_MODEL) as data:
        return {k: data[k] for k in data.files}


def smplx_model(path: Path, vertex_ids: dict[str, int]) -> object:
    """smplx's SMPL over a model file (smplx reads .pkl itself; an .npz goes in as arrays)."""
    kwargs: dict[str, object] = {"vertex_ids": vertex_ids}
    if path.suffix == ".npz":
        from smplx.utils import Struct

        with np.load(path) as data:
            kwargs["data_struct"] = Struct(**{k: data[k] for k in data.files})
    with contextlib.redirect_stdout(io.StringIO()):  # its note about 10 shape components
        return smplx.SMPL(model_path=str(path), **kwargs).eval()


@pytest.fixture(scope="module")
def corrective_pkl(tmp_path_factory) -> Path:
    """An SMPL-format .pkl laid out like the official files (sparse J_regressor, the root's
    parent as 2**32 - 1, no extra-vertex arrays) with random, non-zero pose blend shapes."""
    arrays = bundled_arrays()
    rng = np.random.default_rng(0)
    data = {k: arrays[k] for k in ("v_template", "f", "weights", "shapedirs")}
    data["posedirs"] = rng.standard_normal(arrays["posedirs"].shape) * 2e-3
    data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"].astype(np.float64))
    kintree = arrays["kintree_table"].astype(np.int64)
    kintree[0, 0] = 2**32 - 1
    data["kintree_table"] = kintree
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def random_params(b: int, seed: int) -> tuple[SMPLParams, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_rotmat(0.6 * torch.randn(b, 24, 3, generator=gen))
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.randn(b, 10, generator=gen))
    return params, torch.randn(b, 3, generator=gen)


def smplx_forward(model: object, params: SMPLParams, transl: torch.Tensor) -> object:
    return model(
        betas=params.betas, global_orient=params.global_orient, body_pose=params.body_pose,
        transl=transl, pose2rot=False,
    )


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def assert_equal_to_smplx(ours: BodyModel, ref: object, seed: int) -> None:
    params, transl = random_params(4, seed)
    with torch.no_grad():
        theirs = smplx_forward(ref, params, transl)
        extra = theirs.joints[:, 24:]
        theirs_keypoints = ours._output(None, theirs.joints)  # the same mixing of the 45
        for name in ("forward", "reference_forward"):
            out = getattr(ours, name)(params, transl)
            assert max_error(out.vertices, theirs.vertices) <= TOLERANCE_M, name
            assert max_error(out.joints, theirs.joints[:, :24]) <= TOLERANCE_M, name
            assert max_error(out.coco17, theirs_keypoints.coco17) <= TOLERANCE_M
        fast = ours.keypoints_only(params, transl)
        assert max_error(fast.joints, theirs.joints[:, :24]) <= TOLERANCE_M
        assert max_error(fast.openpose25, theirs_keypoints.openpose25) <= TOLERANCE_M
        # The extra joints smplx appends are the surface vertices our keypoints read.
        assert max_error(out.vertices[:, ours.kp_vertex_ids], extra) <= TOLERANCE_M


def test_the_open_model_poses_as_smplx_does():
    arrays = bundled_arrays()
    ids = dict(zip(arrays["extra_vertex_names"].tolist(), arrays["extra_vertex_ids"].tolist(),
                   strict=True))
    ours = BodyModel().eval()
    assert not ours.has_pose_correctives
    assert_equal_to_smplx(ours, smplx_model(BUNDLED_MODEL, ids), seed=0)


def test_an_smpl_file_with_pose_blend_shapes_poses_as_smplx_does(corrective_pkl):
    from smplx.vertex_ids import vertex_ids

    ours = BodyModel(corrective_pkl).eval()
    assert ours.has_pose_correctives
    assert_equal_to_smplx(ours, smplx_model(corrective_pkl, vertex_ids["smplh"]), seed=1)
    # ...and the correctives act: without them the mesh is elsewhere.
    params, _ = random_params(2, 2)
    with torch.no_grad():
        plain = BodyModel().eval()(params).vertices
        assert max_error(ours(params).vertices, plain) > 1e-3


def test_our_smpl_keypoint_vertices_are_smplxs():
    from smplx.vertex_ids import vertex_ids

    assert SMPL_EXTRA_VERTEX_IDS == dict(vertex_ids["smplh"])
    assert set(EXTRA_JOINTS) == set(SMPL_EXTRA_VERTEX_IDS)


def test_lbs_equals_smplx_lbs_with_pose_blend_shapes(corrective_pkl):
    from smplx.lbs import lbs as smplx_lbs

    ref = smplx_model(corrective_pkl, dict(SMPL_EXTRA_VERTEX_IDS))
    params, _ = random_params(3, 3)
    rot = params.rotmats()
    with torch.no_grad():
        theirs_v, theirs_j = smplx_lbs(
            params.betas, rot, ref.v_template, ref.shapedirs, ref.posedirs, ref.J_regressor,
            ref.parents, ref.lbs_weights, pose2rot=False,
        )
        ours = lbs.lbs(
            params.betas, rot, ref.v_template, lbs.blend_basis(ref.shapedirs), ref.posedirs,
            ref.J_regressor, lbs.kinematic_tree(ref.parents.tolist()), ref.lbs_weights,
        )
    assert max_error(ours.vertices, theirs_v) <= TOLERANCE_M
    assert max_error(ours.joints, theirs_j) <= TOLERANCE_M


def test_forward_kinematics_equals_smplx_batch_rigid_transform():
    from smplx.lbs import batch_rigid_transform

    body = BodyModel()
    torch.manual_seed(4)
    rot = axis_angle_to_rotmat(torch.randn(4, 24, 3) * 0.7)
    joints = body.rest_joints(torch.randn(4, 10))
    ref_joints, ref = batch_rigid_transform(rot, joints, body.parents)
    out = lbs.forward_kinematics(rot, joints, body.tree)
    assert max_error(out.joints, ref_joints) <= 1e-6
    assert max_error(out.rotations, ref[:, :, :3, :3]) <= 1e-6
    assert max_error(out.translations, ref[:, :, :3, 3]) <= 1e-6
