"""`metahmr bench service`'s arithmetic and report, without a stack; the module stays slim."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.service import Sample, percentile, render_markdown, summarise

REPO = Path(__file__).resolve().parents[2]


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_overhead_is_latency_minus_compute_per_job() -> None:
    samples = [Sample(latency_ms=110.0 + i, submit_ms=5.0, compute_ms=100.0) for i in range(5)]
    summary = summarise(samples, wall_s=0.5, clients=1)
    assert summary["images_per_s"] == pytest.approx(10.0)
    assert summary["latency_p50_ms"] == pytest.approx(112.0)
    assert summary["overhead_p50_ms"] == pytest.approx(12.0)
    assert summary["overhead_ratio_p50"] == pytest.approx(0.12)


def test_markdown_names_command_machine_model_and_verdict() -> None:
    mode = summarise([Sample(110.0, 5.0, 100.0)], wall_s=0.11, clients=1)
    report = {
        "command": "metahmr bench service --requests 1",
        "modes": {"sequential": mode, "concurrent": {**mode, "clients": 8}},
        "meets_target": True,
        "target_overhead_ratio": 0.2,
        "model": {"name": "metahmr", "version": "v1", "tto_scope": "head", "body_model": "x"},
        "image": {"file": "example.jpg", "width": 640, "height": 480},
        "people": 1,
        "poll_interval_ms": 10.0,
        "warmup": 2,
        "workers": 1,
        "pipeline": "onnx",
        "worker_env": {},
        "machine": {"platform": "linux", "cpu_count": 16, "note": "shared machine"},
    }
    text = render_markdown(report)
    assert "`metahmr bench service --requests 1`" in text
    assert "16 cores" in text and "version `v1`" in text and "every 10 ms" in text
    assert "| sequential | 1 | 1 | 110.0 |" in text and "| concurrent | 1 | 8 |" in text
    assert "(sequential): meets it (10.0 ms on 100.0 ms, 10%)" in text
