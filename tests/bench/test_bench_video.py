"""`metahmr bench video`: the report's markdown and the frame strip, from a small real run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.video import command_line, render_markdown


def _report() -> dict:
    mode = {"batch": 1, "frames": 90, "wall_s": 9.0, "frames_per_s": 10.0, "per_frame_ms": 90.0,
            "smooth_ms_per_frame": 5.0, "wall_s_all": [9.0], "tracks": 1}  # fmt: skip
    return {
        "clip": {"frames": 90, "width": 640, "height": 480, "fps": 30.0, "people": 1, "seed": 0},
        "threads": 2, "repeats": 1, "model": "v0", "command": "metahmr bench video",
        "modes": {"eager": mode, "batched": dict(mode, batch=8, frames_per_s=12.5)},
        "machine": {"platform": "linux", "cpu_count": 2, "note": "shared machine"},
    }  # fmt: skip


def test_markdown_has_one_row_per_mode() -> None:
    md = render_markdown(_report())
    assert "| eager | 1 | 10.0 | 90.0 | 5.0 |" in md
    assert "| batched | 8 | 12.5 |" in md and "`metahmr bench video`" in md


def test_command_line_reproduces_the_run() -> None:
    args = argparse.Namespace(frames=30, batch=4, repeats=2, threads=1, strip=Path("s.png"))
    assert command_line(args) == "metahmr bench video --frames 30 --batch 4 --repeats 2 --threads 1 --strip s.png"


@pytest.mark.slow
def test_bench_video_writes_its_section_and_strip(tmp_path: Path) -> None:
    from cli import main as metahmr

    doc, strip = tmp_path / "benchmarks.md", tmp_path / "strip.png"
    rc = metahmr(["bench", "video", "--frames", "6", "--batch", "3", "--repeats", "1", "--threads", "1",
                  "--doc", str(doc), "--strip", str(strip)])  # fmt: skip
    assert rc == 0
    text = doc.read_text()
    assert "## Video" in text and "| eager | 1 |" in text and "| batched | 3 |" in text
    image = np.asarray(Image.open(strip))
    assert image.ndim == 3 and image.shape[1] % 5 == 0  # five frames side by side
    assert 0 < image.shape[0] <= 2 * 480 and image.shape[1] <= 5 * 640  # each above its fit
