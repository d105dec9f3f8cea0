"""Every kind of bad input gets the right 4xx with a JSON message, never reaches the queue,
and leaves the service serving (ARCHITECTURE.md §5; issue 6 "Bad input")."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from broker_checks import broker_messages
from fastapi.testclient import TestClient

from service.jobs import JobStore

GOOD_KP = [[10.0 + i, 10.0 + i, 1.0] for i in range(17)]


def _multipart(image: bytes | None, options: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if image is not None:
        kwargs["files"] = {"image": ("x.png", image, "image/png")}
    if options is not None:
        kwargs["data"] = {"options": options}
    return kwargs


def _options(**fields: Any) -> str:
    return json.dumps(fields)


def _cases(make_image: Callable[..., bytes], bomb: Callable[[int, int], bytes]) -> dict[str, Any]:
    good = make_image(64, 48)
    jpeg = make_image(320, 240, "JPEG")
    return {
        "image part empty": (_multipart(b""), 400, "empty_image"),
        "no image part": (
            _multipart(None, "{}") | {"files": {"other": ("a", b"1")}},
            400,
            "missing_image",
        ),
        "not an image": (_multipart(b"GIF89a? no, just text" * 20), 415, "unsupported_image"),
        "truncated jpeg": (_multipart(jpeg[: len(jpeg) // 2]), 422, "corrupt_image"),
        "png bomb": (_multipart(bomb(30_000, 30_000)), 413, "too_many_pixels"),
        "0x0 png": (_multipart(bomb(0, 0)), 415, "unsupported_image"),
        "1x100000 png": (_multipart(bomb(1, 100_000)), 422, "bad_image_size"),
        "options not json": (_multipart(good, "{people: nope"), 400, "bad_options"),
        "options a list": (_multipart(good, "[1, 2]"), 400, "bad_options"),
        "box outside": (
            _multipart(good, _options(people=[{"bbox": [100, 0, 200, 40]}])),
            422,
            "invalid_options",
        ),
        "box inverted": (
            _multipart(good, _options(people=[{"bbox": [30, 0, 10, 40]}])),
            422,
            "invalid_options",
        ),
        "keypoints wrong count": (
            _multipart(
                good, _options(people=[{"keypoints": {"format": "openpose25", "points": GOOD_KP}}])
            ),
            422,
            "invalid_options",
        ),
        "keypoints unknown format": (
            _multipart(
                good, _options(people=[{"keypoints": {"format": "body99", "points": GOOD_KP}}])
            ),
            422,
            "invalid_options",
        ),
        "keypoints nan": (
            _multipart(
                good,
                json.dumps(
                    {"people": [{"keypoints": {"points": [[math.nan, 1, 1]] + GOOD_KP[1:]}}]}
                ),
            ),
            422,
            "invalid_options",
        ),
        "tto steps too many": (
            _multipart(good, _options(tto={"steps": 31})),
            422,
            "invalid_options",
        ),
        "tto steps negative": (
            _multipart(good, _options(tto={"steps": -1})),
            422,
            "invalid_options",
        ),
    }


CASE_NAMES = [
    "image part empty", "no image part", "not an image", "truncated jpeg", "png bomb", "0x0 png",
    "1x100000 png", "options not json", "options a list", "box outside", "box inverted",
    "keypoints wrong count", "keypoints unknown format", "keypoints nan", "tto steps too many",
    "tto steps negative",
]  # fmt: skip


def _job_keys(store: JobStore) -> list[bytes]:
    return store.client.keys("metahmr:job:*")


def _assert_error(response: Any, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize("case", CASE_NAMES)
def test_recover_rejects_bad_input_without_queueing(
    api: TestClient,
    store: JobStore,
    make_image: Callable[..., bytes],
    make_png_header: Callable[[int, int], bytes],
    case: str,
) -> None:
    kwargs, status, code = _cases(make_image, make_png_header)[case]
    depth = broker_messages(store.client, "metahmr")
    _assert_error(api.post("/recover", **kwargs), status, code)
    assert broker_messages(store.client, "metahmr") == depth
    assert _job_keys(store) == []
    # The service keeps serving: a good request right after is queued.
    ok = api.post("/recover", **_multipart(make_image(64, 48)))
    assert ok.status_code == 202, ok.text
    assert broker_messages(store.client, "metahmr") == depth + 1


def test_empty_body_is_refused(api: TestClient, store: JobStore) -> None:
    _assert_error(api.post("/recover"), 415, "unsupported_media_type")
    _assert_error(
        api.post(
            "/recover", content=b"", headers={"content-type": "multipart/form-data; boundary=x"}
        ),
        400,
        "missing_image",
    )
    _assert_error(
        api.post("/recover", content=b"", headers={"content-type": "multipart/form-data"}), 400
    )
    assert broker_messages(store.client, "metahmr") == 0 and _job_keys(store) == []


def test_json_body_instead_of_multipart_is_415(api: TestClient) -> None:
    _assert_error(api.post("/recover", json={"image": "aGVsbG8="}), 415, "unsupported_media_type")


def test_oversized_upload_is_413_before_decoding(
    make_client: Callable[..., TestClient], store: JobStore, make_image: Callable[..., bytes]
) -> None:
    client = make_client(max_upload_mb=0.01)  # about 10 kB
    big = make_image(64, 48) + b"\0" * 2 * 1024 * 1024  # valid PNG, padded past every limit
    _assert_error(client.post("/recover", **_multipart(big)), 413, "upload_too_large")
    just_over = make_image(64, 48) + b"\0" * 11_000  # under the body limit, over the image limit
    _assert_error(client.post("/recover", **_multipart(just_over)), 413, "upload_too_large")
    assert broker_messages(store.client, "metahmr") == 0 and _job_keys(store) == []
    assert client.post("/recover", **_multipart(make_image(64, 48))).status_code == 202


def test_unknown_job_ids_are_404(api: TestClient) -> None:
    for path in (f"/jobs/{uuid.uuid4()}", "/jobs/not-a-uuid", f"/jobs/{uuid.uuid4()}/mesh.glb"):
        _assert_error(api.get(path), 404)
    _assert_error(api.delete(f"/jobs/{uuid.uuid4()}"), 404, "job_not_found")


def test_framework_errors_are_json_too(api: TestClient) -> None:
    _assert_error(api.get("/no/such/route"), 404, "not_found")
    _assert_error(api.put("/recover"), 405, "method_not_allowed")
    _assert_error(api.post("/jobs/abc"), 405, "method_not_allowed")


def test_store_down_is_503(
    make_client: Callable[..., TestClient], make_image: Callable[..., bytes], tmp_path: Any
) -> None:
    client = make_client(redis_url=f"unix://{tmp_path}/nothing.sock")
    _assert_error(client.post("/recover", **_multipart(make_image())), 503, "store_unavailable")
    _assert_error(client.get("/readyz"), 503, "store_unavailable")
    assert client.get("/healthz").status_code == 200
