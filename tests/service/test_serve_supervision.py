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


def test_an_unusable_state_dir_is_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    stack = LocalStack(Settings(state_dir=tmp_path / "file", log_json=False))
    assert stack._start_redis() is False and stack._redis is None


def test_a_redis_left_running_by_a_killed_stack_is_stopped_first(tmp_path: Path) -> None:
    from service.embedded import EmbeddedRedis

    left = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    assert left._lock is not None and left.pid is not None
    left._lock.close()  # its stack died: the lock is gone, the server is not
    left._lock = None
    client = redis.Redis.from_url(left.url)
    client.set("kept", b"yes")
    client.close()
    again = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        assert not left.alive()  # SIGTERMed: it wrote its AOF and exited
        client = redis.Redis.from_url(again.url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        again.stop()
        left.stop()
