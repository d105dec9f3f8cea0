"""What the tests read of Redis directly: the Celery broker's lists (kombu's Redis transport
layout, which the service does not rely on) and the job store's job hashes."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

PRIORITY_LISTS = 10  # kombu: one list per priority step, name + '\x06\x16' + step


def _lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}\x06\x16{p}" for p in range(1, PRIORITY_LISTS)]


def broker_messages(client: Any, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis: kombu keeps a queue as a list named after
    it, plus one list per priority step."""
    pipe = client.pipeline(transaction=False)
    for name in _lists(queue):
        pipe.llen(name)
    return int(sum(pipe.execute()))


def published_job_ids(client: Any, queue: str) -> list[str]:
    """The job ids of the tasks waiting in `queue`, in the order a consumer takes them
    (priority lists in order, each from its right end); kombu stores a message as JSON with
    a base64 body (Celery's [args, kwargs, embed])."""
    ids = []
    for name in _lists(queue):
        for raw in reversed(client.lrange(name, 0, -1)):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            ids.append(str(body[0][0]))
    return ids


def stored_job_ids(client: Any, prefix: str = "metahmr:") -> set[str]:
    """Ids of the jobs in the store (its job hashes, not their images or files)."""
    start = len(prefix) + len("job:")
    return {
        k.decode()[start:]
        for k in client.scan_iter(f"{prefix}job:*")
        if ":" not in k.decode()[start:]
    }


def send_as_the_api(redis_url: str, store: Any, job_ids: Sequence[str]) -> None:
    """Publish the recover tasks of jobs already in `store`, as the API does."""
    from service.config import Settings
    from service.queue import TaskQueue

    queue = TaskQueue(Settings(redis_url=redis_url), store)
    try:
        for job_id in job_ids:
            queue.send(job_id)
    finally:
        queue.close()
