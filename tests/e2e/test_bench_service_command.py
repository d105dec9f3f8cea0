"""`metahmr bench service` end to end with the echo pipeline: it starts the stack as
`metahmr serve` does, times both modes and writes its JSON and its docs section."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli import main as metahmr

pytestmark = pytest.mark.e2e


def test_bench_service_on_echo_writes_json_and_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("METAHMR_")]:
        monkeypatch.delenv(name)  # an embedded Redis, default settings
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    doc, out = tmp_path / "benchmarks.md", tmp_path / "service.json"
    doc.write_text("# Benchmarks\n\n## TTO\n\nkept\n")
    rc = metahmr([
        "bench", "service", "--pipeline", "echo", "--requests", "4", "--clients", "2",
        "--poll-ms", "5", "--json", str(out), "--doc", str(doc),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "echo" and report["pipeline"] == "echo"
    assert report["image"] == {
        "file": "example.jpg", "width": 640, "height": 480, "focal_length": 800.0,
    }  # fmt: skip
    assert report["people"] == 1 and report["poll_interval_ms"] == 5.0
    assert report["machine"]["cpu_count"] == os.cpu_count()
    assert isinstance(report["meets_target"], bool)
    for name, clients in (("sequential", 1), ("concurrent", 2)):
        mode = report["modes"][name]
        assert mode["requests"] == 4 and mode["clients"] == clients
        assert 0 < mode["latency_p50_ms"] <= mode["latency_p95_ms"]
        assert 0 < mode["compute_p50_ms"] < mode["latency_p50_ms"]
        assert mode["overhead_p50_ms"] > 0 and mode["images_per_s"] > 0
        assert mode["overhead_ratio_p50"] == pytest.approx(
            mode["overhead_p50_ms"] / mode["compute_p50_ms"]
        )
    text = doc.read_text()
    assert "## TTO\n\nkept" in text  # other sections are left alone
    section = text[text.index("## service (echo)") :]
    assert "`metahmr bench service --requests 4 --clients 2 --pipeline echo" in section
    assert f"{os.cpu_count()} cores" in section and "version `diagnostics`" in section
    assert "| sequential | 4 | 1 |" in section and "| concurrent | 4 | 2 |" in section
    assert "every 5 ms" in section
