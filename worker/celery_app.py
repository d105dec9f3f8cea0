"""The Celery app for workers, and the worker process entry point.

    python -m worker.celery_app [--pool prefork|solo] [--concurrency N] [--hostname NAME]

Delivery: tasks are acknowledged after they run (`task_acks_late`) and put back when the
process running them dies (`task_reject_on_worker_lost`); one task is reserved at a time
(`worker_prefetch_multiplier = 1`). A worker that dies with its host or container cannot put
anything back, and Redis only redelivers after the visibility timeout; the heartbeat reaper
(`worker.presence.Presence`) re-queues such jobs within seconds instead.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, signals

from service.jobs import (
    PRIORITY_STEPS,
    RECOVER_TASK,
    RERUN_PRIORITY,
    JobStore,
    configure_logging,
)
from worker.config import WorkerSettings, get_worker_settings
from worker.context import stop_worker_context, worker_context
from worker.factory import check_pipeline
from worker.tasks import recover

log = logging.getLogger(__name__)


def create_celery(settings: WorkerSettings) -> Celery:
    """A Celery app bound to `settings` with the recover task registered."""
    app = Celery("metahmr", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.concurrency,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_hard_time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Re-runs (RERUN_PRIORITY) are taken before new jobs (NEW_JOB_PRIORITY).
            "priority_steps": PRIORITY_STEPS,
        },
        broker_connection_retry_on_startup=True,
        # Keep a running job going through a broker outage (a Redis restart) rather than
        # kill its process: killed, it would look like a worker death to the reaper. Its
        # message is acknowledged when Redis is back, or redelivered (a no-op) if not.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Results live in the job store, not in a Celery backend.
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        # Events let Flower show tasks and workers.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )

    def requeue(job_id: str) -> None:
        # Ahead of new jobs: this one has waited its turn already.
        app.send_task(
            RECOVER_TASK,
            args=[job_id],
            queue=settings.queue_name,
            task_id=job_id,
            priority=RERUN_PRIORITY,
        )

    app.metahmr_settings = settings  # type: ignore[attr-defined]
    app.metahmr_requeue = requeue  # type: ignore[attr-defined]
    app.task(
        name=RECOVER_TASK,
        bind=True,
        # The store itself unreachable: try again later (the task is idempotent).
        autoretry_for=(redis.ConnectionError, redis.TimeoutError),
        retry_backoff=True,
        retry_backoff_max=60,
        max_retries=10,
    )(recover)
    return app


def _connect_signals(app: Celery, settings: WorkerSettings, pool: str) -> None:
    """Process lifecycle: heartbeat from start, model loaded before the first job."""

    def start() -> None:
        worker_context(settings, app.metahmr_requeue, preload=True)  # type: ignore[attr-defined]

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_json)

    @signals.worker_process_init.connect(weak=False)
    def _child_start(**_: Any) -> None:  # prefork: each child runs tasks
        start()

    if pool == "solo":  # the main process runs the tasks (prefork: its children do)

        @signals.worker_ready.connect(weak=False)
        def _ready(**_: Any) -> None:
            start()

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_stop(**_: Any) -> None:
        stop_worker_context()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        stop_worker_context()


def healthcheck(settings: WorkerSettings) -> int:
    """Container health: some worker process on this host has a live heartbeat."""
    store = JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)
    host = socket.gethostname()
    try:
        alive = [w for w in store.live_worker_ids() if w.split(":", 1)[0] == host]
    except redis.RedisError as exc:
        log.error("healthcheck: Redis unreachable: %s", exc)
        return 1
    return 0 if alive else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.celery_app")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--hostname", default=None, help="Celery node name, e.g. w1@%%h")
    parser.add_argument(
        "--healthcheck", action="store_true", help="exit 0 if a worker on this host is beating"
    )
    args = parser.parse_args(argv)
    settings = get_worker_settings()
    if args.healthcheck:
        return healthcheck(settings)
    configure_logging(settings.log_level, settings.log_json)
    problem = check_pipeline(settings)
    if problem:
        log.error("cannot start the worker: %s", problem)
        return 3
    settings.require_redis_url()
    app = create_celery(settings)
    _connect_signals(app, settings, args.pool)
    worker_argv = [
        "worker",
        f"--pool={args.pool}",
        f"--concurrency={args.concurrency or settings.concurrency}",
        f"--loglevel={settings.log_level}",
        # Mingle/gossip sync worker state at start-up and cost seconds; nothing here uses it.
        "--without-mingle",
        "--without-gossip",
    ]
    if args.hostname:
        worker_argv.append(f"--hostname={args.hostname}")
    app.worker_main(worker_argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
