"""What the tests read of the Celery broker itself (kombu's Redis transport layout, which
the service does not rely on)."""

from __future__ import annotations

from typing import Any


def broker_messages(client: Any, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis: kombu keeps a queue as a list named after
    it, plus one list per priority step (name + '\\x06\\x16' + step)."""
    names = [queue] + [f"{queue}\x06\x16{p}" for p in range(1, 10)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return int(sum(pipe.execute()))
