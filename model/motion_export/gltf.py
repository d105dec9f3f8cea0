"""animation.glb: tracks as skinned, animated glTF 2.0 meshes (one binary file).

Per track: a mesh node (the shaped rest mesh, with its skin) and the 24 SMPL joints as a node
hierarchy rooted at the pelvis, both at the scene root (glTF ignores a skinned mesh node's
own transform, and the validator warns about one that has a parent). The joint nodes' rest
transforms are the T-pose (identity rotations, translations = the rest offsets), so each
inverse bind matrix is the translation by minus its rest joint. One animation, "motion",
moves every track: per joint a rotation channel (LINEAR, unit quaternions), and the pelvis a
translation channel; key k of a track plays at frames[k] / fps seconds. Before its first key
and after its last, a track holds its first and last pose (glTF's rule).

Skinning weights: every non-zero weight of the body model is kept, four per JOINTS_n /
WEIGHTS_n set (the open model has at most 6 a vertex: 2 sets), so that a glTF viewer poses
the mesh as `model.lbs` does. The binary layout: one buffer, a bufferView per accessor, each
4-byte aligned.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.body import BodyModel
from model.motion import MotionTrack
from model.motion_export.skeleton import (
    RestBody,
    joint_motion,
    matrix_to_quaternion_xyzw,
    rest_body,
)
from model.render import vertex_normals

# glTF constants (component types, buffer targets).
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_COMPONENT = {np.float32: FLOAT, np.uint8: UNSIGNED_BYTE, np.uint16: UNSIGNED_SHORT,
              np.uint32: UNSIGNED_INT}  # fmt: skip
# More influences than this per vertex (never for SMPL-format models) keep the largest.
MAX_INFLUENCES = 16


class _Binary:
    """The GLB's binary chunk and the JSON's bufferViews and accessors that index it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, array: np.ndarray, target: int | None = None, min_max: bool = False) -> int:
        """Append `array` (N,) or (N, C) as one accessor; returns the accessor's index."""
        array = np.ascontiguousarray(array)
        data = array.tobytes()
        view: dict[str, Any] = {"buffer": 0, "byteOffset": self.size, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        pad = (-len(data)) % 4
        self.chunks.append(data + b"\x00" * pad)
        self.size += len(data) + pad
        columns = 1 if array.ndim == 1 else int(np.prod(array.shape[1:]))
        accessor: dict[str, Any] = {
            "bufferView": len(self.views) - 1,
            "componentType": _COMPONENT[array.dtype.type],
            "count": int(array.shape[0]),
            "type": _TYPES[columns],
        }
        if min_max:
            flat = array.reshape(array.shape[0], columns)
            accessor["min"] = [_number(v) for v in flat.min(axis=0)]
            accessor["max"] = [_number(v) for v in flat.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def data(self) -> bytes:
        return b"".join(self.chunks)


def _number(value: np.generic) -> float | int:
    return int(value) if np.issubdtype(type(value), np.integer) else float(value)


def animation_glb(body: BodyModel, tracks: Sequence[MotionTrack]) -> bytes:
    """The tracks as one animated, skinned GLB (see the module doc). Raises ValueError when
    `tracks` is empty."""
    if not tracks:
        raise ValueError("animation_glb needs at least one track")
    binary = _Binary()
    nodes: list[dict[str, Any]] = []
    roots: list[int] = []
    meshes: list[dict[str, Any]] = []
    skins: list[dict[str, Any]] = []
    samplers: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    for track in tracks:
        rest = rest_body(body, track.betas)
        prefix = f"track{track.track_id}_" if len(tracks) > 1 else ""
        joint_nodes = _add_skeleton(nodes, rest, prefix)
        skins.append({
            "name": f"track_{track.track_id}",
            "inverseBindMatrices": binary.add(_inverse_bind_matrices(rest)),
            "joints": joint_nodes,
            "skeleton": joint_nodes[0],
        })  # fmt: skip
        meshes.append(_mesh(binary, rest, f"track_{track.track_id}"))
        nodes.append({"name": f"track_{track.track_id}", "mesh": len(meshes) - 1,
                      "skin": len(skins) - 1})  # fmt: skip
        roots += [len(nodes) - 1, joint_nodes[0]]
        _add_animation(binary, samplers, channels, track, rest, joint_nodes)
    document = {
        "asset": {"version": "2.0", "generator": "metahmr motion export"},
        "scene": 0,
        "scenes": [{"name": "motion", "nodes": roots}],
        "nodes": nodes,
        "meshes": meshes,
        "skins": skins,
        "animations": [{"name": "motion", "samplers": samplers, "channels": channels}],
        "buffers": [{"byteLength": binary.size}],
        "bufferViews": binary.views,
        "accessors": binary.accessors,
    }
    return _glb(document, binary.data())


def _add_skeleton(nodes: list[dict[str, Any]], rest: RestBody, prefix: str) -> list[int]:
    """Append the 24 joint nodes (rest pose) in SMPL order; returns their node indices."""
    first = len(nodes)
    offsets = rest.offsets
    for j, name in enumerate(rest.names):
        node: dict[str, Any] = {"name": prefix + name, "translation": offsets[j].tolist()}
        children = [first + c for c in rest.children(j)]
        if children:
            node["children"] = children
        nodes.append(node)
    return list(range(first, first + len(rest.names)))


def _inverse_bind_matrices(rest: RestBody) -> np.ndarray:
    """(24, 16) float32: each joint's inverse rest transform (a translation by -joint),
    column-major as glTF stores a MAT4."""
    mats = np.tile(np.eye(4), (len(rest.names), 1, 1))
    mats[:, :3, 3] = -rest.joints
    return mats.transpose(0, 2, 1).reshape(-1, 16).astype(np.float32)


def _mesh(binary: _Binary, rest: RestBody, name: str) -> dict[str, Any]:
    attributes = {
        "POSITION": binary.add(rest.vertices, ARRAY_BUFFER, min_max=True),
        "NORMAL": binary.add(vertex_normals(rest.vertices, rest.faces), ARRAY_BUFFER),
    }
    joints, weights = influence_sets(rest.weights)
    for k, (j, w) in enumerate(zip(joints, weights, strict=True)):
        attributes[f"JOINTS_{k}"] = binary.add(j, ARRAY_BUFFER)
        attributes[f"WEIGHTS_{k}"] = binary.add(w, ARRAY_BUFFER)
    indices = binary.add(rest.faces.astype(np.uint32).reshape(-1), ELEMENT_ARRAY_BUFFER)
    return {"name": name, "primitives": [{"attributes": attributes, "indices": indices}]}


def influence_sets(weights: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Skinning weights (V, J) as glTF's JOINTS_n (V, 4) uint8 / WEIGHTS_n (V, 4) float32 sets.

    Each vertex's non-zero weights, largest first, four per set; unused slots are joint 0
    with weight 0. Rows are renormalised to sum to 1 in float32 (the validator's check)."""
    weights = np.asarray(weights, dtype=np.float64)
    count = min(int((weights > 0).sum(axis=1).max()), MAX_INFLUENCES)
    sets = max(1, -(-count // 4))
    order = np.argsort(-weights, axis=1, kind="stable")[:, : sets * 4]
    chosen = np.take_along_axis(weights, order, axis=1)
    order = np.where(chosen > 0, order, 0)
    chosen = chosen / chosen.sum(axis=1, keepdims=True)
    dtype = np.uint8 if weights.shape[1] <= 256 else np.uint16
    joints = [order[:, 4 * k : 4 * k + 4].astype(dtype) for k in range(sets)]
    return joints, [chosen[:, 4 * k : 4 * k + 4].astype(np.float32) for k in range(sets)]


def _add_animation(
    binary: _Binary,
    samplers: list[dict[str, Any]],
    channels: list[dict[str, Any]],
    track: MotionTrack,
    rest: RestBody,
    joint_nodes: list[int],
) -> None:
    """One rotation channel per joint and the pelvis' translation channel, sharing the
    track's key times."""
    motion = joint_motion(track, rest)
    times = binary.add(track.times.astype(np.float32), min_max=True)
    quats = continuous(matrix_to_quaternion_xyzw(motion.rotations))  # (T, 24, 4)

    def channel(output: int, node: int, path: str) -> None:
        samplers.append({"input": times, "output": output, "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

    channel(binary.add(motion.root_position.astype(np.float32)), joint_nodes[0], "translation")
    for j, node in enumerate(joint_nodes):
        channel(binary.add(quats[:, j].astype(np.float32)), node, "rotation")


def continuous(quats: np.ndarray) -> np.ndarray:
    """Flip signs along the time axis (axis 0) so consecutive quaternions have a
    non-negative dot product: q and -q are one rotation, and interpolating between
    neighbours then takes the short way."""
    out = quats.copy()
    for t in range(1, out.shape[0]):
        flip = (out[t] * out[t - 1]).sum(axis=-1) < 0
        out[t][flip] *= -1
    return out


def _glb(document: dict[str, Any], data: bytes) -> bytes:
    """A GLB container: 12-byte header, the JSON chunk (space-padded), the BIN chunk."""
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(data)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(text), b"JSON"), text,
        struct.pack("<I4s", len(data), b"BIN\x00"), data,
    ])  # fmt: skip
