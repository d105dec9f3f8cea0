"""A TTO scope no live worker's model can run is refused at the API (issue 14 item 5): the
workers publish their model's scope in Redis; when that is unknown the job goes through and
the worker refuses it with the same advice."""

from __future__ import annotations

import json
from collections.abc import Callable

from broker_checks import stored_job_ids
from fastapi.testclient import TestClient

from service.jobs import JobStore
from service.jobs.capabilities import live_tto_scopes, publish


def _post(api: TestClient, image: bytes, scope: str) -> tuple[int, dict]:
    response = api.post(
        "/recover",
        files={"image": ("p.png", image, "image/png")},
        data={"options": json.dumps({"tto": {"scope": scope}})},
    )
    return response.status_code, response.json()


def test_a_scope_no_worker_has_is_refused(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    store.heartbeat("w1", 60)
    publish(store, "w1", ["head"])
    status, body = _post(api, make_image(), "full")
    assert status == 422 and body["error"]["code"] == "invalid_options"
    assert "'head'" in body["error"]["message"] and "omit tto.scope" in body["error"]["message"]
    assert _post(api, make_image(), "head")[0] == 202
    # A second model that can: the scope is available again.
    store.heartbeat("w2", 60)
    publish(store, "w2", ["full"])
    assert _post(api, make_image(), "full")[0] == 202
    assert len(stored_job_ids(store.client)) == 2


def test_unknown_capabilities_let_the_worker_decide(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    assert live_tto_scopes(store) is None  # no worker at all
    assert _post(api, make_image(), "full")[0] == 202
    store.heartbeat("w1", 60)
    publish(store, "w1", ["head"])
    store.heartbeat("echo", 60)  # a live worker that published nothing (no model)
    assert live_tto_scopes(store) is None
    assert _post(api, make_image(), "full")[0] == 202


def test_dead_workers_entries_are_dropped(store: JobStore) -> None:
    store.heartbeat("alive", 60)
    publish(store, "alive", ["head"])
    publish(store, "gone", ["full"])  # published, but no heartbeat
    assert live_tto_scopes(store) == {"head"}
    assert store.client.hkeys("metahmr:models") == [b"alive"]
