"""Person appearance as per-vertex colours: skin, hair, top, bottoms, shoes; and lighting.

Garments are chosen on the rest (T-pose) mesh: SMPL body parts (each vertex's strongest
skinning joint) say which garment may cover a vertex, and distances along the rest limbs
set sleeve and leg lengths. Patterns (stripes, checks, smooth noise) are functions of the
rest position, so they move with the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth import poses as P
from training.synth.textures import random_color

# sRGB skin tones from light to dark (spread over the Fitzpatrick scale).
SKIN_TONES = np.array([
    (0.98, 0.87, 0.78), (0.95, 0.80, 0.68), (0.89, 0.71, 0.57), (0.80, 0.60, 0.46),
    (0.70, 0.50, 0.37), (0.58, 0.40, 0.28), (0.45, 0.30, 0.21), (0.34, 0.22, 0.15),
    (0.25, 0.16, 0.11),
])
HAIR_COLORS = np.array([
    (0.05, 0.04, 0.04), (0.20, 0.13, 0.08), (0.40, 0.26, 0.15), (0.75, 0.62, 0.40),
    (0.55, 0.22, 0.10), (0.65, 0.65, 0.65),
])
PATTERNS = ("solid", "stripes", "checks", "noise")

_TORSO = (P.PELVIS, P.SPINE1, P.SPINE2, P.SPINE3, P.L_COLLAR, P.R_COLLAR)
_UPPER_ARMS = (P.L_SHOULDER, P.R_SHOULDER)
_FOREARMS = (P.L_ELBOW, P.R_ELBOW)
_HANDS = (P.L_WRIST, P.R_WRIST, P.L_HAND, P.R_HAND)
_THIGHS = (P.L_HIP, P.R_HIP)
_SHINS = (P.L_KNEE, P.R_KNEE)
_FEET = (P.L_ANKLE, P.R_ANKLE, P.L_FOOT, P.R_FOOT)


@dataclass(frozen=True)
class BodyTemplate:
    """What appearance needs to know about the mesh, computed once per body model.

    rest_vertices: (V, 3) T-pose vertices (betas 0), metres, y up, x = body's left.
    rest_joints: (24, 3) T-pose joints.
    vertex_part: (V,) int, the SMPL joint whose skinning weight is largest at each vertex.
    """

    rest_vertices: np.ndarray
    rest_joints: np.ndarray
    vertex_part: np.ndarray


@dataclass(frozen=True)
class Lighting:
    """direction: (3,) unit vector the light travels along, camera frame; intensity: of the
    directional light; color: (3,) RGB in [0, 1]; ambient: ambient light level in [0, 1]."""

    direction: np.ndarray
    intensity: float
    color: np.ndarray
    ambient: float


def _pattern(rng: np.random.Generator, pos: np.ndarray, name: str) -> np.ndarray:
    """A field (V,) in [0, 1] over rest positions (V, 3)."""
    if name == "solid":
        return np.zeros(len(pos))
    if name == "stripes":
        axis = np.array([0.0, 1.0, 0.0]) if rng.random() < 0.7 else rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        return (np.sin(pos @ axis * rng.uniform(30, 90)) > 0).astype(np.float64)
    if name == "checks":
        f = rng.uniform(25, 60)
        return ((np.sin(pos[:, 0] * f) * np.sin(pos[:, 1] * f)) > 0).astype(np.float64)
    # Smooth noise: a few random plane waves.
    k = rng.normal(size=(4, 3)) * rng.uniform(5, 20)
    phase = rng.uniform(0, 2 * np.pi, size=4)
    field = np.sin(pos @ k.T + phase).sum(axis=1)
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def _garment_colors(rng: np.random.Generator, pos: np.ndarray) -> np.ndarray:
    c0, c1 = random_color(rng, 0.08, 0.95), random_color(rng, 0.08, 0.95)
    name = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.45, 0.2, 0.15, 0.2]))]
    field = _pattern(rng, pos, name)[:, None]
    return c0 * (1 - field) + c1 * field


def sample_vertex_colors(rng: np.random.Generator, body: BodyTemplate) -> np.ndarray:
    """Per-vertex colours (V, 3) float32 in [0, 1] for one person."""
    pos, joints, part = body.rest_vertices, body.rest_joints, body.vertex_part
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(0.92, 1.05, size=3)
    colors = np.tile(skin, (len(pos), 1))
    in_parts = np.isin(part, _TORSO + _UPPER_ARMS + _FOREARMS + _THIGHS + _SHINS)

    # Top: torso above the waist, sleeves out to a random distance from the shoulder.
    waist_y = joints[P.PELVIS, 1] + rng.uniform(0.0, 0.12)
    shoulder_x = abs(joints[P.L_SHOULDER, 0])
    wrist_x = abs(joints[P.L_WRIST, 0])
    sleeve = rng.choice([0.0, 0.12, 0.25, wrist_x - shoulder_x], p=[0.15, 0.3, 0.15, 0.4])
    arm = np.isin(part, _UPPER_ARMS + _FOREARMS)
    top = (np.isin(part, _TORSO) & (pos[:, 1] > waist_y)) | (
        arm & (np.abs(pos[:, 0]) < shoulder_x + sleeve)
    )
    colors[top] = _garment_colors(rng, pos)[top]

    # Bottoms: below the waist, down to shorts or full length.
    knee_y, ankle_y = joints[P.L_KNEE, 1], joints[P.L_ANKLE, 1]
    hem = knee_y + rng.uniform(0.05, 0.2) if rng.random() < 0.3 else ankle_y + 0.03
    bottoms = in_parts & ~arm & ~top & (pos[:, 1] > hem)
    colors[bottoms] = _garment_colors(rng, pos)[bottoms]

    feet = np.isin(part, _FEET)
    colors[feet] = random_color(rng, 0.05, 0.8)
    if rng.random() < 0.1:  # gloves
        colors[np.isin(part, _HANDS)] = random_color(rng, 0.05, 0.6)

    # Hair: the top and back of the head, unless bald.
    head = joints[P.HEAD]
    if rng.random() < 0.9:
        long_hair = rng.random() < 0.35
        on_head = part == P.HEAD
        scalp = on_head & ((pos[:, 1] > head[1] + 0.05) | (pos[:, 2] < head[2] - 0.04))
        if long_hair:
            scalp |= np.isin(part, (P.HEAD, P.NECK)) & (pos[:, 2] < head[2] - 0.02)
        hair = HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))]
        colors[scalp] = hair * rng.uniform(0.85, 1.15)
    return np.clip(colors, 0.0, 1.0).astype(np.float32)


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """A key light from above and in front of the person (camera frame), tinted warm/cool."""
    direction = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)])
    temperature = rng.uniform(-1.0, 1.0)  # -1 cool (blueish) .. +1 warm (orange)
    color = np.clip(1.0 + 0.15 * temperature * np.array([1.0, 0.1, -1.0]), 0.0, 1.0)
    return Lighting(
        direction=direction / np.linalg.norm(direction),
        intensity=float(rng.uniform(1.5, 4.0)),
        color=color,
        ambient=float(rng.uniform(0.25, 0.6)),
    )
