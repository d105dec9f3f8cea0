"""The broker's queue as a batching task reads it: the task that starts a job takes the other
jobs of its batch from the queue it came from (the recover tasks waiting there), so that the
broker's queue is the only queue of jobs waiting to run.

Each message is taken unacknowledged (kombu keeps it aside, in Redis), its job claimed in the
store (queued -> running for this worker: from then on the heartbeat reaper answers for it),
and only then acknowledged. A message whose job is not waiting (running, finished, canceled,
expired, or already in this batch) is acknowledged and dropped: its task would have been a
no-op. Should the process die between taking a message and acknowledging it, kombu puts the
message back once the broker's visibility timeout has passed, as for any message a dead
worker had reserved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kombu import Connection, Queue
from kombu.message import Message

from service.jobs import PRIORITY_STEPS, RECOVER_TASK

log = logging.getLogger(__name__)


class WaitingTasks:
    """The recover tasks waiting in one broker queue; one connection, opened on first use
    (a process's own: make one after fork)."""

    def __init__(self, broker_url: str, queue: str, visibility_timeout_s: float) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self._connection: Connection | None = None

    def take(self, claim: Callable[[str], bool], limit: int) -> list[str]:
        """Claim the jobs of up to `limit` waiting tasks with `claim` (True: claimed), in the
        order the workers' consumers take them (jobs run again first, then oldest first).
        Returns the claimed ids, every one of them: an error (the broker or the store
        unreachable) ends the taking, logged, and a message stays taken only once its job is
        claimed."""
        claimed: list[str] = []
        try:
            queue = Queue(self.queue, channel=self._channel())
            while len(claimed) < limit:
                message = queue.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                job_id = recover_job_id(message)
                if job_id is None:
                    log.warning("dropped a message in the recover queue that is not a recover task")
                elif job_id not in claimed:  # (a job sent twice, both messages here: once)
                    try:
                        if claim(job_id):
                            claimed.append(job_id)
                    except BaseException:
                        message.requeue()  # not claimed: its job waits for another task
                        raise
                message.ack()
        except Exception:
            log.warning("could not take waiting tasks from the broker", exc_info=True)
            self.close()
        return claimed

    def _channel(self) -> Any:
        if self._connection is None:
            self._connection = Connection(
                self.broker_url,
                connect_timeout=5,
                transport_options={
                    "priority_steps": PRIORITY_STEPS,
                    "visibility_timeout": self.visibility_timeout_s,
                },
            )
        return self._connection.default_channel

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken: nothing more to release
                log.debug("closing the broker connection failed", exc_info=True)


def recover_job_id(message: Message) -> str | None:
    """The job id of a recover task message (Celery's message protocol 2: the task name in
    the headers, the body [args, kwargs, embed]), or None for any other message."""
    if message.headers.get("task") != RECOVER_TASK:
        return None
    try:
        body = message.decode()
    except Exception:  # not JSON (another serializer), or corrupt: not ours to run
        return None
    args = body[0] if isinstance(body, list | tuple) and body else None
    if isinstance(args, list | tuple) and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return None
