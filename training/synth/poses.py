"""SMPL pose sampler: a mixture of pose families inside per-joint anatomical limits.

A pose is built from named anatomical degrees of freedom ("dofs", degrees), e.g. `l_hip_flex`
or `trunk_twist`, each clamped to `LIMITS`, then turned into 24 joint rotations. Limb dofs
are written once in the left-side convention and mirrored for the right side, so both
sides share one set of limits and one meaning of "flexion".

SMPL frames (rest pose is a T-pose; every joint frame is aligned with the body frame):
x = body's left, y = up, z = forward (the way the person faces). Signs used below:
hip flexion (thigh forward) is -x, knee flexion is +x, trunk flexion (lean forward) is +x,
the left arm lowers with -z and swings forward with -y.

`sample_pose(rng, families)` returns the (72,) axis-angle vector; its first 3 values are
the root rotation in the body/world frame (y up), e.g. lying or upside down. The camera
sampler composes it with the view rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

Dofs = dict[str, float]

# SMPL joint indices used below (standard SMPL order).
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE = range(9)
SPINE3, L_FOOT, R_FOOT, NECK, L_COLLAR, R_COLLAR, HEAD = range(9, 16)
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST, L_HAND, R_HAND = range(16, 24)
NUM_JOINTS = 24

# Per-side limb limits in degrees (left convention; the right side is the mirror image).
_LIMB_LIMITS: dict[str, tuple[float, float]] = {
    "hip_flex": (-30.0, 135.0),
    "hip_abd": (-25.0, 70.0),
    "hip_twist": (-40.0, 40.0),
    "knee_flex": (0.0, 150.0),
    "ankle_flex": (-25.0, 45.0),  # + = plantar flexion (toes down)
    "ankle_inv": (-20.0, 20.0),
    "toe_flex": (-20.0, 30.0),
    "collar_elev": (-10.0, 30.0),
    "collar_fwd": (-15.0, 20.0),
    "shoulder_flex": (-50.0, 180.0),  # 0 = arm hanging, 90 = forward, 180 = overhead
    "shoulder_abd": (-30.0, 180.0),  # 0 = arm hanging, 90 = T-pose, 180 = overhead
    "shoulder_twist": (-80.0, 80.0),
    "elbow_flex": (0.0, 150.0),
    "forearm_twist": (-80.0, 80.0),
    "wrist_flex": (-60.0, 60.0),
    "wrist_dev": (-20.0, 30.0),
}
_AXIAL_LIMITS: dict[str, tuple[float, float]] = {
    "trunk_flex": (-40.0, 100.0),
    "trunk_lat": (-40.0, 40.0),
    "trunk_twist": (-50.0, 50.0),
    "neck_flex": (-45.0, 60.0),
    "neck_lat": (-35.0, 35.0),
    "neck_twist": (-70.0, 70.0),
    # The pelvis tilt bends the body at the hips: the root pitches forward and both hips
    # flex by the same angle, so the legs keep their direction.
    "pelvis_tilt": (-30.0, 100.0),
}
LIMITS: dict[str, tuple[float, float]] = {
    **_AXIAL_LIMITS,
    **{f"{side}_{name}": lim for side in ("l", "r") for name, lim in _LIMB_LIMITS.items()},
}
# How the trunk's bend is shared by spine1/2/3 (why: one joint bending 90 degrees folds
# the mesh; spreading it keeps the back smooth).
_SPINE_SHARE = ((SPINE1, 0.4), (SPINE2, 0.3), (SPINE3, 0.3))
_NECK_SHARE = ((NECK, 0.5), (HEAD, 0.5))


def clamp_dofs(dofs: Mapping[str, float]) -> Dofs:
    """Clamp every dof to `LIMITS`; unknown names are a programming error (KeyError)."""
    out: Dofs = {}
    for name, value in dofs.items():
        lo, hi = LIMITS[name]
        out[name] = float(min(max(value, lo), hi))
    return out


def _rot(axis: str, deg: float) -> np.ndarray:
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


def _mirror(rotmat: np.ndarray) -> np.ndarray:
    """Mirror a rotation across the body's sagittal plane (x -> -x)."""
    m = np.diag([-1.0, 1.0, 1.0])
    return m @ rotmat @ m


def _left_limb_rotations(d: Callable[[str], float]) -> dict[int, np.ndarray]:
    """Rotations of the left limb joints from left-convention dofs (getter `d`)."""
    arm_down = _rot("z", -90.0)
    shoulder = (
        _rot("z", d("shoulder_abd")) @ _rot("x", -d("shoulder_flex")) @ arm_down
        @ _rot("x", d("shoulder_twist"))
    )
    # Express the shoulder relative to the T-pose rest frame of SMPL.
    return {
        L_HIP: _rot("y", d("hip_twist")) @ _rot("z", d("hip_abd")) @ _rot("x", -d("hip_flex")),
        L_KNEE: _rot("x", d("knee_flex")),
        L_ANKLE: _rot("x", d("ankle_flex")) @ _rot("z", d("ankle_inv")),
        L_FOOT: _rot("x", d("toe_flex")),
        L_COLLAR: _rot("z", d("collar_elev")) @ _rot("y", -d("collar_fwd")),
        L_SHOULDER: shoulder,
        L_ELBOW: _rot("y", -d("elbow_flex")) @ _rot("x", d("forearm_twist")),
        L_WRIST: _rot("z", -d("wrist_flex")) @ _rot("y", d("wrist_dev")),
    }


_RIGHT_OF = {
    L_HIP: R_HIP, L_KNEE: R_KNEE, L_ANKLE: R_ANKLE, L_FOOT: R_FOOT, L_COLLAR: R_COLLAR,
    L_SHOULDER: R_SHOULDER, L_ELBOW: R_ELBOW, L_WRIST: R_WRIST,
}


def assemble_rotations(dofs: Mapping[str, float], root: np.ndarray | None = None) -> np.ndarray:
    """Joint rotations (24, 3, 3) from dofs (missing ones are 0) and a root rotation (3, 3)."""
    full = {name: 0.0 for name in LIMITS}
    full.update(dofs)
    rots = np.tile(np.eye(3), (NUM_JOINTS, 1, 1))
    tilt = full["pelvis_tilt"]
    for side in ("l", "r"):
        def get(name: str, side: str = side) -> float:
            value = full[f"{side}_{name}"]
            if name != "hip_flex":
                return value
            # The tilted pelvis adds to the hip's flexion; the sum is what must stay legal.
            lo, hi = _LIMB_LIMITS["hip_flex"]
            return min(max(value + tilt, lo), hi)

        limb = _left_limb_rotations(get)
        for joint, rotmat in limb.items():
            if side == "l":
                rots[joint] = rotmat
            else:
                rots[_RIGHT_OF[joint]] = _mirror(rotmat)
    for joint, share in _SPINE_SHARE:
        rots[joint] = _axial(full["trunk_flex"], full["trunk_lat"], full["trunk_twist"], share)
    for joint, share in _NECK_SHARE:
        rots[joint] = _axial(full["neck_flex"], full["neck_lat"], full["neck_twist"], share)
    root_rot = np.eye(3) if root is None else root
    rots[PELVIS] = root_rot @ _rot("x", tilt)
    return rots


def _axial(flex: float, lat: float, twist: float, share: float) -> np.ndarray:
    return _rot("y", twist * share) @ _rot("z", -lat * share) @ _rot("x", flex * share)


def rotations_to_axis_angle(rots: np.ndarray) -> np.ndarray:
    """(24, 3, 3) rotations -> (72,) axis-angle vector, SMPL order."""
    return Rotation.from_matrix(rots).as_rotvec().reshape(-1)


# ---------------------------------------------------------------------------------------
# Families. Each takes a generator and returns (dofs, root rotation (3, 3)). Values not set
# get small jitter in `sample_pose`, so no two samples share exact zeros.


def _n(rng: np.random.Generator, mean: float, sd: float) -> float:
    return float(rng.normal(mean, sd))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _relaxed_arms(rng: np.random.Generator, d: Dofs) -> None:
    for s in ("l", "r"):
        d[f"{s}_shoulder_flex"] = _n(rng, 5, 15)
        d[f"{s}_shoulder_abd"] = _u(rng, 3, 30)
        d[f"{s}_shoulder_twist"] = _n(rng, 0, 20)
        d[f"{s}_elbow_flex"] = _u(rng, 0, 45)
        d[f"{s}_forearm_twist"] = _n(rng, 0, 25)


def _standing(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d: Dofs = {"trunk_flex": _n(rng, 0, 6), "trunk_lat": _n(rng, 0, 4)}
    d["trunk_twist"] = _n(rng, 0, 8)
    for s in ("l", "r"):
        d[f"{s}_hip_flex"] = _n(rng, 0, 8)
        d[f"{s}_hip_abd"] = _n(rng, 4, 4)
        d[f"{s}_hip_twist"] = _n(rng, 0, 10)
        d[f"{s}_knee_flex"] = abs(_n(rng, 0, 10))
    _relaxed_arms(rng, d)
    style = rng.random()
    if style < 0.2:  # hands on hips
        for s in ("l", "r"):
            d[f"{s}_shoulder_abd"] = _u(rng, 30, 50)
            d[f"{s}_elbow_flex"] = _u(rng, 90, 120)
            d[f"{s}_shoulder_twist"] = _u(rng, -10, 30)
    elif style < 0.35:  # A-pose / T-pose
        abd = _u(rng, 40, 95)
        for s in ("l", "r"):
            d[f"{s}_shoulder_abd"] = abd + _n(rng, 0, 5)
            d[f"{s}_elbow_flex"] = _u(rng, 0, 15)
    elif style < 0.5:  # holding something in front
        for s in ("l", "r"):
            d[f"{s}_shoulder_flex"] = _u(rng, 10, 45)
            d[f"{s}_elbow_flex"] = _u(rng, 60, 110)
    return d, np.eye(3)


def _gait(rng: np.random.Generator, hip_amp: float, knee_amp: float, arm_amp: float,
          elbow: tuple[float, float], lean: tuple[float, float]) -> Dofs:
    phase = _u(rng, 0, 2 * np.pi)
    d: Dofs = {"trunk_flex": _u(rng, *lean), "trunk_twist": _n(rng, 0, 6)}
    for s, sign in (("l", 1.0), ("r", -1.0)):
        swing = np.sin(phase) * sign
        d[f"{s}_hip_flex"] = hip_amp * swing + 5 + _n(rng, 0, 4)
        # The knee bends most while the leg swings forward and right after push-off.
        d[f"{s}_knee_flex"] = 5 + knee_amp * max(0.0, np.sin(phase * sign + 0.8)) + _n(rng, 0, 5)
        d[f"{s}_ankle_flex"] = _n(rng, 5, 10)
        d[f"{s}_shoulder_flex"] = -arm_amp * swing + _n(rng, 0, 6)
        d[f"{s}_shoulder_abd"] = _u(rng, 5, 20)
        d[f"{s}_elbow_flex"] = _u(rng, *elbow)
    return d


def _walking(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    return _gait(rng, 25, 55, 25, (5, 35), (-3, 8)), np.eye(3)


def _running(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    return _gait(rng, 45, 100, 50, (60, 110), (5, 20)), np.eye(3)


def _sitting(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d: Dofs = {"trunk_flex": _n(rng, 5, 10), "trunk_twist": _n(rng, 0, 10)}
    crossed = rng.random() < 0.25
    for s in ("l", "r"):
        d[f"{s}_hip_flex"] = _u(rng, 70, 105)
        d[f"{s}_hip_abd"] = _u(rng, 0, 25)
        d[f"{s}_knee_flex"] = _u(rng, 60, 115)
        d[f"{s}_ankle_flex"] = _n(rng, 0, 10)
    if crossed:  # legs crossed on the floor
        for s in ("l", "r"):
            d[f"{s}_hip_abd"] = _u(rng, 35, 55)
            d[f"{s}_hip_twist"] = _u(rng, 20, 40)
            d[f"{s}_knee_flex"] = _u(rng, 120, 145)
    _relaxed_arms(rng, d)
    for s in ("l", "r"):
        d[f"{s}_shoulder_flex"] = _u(rng, 0, 50)
        d[f"{s}_elbow_flex"] = _u(rng, 20, 100)
    return d, np.eye(3)


def _crouching(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d: Dofs = {"trunk_flex": _u(rng, 10, 45), "neck_flex": _u(rng, -30, 0)}
    for s in ("l", "r"):
        d[f"{s}_hip_flex"] = _u(rng, 95, 130)
        d[f"{s}_hip_abd"] = _u(rng, 5, 35)
        d[f"{s}_knee_flex"] = _u(rng, 110, 150)
        d[f"{s}_ankle_flex"] = _u(rng, -25, 0)
        d[f"{s}_shoulder_flex"] = _u(rng, 10, 80)
        d[f"{s}_shoulder_abd"] = _u(rng, 5, 30)
        d[f"{s}_elbow_flex"] = _u(rng, 10, 100)
    return d, np.eye(3)


def _kneeling(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d: Dofs = {"trunk_flex": _n(rng, 5, 8)}
    down, up = ("l", "r") if rng.random() < 0.5 else ("r", "l")
    d[f"{down}_hip_flex"] = _u(rng, -5, 20)
    d[f"{down}_knee_flex"] = _u(rng, 80, 100)
    d[f"{down}_ankle_flex"] = _u(rng, 20, 45)
    if rng.random() < 0.6:  # one knee up (proposal pose), else both knees down
        d[f"{up}_hip_flex"] = _u(rng, 75, 100)
        d[f"{up}_knee_flex"] = _u(rng, 80, 100)
    else:
        d[f"{up}_hip_flex"] = d[f"{down}_hip_flex"] + _n(rng, 0, 4)
        d[f"{up}_knee_flex"] = d[f"{down}_knee_flex"] + _n(rng, 0, 4)
    _relaxed_arms(rng, d)
    return d, np.eye(3)


def _reaching(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d, _ = _standing(rng)
    arm = "l" if rng.random() < 0.5 else "r"
    d[f"{arm}_shoulder_flex"] = _u(rng, 50, 170)
    d[f"{arm}_shoulder_abd"] = _u(rng, 0, 70)
    d[f"{arm}_elbow_flex"] = _u(rng, 0, 35)
    d[f"{arm}_collar_elev"] = _u(rng, 0, 20)
    d["trunk_flex"] = _u(rng, -5, 35)
    d["trunk_twist"] = _u(rng, -25, 25)
    d["trunk_lat"] = _u(rng, -15, 15)
    if rng.random() < 0.4:  # a step towards the target
        d["l_hip_flex"] = _u(rng, 10, 40)
        d["l_knee_flex"] = _u(rng, 10, 50)
    return d, np.eye(3)


def _arms_raised(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d, _ = _standing(rng)
    for s in ("l", "r"):
        if rng.random() < 0.5:
            d[f"{s}_shoulder_flex"] = _u(rng, 130, 180)
            d[f"{s}_shoulder_abd"] = _u(rng, 0, 40)
        else:
            d[f"{s}_shoulder_flex"] = _u(rng, 0, 40)
            d[f"{s}_shoulder_abd"] = _u(rng, 110, 175)
        d[f"{s}_elbow_flex"] = _u(rng, 0, 60)
        d[f"{s}_collar_elev"] = _u(rng, 5, 25)
    if rng.random() < 0.3:  # waving: one forearm up
        s = "l" if rng.random() < 0.5 else "r"
        d[f"{s}_shoulder_abd"] = _u(rng, 70, 100)
        d[f"{s}_shoulder_flex"] = _u(rng, 0, 30)
        d[f"{s}_shoulder_twist"] = _u(rng, 50, 80)
        d[f"{s}_elbow_flex"] = _u(rng, 70, 110)
    return d, np.eye(3)


def _bending(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d, _ = _standing(rng)
    tilt = _u(rng, 30, 90)
    d["pelvis_tilt"] = tilt
    d["trunk_flex"] = _u(rng, 0, 35)
    for s in ("l", "r"):
        d[f"{s}_hip_flex"] = -_u(rng, 0, 10)  # on top of the tilt: legs stay vertical
        d[f"{s}_knee_flex"] = _u(rng, 0, 35)
        # Arms hang towards the ground: flexion relative to the bent trunk.
        d[f"{s}_shoulder_flex"] = tilt + d["trunk_flex"] + _n(rng, 0, 15)
        d[f"{s}_elbow_flex"] = _u(rng, 0, 40)
    return d, np.eye(3)


def _lying(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    d: Dofs = {"trunk_lat": _n(rng, 0, 8), "neck_flex": _n(rng, 0, 15)}
    for s in ("l", "r"):
        d[f"{s}_hip_flex"] = _u(rng, -5, 40)
        d[f"{s}_hip_abd"] = _u(rng, 0, 25)
        d[f"{s}_knee_flex"] = _u(rng, 0, 70)
        d[f"{s}_shoulder_abd"] = _u(rng, 0, 120)
        d[f"{s}_shoulder_flex"] = _u(rng, -20, 60)
        d[f"{s}_elbow_flex"] = _u(rng, 0, 90)
    which = rng.integers(0, 3)
    if which == 0:
        root = _rot("x", -90.0)  # on the back, facing up
    elif which == 1:
        root = _rot("x", 90.0)  # on the front
    else:
        root = _rot("z", 90.0 if rng.random() < 0.5 else -90.0)  # on one side
    return d, root


def _gesturing(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    """Every dof uniform within the middle 60% of its range: variety between families."""
    d: Dofs = {}
    for name, (lo, hi) in LIMITS.items():
        if name == "pelvis_tilt":
            continue
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        d[name] = _u(rng, mid - 0.6 * half, mid + 0.6 * half)
    for s in ("l", "r"):  # keep the legs under the body
        d[f"{s}_hip_flex"] = _u(rng, -10, 40)
        d[f"{s}_knee_flex"] = _u(rng, 0, 60)
    return d, np.eye(3)


# -- rare poses, reserved for the `shifted` split --------------------------------------


def _acrobatic(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    """Handstands, cartwheels, kicks, splits, backbends, tucks: the far ends of the limits."""
    kind = int(rng.integers(0, 6))
    d: Dofs = {}
    root = np.eye(3)
    if kind == 0:  # handstand
        root = _rot("x", 180.0 + _n(rng, 0, 15))
        for s in ("l", "r"):
            d[f"{s}_shoulder_flex"] = _u(rng, 160, 180)
            d[f"{s}_hip_flex"] = _u(rng, -20, 30)
            d[f"{s}_hip_abd"] = _u(rng, 0, 50)
            d[f"{s}_knee_flex"] = _u(rng, 0, 90)
    elif kind == 1:  # cartwheel
        root = _rot("z", _u(rng, 100, 180) * (1 if rng.random() < 0.5 else -1))
        for s in ("l", "r"):
            d[f"{s}_shoulder_abd"] = _u(rng, 150, 180)
            d[f"{s}_hip_abd"] = _u(rng, 45, 70)
    elif kind == 2:  # high kick
        kick = "l" if rng.random() < 0.5 else "r"
        d[f"{kick}_hip_flex"] = _u(rng, 110, 135)
        d[f"{kick}_knee_flex"] = _u(rng, 0, 15)
        d["trunk_flex"] = _u(rng, -35, -10)
        for s in ("l", "r"):
            d[f"{s}_shoulder_abd"] = _u(rng, 60, 120)
    elif kind == 3:  # splits on the floor
        d["pelvis_tilt"] = _u(rng, -10, 10)
        front = "l" if rng.random() < 0.5 else "r"
        back = "r" if front == "l" else "l"
        d[f"{front}_hip_flex"] = _u(rng, 110, 135)
        d[f"{back}_hip_flex"] = _u(rng, -30, -20)
        for s in ("l", "r"):
            d[f"{s}_shoulder_abd"] = _u(rng, 60, 170)
    elif kind == 4:  # backbend / bridge
        root = _rot("x", -_u(rng, 60, 150))
        d["trunk_flex"] = _u(rng, -40, -30)
        d["neck_flex"] = _u(rng, -45, -30)
        for s in ("l", "r"):
            d[f"{s}_shoulder_flex"] = _u(rng, 150, 180)
            d[f"{s}_hip_flex"] = _u(rng, -30, 10)
            d[f"{s}_knee_flex"] = _u(rng, 40, 100)
    else:  # tucked somersault, any orientation
        root = Rotation.random(random_state=int(rng.integers(0, 2**31))).as_matrix()
        d["trunk_flex"] = _u(rng, 50, 100)
        d["neck_flex"] = _u(rng, 30, 60)
        for s in ("l", "r"):
            d[f"{s}_hip_flex"] = _u(rng, 120, 135)
            d[f"{s}_knee_flex"] = _u(rng, 130, 150)
            d[f"{s}_shoulder_flex"] = _u(rng, 40, 90)
            d[f"{s}_elbow_flex"] = _u(rng, 60, 130)
    return d, root


def _extreme_combination(rng: np.random.Generator) -> tuple[Dofs, np.ndarray]:
    """Each dof near one end of its range, independently: unusual limb combinations."""
    d: Dofs = {}
    for name, (lo, hi) in LIMITS.items():
        end = hi if rng.random() < 0.5 else lo
        d[name] = end - (end - (lo + hi) / 2) * _u(rng, 0.0, 0.3)
    return d, np.eye(3)


FamilySampler = Callable[[np.random.Generator], tuple[Dofs, np.ndarray]]


@dataclass(frozen=True)
class PoseFamily:
    name: str
    weight: float
    sampler: FamilySampler


COMMON_FAMILIES: tuple[PoseFamily, ...] = (
    PoseFamily("standing", 0.16, _standing),
    PoseFamily("walking", 0.14, _walking),
    PoseFamily("running", 0.10, _running),
    PoseFamily("sitting", 0.10, _sitting),
    PoseFamily("crouching", 0.07, _crouching),
    PoseFamily("kneeling", 0.05, _kneeling),
    PoseFamily("reaching", 0.09, _reaching),
    PoseFamily("arms_raised", 0.08, _arms_raised),
    PoseFamily("bending", 0.07, _bending),
    PoseFamily("lying", 0.05, _lying),
    PoseFamily("gesturing", 0.09, _gesturing),
)
RARE_FAMILIES: tuple[PoseFamily, ...] = (
    PoseFamily("acrobatic", 0.7, _acrobatic),
    PoseFamily("extreme", 0.3, _extreme_combination),
)


@dataclass(frozen=True)
class PoseSample:
    """family: the family's name; pose: (72,) SMPL axis-angle, root in the body frame."""

    family: str
    pose: np.ndarray


def sample_pose(
    rng: np.random.Generator, families: Sequence[PoseFamily], jitter_deg: float = 3.0
) -> PoseSample:
    """Draw a family by weight, then a pose from it, clamped to `LIMITS`."""
    weights = np.array([f.weight for f in families], dtype=np.float64)
    family = families[int(rng.choice(len(families), p=weights / weights.sum()))]
    dofs, root = family.sampler(rng)
    full = {name: float(rng.normal(0.0, jitter_deg)) for name in LIMITS if name != "pelvis_tilt"}
    for name, value in dofs.items():
        full[name] = value + full.get(name, 0.0)
    rots = assemble_rotations(clamp_dofs(full), root)
    return PoseSample(family.name, rotations_to_axis_angle(rots))


def families_for(names: Sequence[str]) -> tuple[PoseFamily, ...]:
    """Families by name; ValueError lists the valid names."""
    known = {f.name: f for f in COMMON_FAMILIES + RARE_FAMILIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown pose families {unknown}; valid: {sorted(known)}")
    return tuple(known[n] for n in names)
