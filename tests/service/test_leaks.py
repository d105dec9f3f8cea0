"""What the API tells callers about itself (issue 14 item 7): /readyz does not repeat Redis's
address or socket path (the log has it), and /metrics wants a key when keys are set, unless
METAHMR_METRICS_PUBLIC opens it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "url", ["unix:///tmp/metahmr-test-no-such-dir/redis.sock", "redis://127.0.0.1:{port}/0"]
)
def test_readyz_does_not_echo_the_redis_error(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture, url: str
) -> None:
    url = url.format(port=_closed_port())
    api = make_client(redis_url=url)
    with caplog.at_level(logging.ERROR, logger="service.routes"):
        response = api.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "store_unavailable", "message": "the job store is unreachable"}
    }
    where = url.split("://", 1)[1].split("/")[0] or "/tmp/metahmr-test-no-such-dir"
    assert where not in response.text
    assert any(where in r.getMessage() for r in caplog.records)  # the operator still sees it


def test_metrics_want_a_key_when_keys_are_set(make_client: Callable[..., TestClient]) -> None:
    keyed = make_client(api_keys=["key-a"])
    for headers, code in (({}, "missing_api_key"), ({"X-API-Key": "nope"}, "bad_api_key")):
        response = keyed.get("/metrics", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == code
        assert "metahmr_http_requests" not in response.text
    answered = keyed.get("/metrics", headers={"X-API-Key": "key-a"})
    assert answered.status_code == 200 and "metahmr_queue_depth" in answered.text
    # Opened on purpose, or no keys at all: no key needed.
    assert make_client(api_keys=["key-a"], metrics_public=True).get("/metrics").status_code == 200
    assert make_client().get("/metrics").status_code == 200


def test_metrics_need_no_redis_to_check_the_key(make_client: Callable[..., TestClient]) -> None:
    api = make_client(api_keys=["key-a"], redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    response = api.get("/metrics", headers={"X-API-Key": "key-a"})
    assert response.status_code == 200 and "metahmr_http_requests" in response.text
