"""`metahmr serve` starts Redis, a worker and the API; `metahmr recover` uses them; SIGTERM
stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from bench.serve_stack import free_port, ready

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_serve_then_recover_then_sigterm_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    env |= {"METAHMR_PIPELINE": "echo", "OMP_NUM_THREADS": "1",
            "METAHMR_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready(url):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        family = psutil.Process(serve.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "redis-server" in names and "worker.celery_app" in names

        Image.new("RGB", (320, 240), (9, 99, 199)).save(tmp_path / "photo.png")
        out = tmp_path / "result.json"
        recover = subprocess.run(
            [sys.executable, "-m", "cli", "recover", str(tmp_path / "photo.png"),
             "--server", url, "--bbox", "10,20,110,220", "--steps", "3", "--out", str(out)],
            cwd=REPO, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert recover.returncode == 0, recover.stderr.decode()
        result = json.loads(out.read_text())
        assert result["image"]["width"] == 320 and result["people"][0]["bbox"] == [10, 20, 110, 220]

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=45) == 0
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()


def test_recover_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "recover", str(tmp_path / "photo.png"),
         "--server", f"http://127.0.0.1:{port}"],
        cwd=REPO, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"metahmr serve" in done.stderr


@pytest.mark.skipif((REPO / "worker" / "inference.py").exists(), reason="the model pipeline exists")
def test_serve_without_a_model_stops_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    env |= {"METAHMR_LOG_JSON": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"METAHMR_PIPELINE=echo" in done.stderr
