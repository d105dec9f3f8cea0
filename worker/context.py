"""A worker process's state: its `WorkerContext` (store connection, identity, heartbeat, the
pipeline loaded once, the broker queue a batch reads), one per process (`worker_context`,
keyed by pid: a forked child makes its own)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from service.jobs import JobStore
from worker.broker import WaitingTasks
from worker.capabilities import publish_pipeline
from worker.config import WorkerSettings
from worker.factory import load_pipeline
from worker.pipeline import Pipeline
from worker.presence import ActiveJobs, Presence

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """Per-process state: settings, store, identity, heartbeat and the cached pipeline."""

    settings: WorkerSettings
    store: JobStore
    worker_id: str
    presence: Presence | None = None
    active: ActiveJobs = field(default_factory=ActiveJobs, repr=False)
    _pipeline: Pipeline | None = field(default=None, repr=False)
    _waiting: WaitingTasks | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pipeline(self) -> Pipeline:
        """The pipeline, loaded on first use and kept for the life of the process."""
        with self._lock:
            if self._pipeline is None:
                start = time.perf_counter()
                self._pipeline = load_pipeline(self.settings)
                publish_pipeline(self.store, self.worker_id, self._pipeline)
                log.info(
                    "pipeline %s loaded in %.1f s",
                    self._pipeline.name,
                    time.perf_counter() - start,
                )
            return self._pipeline

    def waiting(self) -> WaitingTasks:
        """The broker queue's waiting tasks (a batch's other jobs), connected on first use."""
        if self._waiting is None:
            s = self.settings
            self._waiting = WaitingTasks(s.broker_url, s.queue_name, s.visibility_timeout_s)
        return self._waiting

    def close(self) -> None:
        if self.presence is not None:
            self.presence.stop()
        if self._waiting is not None:
            self._waiting.close()


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"



_contexts: dict[int, WorkerContext] = {}
_contexts_lock = threading.Lock()


def worker_context(
    settings: WorkerSettings, requeue: Callable[[str], None], *, preload: bool = False
) -> WorkerContext:
    """This process's context, created on first use. Keyed by pid: a forked child must not
    reuse its parent's identity or heartbeat thread. With `preload`, the pipeline is loaded
    before the first heartbeat, so a worker only looks ready once it can run jobs."""
    pid = os.getpid()
    with _contexts_lock:
        ctx = _contexts.get(pid)
        if ctx is None:
            store = JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)
            ctx = WorkerContext(settings=settings, store=store, worker_id=new_worker_id())
            if preload:
                try:
                    ctx.pipeline()
                except Exception:
                    log.exception("pipeline failed to load; its jobs will fail until fixed")
            ctx.presence = Presence(store, ctx.worker_id, settings, requeue, ctx.active)
            ctx.presence.start()
            _contexts[pid] = ctx
            log.info("worker %s up (pipeline %s)", ctx.worker_id, settings.pipeline)
        return ctx


def stop_worker_context() -> None:
    with _contexts_lock:
        ctx = _contexts.pop(os.getpid(), None)
    if ctx is not None:
        ctx.close()
