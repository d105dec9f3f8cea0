"""`metahmr serve`'s watch over its embedded Redis, on a real redis-server: a dead one is
started again with its data; one that cannot come back stops the stack with a reason."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from service.config import Settings
from service.serve import REDIS_RESTARTS, LocalStack


def _kill(stack: LocalStack) -> None:
    assert stack._redis is not None and stack._redis.pid is not None
    os.kill(stack._redis.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while stack._redis.alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_dead_embedded_redis_is_started_again_with_its_data(tmp_path: Path) -> None:
    stack = LocalStack(Settings(state_dir=tmp_path, log_json=False))
    assert stack._start_redis()
    try:
        client = redis.Redis.from_url(stack.settings.require_redis_url())
        client.set("kept", b"yes")
        _kill(stack)
        stack._watch_redis()
        assert stack.failure is None and client.get("kept") == b"yes"
    finally:
        stack.stop()


def test_serve_stops_with_a_reason_when_redis_cannot_come_back(tmp_path: Path) -> None:
    stack = LocalStack(Settings(state_dir=tmp_path, log_json=False))
    assert stack._start_redis()
    try:
        _kill(stack)
        (tmp_path / "redis" / "redis.conf").write_text("this is not a redis config\n")
        stack._watch_redis()
        assert stack.failure is not None and "did not come back" in stack.failure
        assert stack._stopping.is_set()
        assert stack._serve_api() == 1  # never serves an API whose store is gone
    finally:
        stack.stop()


def test_serve_gives_up_on_a_redis_that_keeps_dying(tmp_path: Path) -> None:
    stack = LocalStack(Settings(state_dir=tmp_path, log_json=False))
    assert stack._start_redis()
    try:
        for _ in range(REDIS_RESTARTS):
            _kill(stack)
            stack._watch_redis()
            assert stack.failure is None
        _kill(stack)
        stack._watch_redis()
        assert stack.failure is not None and "died" in stack.failure
    finally:
        stack.stop()
