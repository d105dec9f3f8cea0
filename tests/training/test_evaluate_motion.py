"""The motion split: independent vs smoothed fits on synthetic clips, written by `metahmr eval
--motion` into results.json and results.md next to what is already there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.evaluate_motion import VARIANTS, accel_error


def test_accel_error_is_zero_for_the_truth_and_sees_jitter() -> None:
    t = torch.linspace(0, 1, 20)
    truth = torch.stack([t, t**2, torch.zeros_like(t)], -1)[:, None].repeat(1, 24, 1)
    truth[:, 1:] += torch.randn(1, 23, 3)  # a fixed body shape around the root
    assert accel_error(truth, truth).shape == (18,)
    assert float(accel_error(truth, truth).max()) == 0.0
    shaken = truth.clone()
    shaken[10, 5, 0] += 0.01  # 1 cm at one joint, one frame: 20 mm/frame^2 there, over 24 joints
    err = accel_error(shaken, truth)
    assert float(err[9]) == pytest.approx(20.0 / 24, rel=1e-4)
    assert float(err[8]) == pytest.approx(10.0 / 24, rel=1e-4)


@pytest.mark.slow
def test_eval_motion_writes_its_part_and_keeps_the_rest(tmp_path: Path) -> None:
    from cli import main as metahmr

    (tmp_path / "results.json").write_text(json.dumps({"rows": [1, 2]}))
    (tmp_path / "results.md").write_text("# Results\n\n## Keypoints: noisy_gt\n\ntable\n")
    rc = metahmr(["eval", "--motion", "--motion-clips", "1", "--motion-frames", "12",
                  "--out-dir", str(tmp_path)])  # fmt: skip
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rows"] == [1, 2]
    motion = results["motion"]
    assert set(motion["variants"]) == set(VARIANTS) and motion["clips"] == 1
    for row in motion["variants"].values():
        assert all(row[k] > 0 for k in ("mpjpe", "pa_mpjpe", "accel"))
    assert motion["variants"]["smoothed"]["accel"] < motion["variants"]["independent"]["accel"]
    md = (tmp_path / "results.md").read_text()
    assert "## Keypoints: noisy_gt" in md and "## Motion (video)" in md
    assert "| smoothed |" in md
