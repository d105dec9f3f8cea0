"""Sending jobs to the workers: a Celery task published by name; and how many wait.

The API process never imports worker code (no torch in the API image); it only needs the
broker connection to publish `RECOVER_TASK` with the job id. Once the broker has the task,
the job leaves the store's unsent index (`JobStore.mark_sent`): a job created by an API that
stopped before this point is found there and sent by a worker.

The broker's queue is the one queue of jobs waiting to run: a worker that batches takes its
batch's other jobs from it too (`worker.broker`), so `depth` counts what no worker has taken.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import ChannelError

from service.config import Settings
from service.jobs import NEW_JOB_PRIORITY, PRIORITY_STEPS, RECOVER_TASK, JobStore

log = logging.getLogger(__name__)


class TaskQueue:
    """Publishes recover tasks on the configured queue; `store` is the API's job store."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.queue = settings.queue_name
        self.app = Celery("metahmr-api", broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=settings.publish_timeout_s,
            broker_connection_retry_on_startup=False,
            task_default_queue=settings.queue_name,
            broker_transport_options={"priority_steps": PRIORITY_STEPS},
        )
        self._timeout = settings.publish_timeout_s
        self._store = store

    def send(self, job_id: str) -> None:
        """Publish one task, then mark the job sent; raises (kombu/redis errors) when the
        broker is unreachable. Once published the job is queued whatever follows: if marking
        it fails, it stays in the unsent index and a worker's reaper sends it again (a
        duplicate task for a job already taken is a no-op)."""
        self.app.send_task(
            RECOVER_TASK,
            args=[job_id],
            queue=self.queue,
            task_id=job_id,
            # Behind jobs that run again (RERUN_PRIORITY), e.g. after their worker died.
            priority=NEW_JOB_PRIORITY,
            retry=True,
            # A short retry budget: a request waits at most about publish_timeout_s.
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.0,
                "interval_step": self._timeout / 4,
                "interval_max": self._timeout / 4,
            },
        )
        try:
            self._store.mark_sent(job_id)
        except Exception:
            log.warning("job sent, but not marked sent; a worker may send it again", exc_info=True)

    def depth(self) -> int:
        """Recover tasks waiting in the broker queue, every priority (none taken by a worker
        yet); raises when the broker is unreachable."""
        with self.app.connection_for_read() as conn:
            try:
                _, count, _ = conn.default_channel.queue_declare(queue=self.queue, passive=True)
            except ChannelError:  # Redis drops an empty list: no queue is an empty queue
                return 0
        return int(count)

    def close(self) -> None:
        self.app.close()
