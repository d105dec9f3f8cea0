"""`metahmr recover` turns its flags into request options; `metahmr serve` refuses a Redis
it cannot reach."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.commands import recover_options, register
from service.config import Settings
from service.serve import LocalStack


def _parser() -> argparse.ArgumentParser:
    """A root parser with only this package's sub-commands (the top-level CLI adds the rest)."""
    parser = argparse.ArgumentParser(prog="metahmr")
    register(parser.add_subparsers(dest="command", required=True), {})
    return parser


def _options(*argv: str) -> dict:
    return recover_options(_parser().parse_args(["recover", "photo.jpg", *argv]))


def test_flags_become_options(tmp_path: Path) -> None:
    kp = {"format": "coco17", "points": [[1.0, 2.0, 0.5]] * 17}
    (tmp_path / "kp.json").write_text(json.dumps(kp))
    options = _options(
        "--bbox", "1,2,30,40", "--keypoints", str(tmp_path / "kp.json"),
        "--steps", "5", "--overlay", "o.png", "--mesh", "m.glb", "--focal-length", "900",
    )  # fmt: skip
    assert options == {
        "people": [{"keypoints": kp, "bbox": [1.0, 2.0, 30.0, 40.0]}],
        "focal_length": 900.0,
        "tto": {"steps": 5},
        "return": ["mesh", "overlay"],
    }
    assert _options() == {}


def test_keypoints_file_may_list_several_people(tmp_path: Path) -> None:
    kp = {"format": "openpose25", "points": [[1.0, 2.0, 0.5]] * 25}
    (tmp_path / "kp.json").write_text(json.dumps([kp, kp]))
    assert _options("--keypoints", str(tmp_path / "kp.json"))["people"] == [{"keypoints": kp}] * 2
    with pytest.raises(ValueError, match="one person"):
        _options("--keypoints", str(tmp_path / "kp.json"), "--bbox", "0,0,1,1")


def test_bad_bbox_flag_is_explained() -> None:
    with pytest.raises(ValueError, match="x0,y0,x1,y1"):
        _options("--bbox", "1,2,3")


def test_serve_refuses_an_unreachable_redis(tmp_path: Path) -> None:
    stack = LocalStack(Settings(redis_url=f"unix://{tmp_path}/none.sock"), port=1)
    assert stack.run() == 1
