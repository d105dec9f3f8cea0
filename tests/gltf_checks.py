"""Reading and checking animation.glb files in tests: a small GLB reader, numpy skinning of a
skinned mesh at one animation key, and the Khronos glTF validator (npm `gltf-validator`,
installed into build/node by `npm` on first use; the test is skipped where npm is absent)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "build" / "node"
VALIDATOR = "gltf-validator@2.0.0-dev.3.10"
_COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_VALIDATE_JS = """
const validator = require(process.argv[1]);
const bytes = new Uint8Array(require('fs').readFileSync(process.argv[2]));
validator.validateBytes(bytes).then((report) => console.log(JSON.stringify(report.issues)))
  .catch((err) => { console.error(String(err)); process.exit(2); });
"""


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A GLB's JSON document and binary chunk."""
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\x00"
    start = 28 + json_len
    return doc, data[start : start + bin_len]


def accessor(doc: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    """Accessor `index` as an (count, width) array (tightly packed views only)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_COMPONENTS[acc["componentType"]])
    width = _WIDTH[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    raw = np.frombuffer(binary, dtype, acc["count"] * width, start)
    return raw.reshape(acc["count"], width)


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def skinned_vertices(data: bytes, key: int) -> dict[str, np.ndarray]:
    """Per skinned mesh node name, its (V, 3) vertices posed by the first animation at key
    index `key` of every sampler, computed here from the file alone (glTF's skinning:
    joint matrix = the joint node's global transform @ its inverse bind matrix)."""
    doc, binary = read_glb(data)
    nodes = doc["nodes"]
    local: list[np.ndarray] = []
    for node in nodes:
        m = np.eye(4)
        m[:3, :3] = _quat_matrix(np.array(node.get("rotation", [0, 0, 0, 1])))
        m[:3, 3] = node.get("translation", [0, 0, 0])
        local.append(m)
    anim = doc["animations"][0]
    for channel in anim["channels"]:
        sampler = anim["samplers"][channel["sampler"]]
        value = accessor(doc, binary, sampler["output"])[key].astype(np.float64)
        target = channel["target"]
        if target["path"] == "rotation":
            local[target["node"]][:3, :3] = _quat_matrix(value)
        else:
            local[target["node"]][:3, 3] = value
    parent = {c: i for i, node in enumerate(nodes) for c in node.get("children", [])}

    def world(i: int) -> np.ndarray:
        return world(parent[i]) @ local[i] if i in parent else local[i]

    out = {}
    for node in nodes:
        if "skin" not in node:
            continue
        skin = doc["skins"][node["skin"]]
        ibm = accessor(doc, binary, skin["inverseBindMatrices"]).reshape(-1, 4, 4)
        joint_m = np.stack([world(j) @ ibm[k].T for k, j in enumerate(skin["joints"])])
        attrs = doc["meshes"][node["mesh"]]["primitives"][0]["attributes"]
        rest = accessor(doc, binary, attrs["POSITION"]).astype(np.float64)
        posed = np.zeros_like(rest)
        k = 0
        while f"JOINTS_{k}" in attrs:
            joints = accessor(doc, binary, attrs[f"JOINTS_{k}"]).astype(np.int64)
            weights = accessor(doc, binary, attrs[f"WEIGHTS_{k}"]).astype(np.float64)
            for slot in range(4):
                m = joint_m[joints[:, slot]]
                moved = np.einsum("vij,vj->vi", m[:, :3, :3], rest) + m[:, :3, 3]
                posed += weights[:, slot, None] * moved
            k += 1
        out[node["name"]] = posed
    return out


def validator_module() -> Path:
    """The installed gltf-validator package (npm install into build/node on first use)."""
    module = NODE_DIR / "node_modules" / "gltf-validator"
    if not module.is_dir():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.skip("npm/node not found: the Khronos glTF validator check needs them")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), VALIDATOR],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return module


def validate_glb(data: bytes, tmp_path: Path) -> dict[str, Any]:
    """The Khronos validator's issues report for `data` (numErrors, numWarnings, messages)."""
    module = validator_module()
    path = tmp_path / "checked.glb"
    path.write_bytes(data)
    done = subprocess.run(
        ["node", "-e", _VALIDATE_JS, str(module), str(path)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout)
    return report
