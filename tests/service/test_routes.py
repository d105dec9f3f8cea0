"""The HTTP contract of ARCHITECTURE.md §5 on the happy paths: submit, poll, files, cancel,
delete, health, readiness, metrics, docs, API keys and rate limits."""

from __future__ import annotations

import json
from collections.abc import Callable

from broker_checks import broker_messages
from fastapi.testclient import TestClient

from service.config import Settings
from service.jobs import JobError, JobStatus, JobStore
from worker.broker import WaitingTasks


def _submit(client: TestClient, image: bytes, options: dict | None = None, **headers: str) -> dict:
    data = {"options": json.dumps(options)} if options is not None else None
    response = client.post(
        "/recover", files={"image": ("p.jpg", image, "image/jpeg")}, data=data, headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_submit_answers_202_with_location_and_stores_the_job(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    options = {"people": [{"bbox": [1, 2, 30, 40]}], "return": ["overlay"], "tto": {"steps": 5}}
    response = api.post(
        "/recover",
        files={"image": ("p.jpg", make_image(64, 48, "JPEG"), "image/jpeg")},
        data={"options": json.dumps(options)},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == body["links"]["self"] == f"/jobs/{body['job_id']}"
    record = store.get(body["job_id"])
    assert record is not None
    assert record.options["people"][0]["bbox"] == [1.0, 2.0, 30.0, 40.0]
    assert record.options["tto"] == {"steps": 5, "scope": None}
    assert record.image == {
        "format": "JPEG",
        "width": 64,
        "height": 48,
        "bytes": len(store.image(body["job_id"]) or b""),
        "orientation": 1,
    }
    assert broker_messages(store.client, "metahmr") == 1


def test_job_view_follows_the_worker(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    job_id = _submit(api, make_image(), {"return": ["mesh"]})["job_id"]
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "queued" and view["progress"] is None and view["result"] is None
    store.claim(job_id, "w1")
    store.set_progress(job_id, "w1", "tto", 4, 14)
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "running"
    assert view["progress"] == {"stage": "tto", "step": 4, "total": 14}
    assert api.get(f"/jobs/{job_id}/mesh.glb").status_code == 409
    store.put_files(job_id, {"mesh.glb": b"glTF-binary", "mesh.obj": b"v 0 0 0\n"})
    store.finish(
        job_id, "w1", result={"people": [{"bbox": [0, 0, 1, 1]}]}, files=("mesh.glb", "mesh.obj")
    )
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "succeeded" and view["result"] == {"people": [{"bbox": [0, 0, 1, 1]}]}
    assert view["links"]["files"] == {
        "mesh.glb": f"/jobs/{job_id}/mesh.glb",
        "mesh.obj": f"/jobs/{job_id}/mesh.obj",
    }
    glb = api.get(f"/jobs/{job_id}/mesh.glb")
    assert glb.status_code == 200 and glb.content == b"glTF-binary"
    assert glb.headers["content-type"] == "model/gltf-binary"
    missing = api.get(f"/jobs/{job_id}/overlay.png")
    assert missing.status_code == 404 and "options.return" in missing.json()["error"]["message"]
    assert api.get(f"/jobs/{job_id}/secrets.txt").status_code == 404


def test_failed_job_shows_its_error(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    job_id = _submit(api, make_image())["job_id"]
    store.claim(job_id, "w1")
    store.finish(job_id, "w1", error=JobError("bad_input", "scope full does not match head"))
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "failed"
    assert view["error"] == {"code": "bad_input", "message": "scope full does not match head"}


def test_delete_cancels_a_pending_job_then_removes_it(
    api: TestClient, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    job_id = _submit(api, make_image())["job_id"]
    canceled = api.delete(f"/jobs/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert store.claim(job_id, "w1")[0] is False  # a worker will not run it
    assert api.delete(f"/jobs/{job_id}").status_code == 204
    assert api.get(f"/jobs/{job_id}").status_code == 404


def test_health_readiness_and_docs(api: TestClient, store: JobStore) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    not_ready = api.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "no_worker"
    store.heartbeat("w1", 30)
    assert api.get("/readyz").json() == {"status": "ready", "workers": 1}
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/recover"]["post"]["requestBody"]["content"]
    assert {
        "/recover",
        "/jobs/{job_id}",
        "/jobs/{job_id}/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])


def test_metrics_report_requests_queue_and_jobs(
    api: TestClient, store: JobStore, settings: Settings, make_image: Callable[..., bytes]
) -> None:
    job = _submit(api, make_image())
    api.get("/jobs/not-a-job")
    store.record_finished(JobStatus.SUCCEEDED, 0.7, tto_steps=(14,))
    text = api.get("/metrics").text
    assert 'metahmr_http_requests_total{method="POST",route="/recover",status="202"} 1.0' in text
    assert (
        'metahmr_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0' in text
    )
    assert "metahmr_http_request_duration_seconds_bucket" in text
    assert "metahmr_queue_depth 1.0" in text
    # The depth is the broker's queue: a job a worker took (a batch's other job) leaves it.
    waiting = WaitingTasks(settings.broker_url, settings.queue_name, 60)
    assert waiting.take(lambda job_id: store.claim(job_id, "worker-1")[0], 4) == [job["job_id"]]
    waiting.close()
    assert "metahmr_queue_depth 0.0" in api.get("/metrics").text
    assert 'metahmr_jobs_finished_total{status="succeeded"} 1.0' in text
    assert 'metahmr_job_duration_seconds_bucket{le="1.0"} 1.0' in text
    assert (
        'metahmr_tto_steps_bucket{le="15.0"} 1.0' in text and "metahmr_tto_steps_sum 14.0" in text
    )


def test_api_keys_are_required_when_configured(
    make_client: Callable[..., TestClient], make_image: Callable[..., bytes]
) -> None:
    client = make_client(api_keys=["secret-1", "secret-2"])
    for headers, code in (({}, "missing_api_key"), ({"X-API-Key": "guess"}, "bad_api_key")):
        response = client.post(
            "/recover", files={"image": ("p.png", make_image())}, headers=headers
        )
        assert response.status_code == 401 and response.json()["error"]["code"] == code
        assert (
            client.get("/jobs/00000000-0000-4000-8000-000000000000", headers=headers).status_code
            == 401
        )
    job = _submit(client, make_image(), **{"X-API-Key": "secret-2"})
    assert client.get(job["links"]["self"], headers={"X-API-Key": "secret-2"}).status_code == 200
    # Another key's job: 404 (test_ownership.py).
    assert client.get(job["links"]["self"], headers={"X-API-Key": "secret-1"}).status_code == 404
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_rate_limit_is_per_key(
    make_client: Callable[..., TestClient], make_image: Callable[..., bytes], store: JobStore
) -> None:
    client = make_client(api_keys=["a", "b"], rate_limit_per_min=2)
    for _ in range(2):
        _submit(client, make_image(), **{"X-API-Key": "a"})
    limited = client.post(
        "/recover", files={"image": ("p.png", make_image())}, headers={"X-API-Key": "a"}
    )
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert broker_messages(store.client, "metahmr") == 2
    _submit(client, make_image(), **{"X-API-Key": "b"})  # another key has its own budget
