"""Sending jobs to the workers: a Celery task published by name, nothing else.

The API process never imports worker code (no torch in the API image); it only needs the
broker connection to publish `RECOVER_TASK` with the job id. Once the broker has the task,
the job leaves the store's unsent index (`JobStore.mark_sent`): a job created by an API that
stopped before this point is found there and sent by a worker.
"""

from __future__ import annotations

from celery import Celery

from service.config import Settings
from service.jobs import NEW_JOB_PRIORITY, RECOVER_TASK, JobStore


class TaskQueue:
    """Publishes recover tasks on the configured queue."""

    def __init__(self, settings: Settings) -> None:
        self.queue = settings.queue_name
        self.app = Celery("metahmr-api", broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=settings.publish_timeout_s,
            broker_connection_retry_on_startup=False,
            task_default_queue=settings.queue_name,
        )
        self._timeout = settings.publish_timeout_s
        self._store = JobStore.from_url(settings.require_redis_url(), ttl_s=settings.result_ttl_s)

    def send(self, job_id: str) -> None:
        """Publish one task, then mark the job sent; raises (kombu/redis errors) when the
        broker is unreachable."""
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
        self._store.mark_sent(job_id)

    def close(self) -> None:
        self.app.close()
        self._store.client.close()
