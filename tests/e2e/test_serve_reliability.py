"""`metahmr serve` keeps its embedded Redis alive and its data on disk: a killed Redis comes
back with its jobs, and jobs queued when the stack stops run when it starts again."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from PIL import Image

from bench.serve_stack import Served, ready, serve_subprocess
from service.client import ApiError, MetahmrClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 99, 199)).save(buf, "PNG")
    return buf.getvalue()


@contextmanager
def _serve(state: Path, log: Path, **env: str) -> Iterator[Served]:
    """`metahmr serve` (echo pipeline) on a free port with its state under `state`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    full |= {"METAHMR_PIPELINE": "echo", "METAHMR_STATE_DIR": str(state), "OMP_NUM_THREADS": "1",
             "METAHMR_HEARTBEAT_INTERVAL_S": "0.5", "METAHMR_HEARTBEAT_TTL_S": "3", **env}  # fmt: skip
    with log.open("ab") as out, serve_subprocess(full, out, timeout_s=90, args=()) as served:
        yield served  # a stack that does not start says so; its output is in `log`


def _redis_server(proc: subprocess.Popen[bytes]) -> psutil.Process:
    family = psutil.Process(proc.pid).children(recursive=True)
    return next(
        p for p in family
        if p.status() != psutil.STATUS_ZOMBIE and "redis-server" in " ".join(p.cmdline())
    )  # fmt: skip


def test_a_killed_embedded_redis_comes_back_with_its_jobs(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with _serve(tmp_path / "state", log) as (proc, url), MetahmrClient(url) as client:
        before = client.recover(_photo(), timeout_s=30)
        assert before["status"] == "succeeded"
        redis_proc = _redis_server(proc)
        redis_proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        while not ready(url):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - killed_at < 30, "not ready within 30 s of the kill"
            time.sleep(0.2)
        assert _redis_server(proc).pid != redis_proc.pid
        assert client.job(before["job_id"])["status"] == "succeeded"  # its data came back
        # Workers and API reconnect; a pooled connection that died with the old server may
        # cost one 503 (JSON, as during any outage) before it is replaced.
        deadline = time.monotonic() + 10
        while True:
            try:
                job_id = client.submit(_photo())
                break
            except ApiError as exc:
                assert exc.status == 503 and time.monotonic() < deadline, exc
                time.sleep(0.5)
        assert client.wait(job_id, timeout_s=60)["status"] == "succeeded"
        assert b"starting it again with its data" in log.read_bytes()


def test_jobs_queued_when_serve_stops_run_after_it_starts_again(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with _serve(tmp_path / "state", log, METAHMR_ECHO_DELAY_S="1") as (proc, url):
        with MetahmrClient(url) as client:
            jobs = [client.submit(_photo()) for _ in range(6)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with _serve(tmp_path / "state", log) as (proc, url), MetahmrClient(url) as client:
        finished = [client.wait(job_id, timeout_s=60) for job_id in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * 6
