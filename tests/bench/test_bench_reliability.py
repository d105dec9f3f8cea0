"""`metahmr bench reliability`: a small real run on `metahmr serve` stacks (slow), and its
section written through the docs machinery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_small_reliability_run_loses_nothing_and_writes_its_section(tmp_path: Path) -> None:
    doc, out = tmp_path / "benchmarks.md", tmp_path / "reliability.json"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "reliability", "--kills", "2", "--redis-jobs", "4",
         "--restart-jobs", "3", "--load-requests", "16", "--load-clients", "4",
         "--doc", str(doc), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["worker_kills"]["outcomes"] == {"succeeded": 2}
    assert report["poison"] == {
        "kills": 3, "status": "failed", "error_code": "worker_lost", "next_job": "succeeded"
    }  # fmt: skip
    redis_kill = report["redis_kill"]
    assert redis_kill["records_after"] == 4 and redis_kill["outcomes"] == {"succeeded": 4}
    assert redis_kill["ready_after_s"] < 30
    assert not any("not JSON" in k or k.startswith("5") and not k.startswith("503")
                   for k in redis_kill["answers_meanwhile"])  # fmt: skip
    assert report["serve_restart"]["outcomes"] == {"succeeded": 3}
    assert report["load"][0]["outcomes"] == {"succeeded": 16}
    text = doc.read_text()
    assert "## reliability" in text and "metahmr bench reliability --kills 2" in text
    assert "answers meanwhile: 200 JSON" in text and "_counts" not in text


def test_reliability_is_a_bench_command() -> None:
    from cli import build_parser

    args = build_parser().parse_args(["bench", "reliability", "--load-clients", "8,32"])
    assert args.kills == 10 and args.load_clients == "8,32" and args.doc.name == "benchmarks.md"
    assert args.load_pipeline == "echo"
