"""`metahmr serve`: the whole stack on one machine, started and stopped together.

Redis (embedded, unless METAHMR_REDIS_URL names one), N worker processes, and the API in
this process. Ctrl-C or SIGTERM stops the API, then the workers (letting a running job
finish, up to a grace period), then Redis. A worker that dies is started again.

The embedded Redis keeps its data in `Settings.state_dir` (append-only file), so jobs queued
when the stack stops run when it starts again. If it dies, it is started again with its data
(the API answers 503 meanwhile, workers reconnect); if it cannot be brought back, `serve`
stops and exits with status 1 rather than serve an API whose store is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from service.config import Settings
from service.embedded import EmbeddedRedis
from service.jobs import JobStore

log = logging.getLogger(__name__)
# Exit status of `python -m worker.celery_app` when its pipeline cannot run: do not restart.
WORKER_CONFIG_ERROR = 3
# The embedded Redis is restarted at most this many times within REDIS_RESTART_WINDOW_S;
# past that something is wrong with its data or the disk, and `serve` stops.
REDIS_RESTARTS = 5
REDIS_RESTART_WINDOW_S = 300.0


@dataclass
class LocalStack:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    startup_timeout_s: float = 120.0
    stop_grace_s: float = 30.0
    _redis: EmbeddedRedis | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _env: dict[str, str] = field(default_factory=dict)
    _given_up: set[int] = field(default_factory=set)
    _redis_restarts: list[float] = field(default_factory=list)
    _server: Any = None  # uvicorn.Server while serving
    failure: str | None = None  # why the stack stopped on its own (then run() returns 1)

    def run(self) -> int:
        """Start everything, serve until a signal, stop everything. Returns an exit code."""
        # uvicorn handles SIGTERM while serving and raises it again once stopped; outside
        # that window too, turn it into an exception so the finally block cleans up.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            if not self._start_redis():
                return 1
            if not self._start_workers():
                return 1
            threading.Thread(target=self._watch, daemon=True).start()
            return self._serve_api()
        except (KeyboardInterrupt, _Terminated):
            log.info("stopping")
            return 0
        finally:
            self.stop()
            signal.signal(signal.SIGTERM, previous)

    def _start_redis(self) -> bool:
        url = self.settings.redis_url
        if url is None:
            directory = self.settings.state_dir / "redis"
            try:
                self._redis = EmbeddedRedis(directory, appendonly=True).start()
            except (RuntimeError, OSError) as exc:
                log.error("cannot start the embedded Redis in %s (METAHMR_STATE_DIR): %s",
                          directory, exc)  # fmt: skip
                return False
            url = self._redis.url
            self.settings = self.settings.model_copy(update={"redis_url": url})
        else:
            try:
                JobStore.from_url(url, ttl_s=60).ping()
            except redis.RedisError as exc:
                log.error(
                    "cannot reach Redis at METAHMR_REDIS_URL=%s (%s); unset it to use "
                    "an embedded one",
                    url,
                    exc,
                )
                return False
        self._env = dict(os.environ, METAHMR_REDIS_URL=url)
        # Each worker sizes its threads by the processes sharing the cores (worker.config).
        self._env.setdefault("METAHMR_WORKERS_ON_HOST", str(self.workers))
        return True

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "worker.celery_app", f"--hostname=worker{index}@%h"]
        return subprocess.Popen(cmd, env=self._env)

    def _start_workers(self) -> bool:
        """Start the workers and wait for their heartbeats; False (logged) if one fails."""
        self._procs = [self._spawn(i) for i in range(self.workers)]
        store = JobStore.from_url(self.settings.require_redis_url(), ttl_s=60)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    log.error(
                        "a worker exited at start (status %s); see its log above", proc.returncode
                    )
                    return False
            try:
                live = store.live_workers()
            except redis.RedisError as exc:
                log.error("lost Redis while starting: %s", exc)
                return False
            if live >= self.workers:
                log.info("%d worker(s) ready", self.workers)
                return True
            time.sleep(0.2)
        log.error("workers did not report ready within %.0f s", self.startup_timeout_s)
        return False

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            self._watch_redis()
            self._watch_workers()

    def _watch_redis(self) -> None:
        """Start the embedded Redis again if it died; stop the stack if it cannot be."""
        embedded = self._redis
        if embedded is None or embedded.alive() or self._stopping.is_set():
            return
        now = time.monotonic()
        self._redis_restarts = [t for t in self._redis_restarts if now - t < REDIS_RESTART_WINDOW_S]
        if len(self._redis_restarts) >= REDIS_RESTARTS:
            self._fail(
                f"the embedded Redis died {len(self._redis_restarts) + 1} times within "
                f"{REDIS_RESTART_WINDOW_S:.0f} s; see {embedded.directory}/redis.log"
            )
            return
        self._redis_restarts.append(now)
        log.warning("the embedded Redis exited (status %s); starting it again with its data",
                    embedded.exit_status())  # fmt: skip
        try:
            embedded.restart()
        except RuntimeError as exc:
            self._fail(f"the embedded Redis did not come back: {exc}")
            return
        log.info("embedded Redis back after %.1f s", time.monotonic() - now)

    def _fail(self, reason: str) -> None:
        log.error("%s; stopping", reason)
        self.failure = reason
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True

    def _watch_workers(self) -> None:
        if not self._stopping.is_set():
            for i, proc in enumerate(self._procs):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                if code == WORKER_CONFIG_ERROR:
                    if i not in self._given_up:
                        log.error("worker %d cannot run its pipeline; not restarting it", i)
                        self._given_up.add(i)
                    continue
                log.warning("worker %d exited (status %s); starting it again", i, code)
                self._procs[i] = self._spawn(i)

    def _serve_api(self) -> int:
        import uvicorn

        from service.main import create_app

        if self.failure is not None:
            return 1
        config = api_server_config(create_app(self.settings), self.host, self.port)
        server = uvicorn.Server(config)
        self._server = server
        log.info("serving on http://%s:%d (docs at /docs)", self.host, self.port)
        server.run()
        return 0 if server.started and self.failure is None else 1

    def stop(self) -> None:
        self._stopping.set()
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # Celery: warm shutdown, running job finishes
        deadline = time.monotonic() + self.stop_grace_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._procs = []
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


def api_server_config(app: Any, host: str, port: int) -> Any:
    """uvicorn's config for the API. The app reads X-Forwarded-For itself, from
    METAHMR_TRUSTED_PROXIES only (`service.deps.client_address`); uvicorn's own proxy
    headers would let any local process pick its rate-limit address, whatever the setting."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_config=None, proxy_headers=False)


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)
