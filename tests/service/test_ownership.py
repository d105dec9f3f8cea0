"""Jobs belong to the API key that created them (issue 14 item 1, OWASP API #1): another key
gets the same 404 as for a missing job on GET, files and DELETE; jobs created without keys
stay readable without one."""

from __future__ import annotations

from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from service.jobs import JobStore


def _submit(api: TestClient, image: bytes, key: str | None = None) -> str:
    headers = {"X-API-Key": key} if key else {}
    response = api.post("/recover", files={"image": ("x.png", image, "image/png")}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _finish_with_overlay(store: JobStore, job_id: str, overlay: bytes) -> None:
    assert store.claim(job_id, "w1")[0]
    store.put_files(job_id, {"overlay.png": overlay})
    assert store.finish(job_id, "w1", result={"people": []}, files=("overlay.png",))


def test_another_keys_job_answers_like_a_missing_one(
    make_client: Callable[..., TestClient], store: JobStore, make_image: Callable[..., bytes]
) -> None:
    api = make_client(api_keys=["key-a", "key-b"])
    job_id = _submit(api, make_image(), "key-a")
    _finish_with_overlay(store, job_id, make_image(8, 8))
    a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}

    assert api.get(f"/jobs/{job_id}", headers=a).status_code == 200
    assert api.get(f"/jobs/{job_id}/overlay.png", headers=a).content == make_image(8, 8)
    seen_by_b = [
        api.get(f"/jobs/{job_id}", headers=b),
        api.get(f"/jobs/{job_id}/overlay.png", headers=b),
        api.delete(f"/jobs/{job_id}", headers=b),
    ]
    # b's DELETE changed nothing: a still reads the job and its file.
    assert api.get(f"/jobs/{job_id}", headers=a).json()["status"] == "succeeded"
    assert api.get(f"/jobs/{job_id}/overlay.png", headers=a).status_code == 200

    assert api.delete(f"/jobs/{job_id}", headers=a).status_code == 204
    missing = api.get(f"/jobs/{job_id}", headers=a)
    assert missing.status_code == 404
    for response in seen_by_b:
        assert response.status_code == 404
        assert response.json() == missing.json()  # nothing tells b that the id exists


def test_the_record_holds_a_keyed_hash_not_the_key(
    make_client: Callable[..., TestClient],
    store: JobStore,
    redis_url: str,
    make_image: Callable[..., bytes],
) -> None:
    api = make_client(api_keys=["secret-key-a"])
    job_id = _submit(api, make_image(), "secret-key-a")
    raw: dict[bytes, bytes] = redis.Redis.from_url(redis_url).hgetall(  # type: ignore[assignment]
        f"metahmr:job:{job_id}"
    )
    assert b"secret-key-a" not in b"".join(k + v for k, v in raw.items())
    record = store.get(job_id)
    assert record is not None and record.owner is not None
    assert record.owner.startswith("key:") and len(record.owner) == 4 + 32
    # Another API replica on the same Redis derives the same owner and serves the job.
    other = make_client(api_keys=["secret-key-a"])
    assert other.get(f"/jobs/{job_id}", headers={"X-API-Key": "secret-key-a"}).status_code == 200
    second = store.get(_submit(other, make_image(), "secret-key-a"))
    assert second is not None and second.owner == record.owner
    # Another Redis (another salt) gives the same key another id.
    store.client.delete("metahmr:owner_salt")
    third = store.get(_submit(other, make_image(), "secret-key-a"))
    assert third is not None and third.owner not in (None, record.owner)


def test_jobs_made_without_keys_stay_readable_without_one(
    make_client: Callable[..., TestClient], store: JobStore, make_image: Callable[..., bytes]
) -> None:
    open_api = make_client()
    job_id = _submit(open_api, make_image())
    record = store.get(job_id)
    assert record is not None and record.owner is None
    assert open_api.get(f"/jobs/{job_id}").json()["status"] == "queued"
    # Keys turned on later: any valid key may read a job that had no owner; no key may not.
    keyed = make_client(api_keys=["key-a"])
    assert keyed.get(f"/jobs/{job_id}", headers={"X-API-Key": "key-a"}).status_code == 200
    assert keyed.get(f"/jobs/{job_id}").status_code == 401
    assert open_api.delete(f"/jobs/{job_id}").status_code == 200  # queued: canceled


def test_owned_jobs_stay_hidden_when_keys_are_turned_off(
    make_client: Callable[..., TestClient], make_image: Callable[..., bytes]
) -> None:
    job_id = _submit(make_client(api_keys=["key-a"]), make_image(), "key-a")
    assert make_client().get(f"/jobs/{job_id}").status_code == 404
