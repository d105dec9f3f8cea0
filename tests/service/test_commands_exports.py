"""`metahmr recover`'s export flags (--animation, --bvh, --smpl-npz) ask for the motion
exports, and the job store serves their files."""

from __future__ import annotations

import argparse

from service.commands import recover_options, register
from service.contract import EXPORT_FILES, RecoverOptions
from service.jobs.records import FILE_MEDIA_TYPES, FILE_NAMES


def _options(*argv: str) -> dict:
    parser = argparse.ArgumentParser(prog="metahmr")
    register(parser.add_subparsers(dest="command", required=True), {})
    return recover_options(parser.parse_args(["recover", "photo.jpg", *argv]))


def test_export_flags_ask_for_their_files() -> None:
    options = _options("--animation", "a.glb", "--bvh", "a.bvh", "--smpl-npz", "s.npz")
    assert options == {"return": ["animation", "bvh", "smpl_npz"]}
    assert _options("--mesh", "m.glb", "--bvh", "a.bvh") == {"return": ["mesh", "bvh"]}
    assert "return" not in _options()


def test_export_names_are_valid_returns_and_served_files() -> None:
    parsed = RecoverOptions.model_validate({"return": list(EXPORT_FILES)})
    assert parsed.return_ == ["animation", "bvh", "smpl_npz"]
    assert set(EXPORT_FILES.values()) <= set(FILE_NAMES)
    assert FILE_MEDIA_TYPES["animation.glb"] == "model/gltf-binary"
    assert {name: FILE_MEDIA_TYPES[name] for name in ("animation.bvh", "smpl.npz")} == {
        "animation.bvh": "text/plain", "smpl.npz": "application/octet-stream",
    }  # fmt: skip
