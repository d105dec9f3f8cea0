"""Inputs that used to get past the API (issue 14 items 3, 5 and 11): each is refused at the
edge with a 4xx JSON error, through a real uvicorn server, before a job exists."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from broker_checks import stored_job_ids

from bench.serve_stack import free_port
from service.config import Settings
from service.jobs import JobStore
from service.main import create_app


@pytest.fixture
def http(settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client of the app behind a real uvicorn server."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=10)


def _post(
    http: httpx.Client, image: bytes, options: str | None = None, **fields: str
) -> httpx.Response:
    data = ({"options": options} if options is not None else {}) | fields
    return http.post("/recover", files={"image": ("p.png", image, "image/png")}, data=data)


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_options_get_a_400(
    http: httpx.Client, store: JobStore, make_image: Callable[..., bytes], depth: int
) -> None:
    for options in ("[" * depth, '{"people": ' + "[" * depth, '{"people": [' + '{"a": ' * depth):
        response = _post(http, make_image(), options)
        assert response.status_code == 400
        error = _error(response)
        assert error["code"] == "bad_options" and "nested too deeply" in error["message"]
    assert stored_job_ids(store.client) == set()
    # The server is still serving.
    assert _post(http, make_image(), json.dumps({"tto": {"steps": 1}})).status_code == 202


def test_wrong_method_on_a_job_lists_get_and_delete(http: httpx.Client) -> None:
    job = "/jobs/00000000-0000-4000-8000-000000000000"
    for method in ("PUT", "PATCH", "POST"):
        response = http.request(method, job)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, DELETE"
        assert _error(response)["code"] == "method_not_allowed"
    assert http.request("HEAD", job).headers["allow"] == "GET, DELETE"
    assert http.put(f"{job}/mesh.obj").headers["allow"] == "GET"


def test_unknown_or_repeated_form_fields_are_named(
    http: httpx.Client, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    response = _post(http, make_image(), "{}", optoins='{"tto": {"steps": 1}}', extra="1")
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "unknown_form_fields"
    assert "'extra'" in error["message"] and "'optoins'" in error["message"]
    long_name = "x" * 1_000
    response = _post(http, make_image(), **{long_name: "1"})
    assert response.status_code == 422 and len(_error(response)["message"]) < 300
    twice = http.post(
        "/recover",
        files=[("image", ("a.png", make_image(), "image/png")), ("image", ("b.png", make_image()))],
    )
    assert twice.status_code == 422 and _error(twice)["code"] == "repeated_form_fields"
    assert stored_job_ids(store.client) == set()


@pytest.mark.parametrize("job_id", ["x" * 8_000, "00000000-0000-4000-8000-00000000000" + "0" * 100])
def test_long_job_ids_are_not_echoed(http: httpx.Client, job_id: str) -> None:
    for response in (http.get(f"/jobs/{job_id}"), http.delete(f"/jobs/{job_id}")):
        assert response.status_code == 404
        error = _error(response)
        assert error["code"] == "job_not_found"
        assert len(error["message"]) < 200 and f"{len(job_id)} characters" in error["message"]
    name = "m" * 5_000
    response = http.get(f"/jobs/00000000-0000-4000-8000-000000000000/{name}")
    assert response.status_code == 404 and len(_error(response)["message"]) < 200


KP = [[20.0 + 2 * i, 10.0 + 2 * i, 0.9] for i in range(17)]


def _person(**person: Any) -> str:
    return json.dumps({"people": [person]})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (_person(keypoints={"points": [[1e6, 10.0, 0.9], *KP[1:]]}), "points[0] [1e+06, 10]"),
        (
            _person(bbox=[0, 0, 60, 40], keypoints={"points": [*KP[:5], [5, -1e6, 1], *KP[6:]]}),
            "points[5]",
        ),
        (_person(keypoints={"points": [KP[0]] + [[0.0, 0.0, 0.0]] * 16}), "at least 2 keypoints"),
        (_person(keypoints={"points": [[0.0, 0.0, 0.0]] * 17}), "(got 0)"),
        (_person(bbox=[10, 10, 10.01, 40]), "at least 2 px"),
        (_person(bbox=[10, 10, 40, 10.5]), "at least 2 px"),
        (json.dumps({"tto": {"steps": True}}), "tto.steps"),
        (json.dumps({"tto": {"steps": 2.5}}), "tto.steps"),
        (json.dumps({"focal_length": True}), "focal_length"),
        (_person(bbox=[True, 0, 30, 30]), "bbox.0"),
        (_person(keypoints={"points": [[20, 10, True], *KP[1:]]}), "points.0.2"),
    ],
)
def test_inputs_the_worker_cannot_use_are_refused_at_the_edge(
    http: httpx.Client, store: JobStore, make_image: Callable[..., bytes], options: str, says: str
) -> None:
    response = _post(http, make_image(64, 48), options)
    assert response.status_code == 422, response.text
    error = _error(response)
    assert error["code"] == "invalid_options" and says in error["message"]
    assert stored_job_ids(store.client) == set()


@pytest.mark.parametrize(
    "options",
    [
        # Unconfident points may be anywhere (detectors put missing ones at 0, 0 or worse).
        _person(keypoints={"points": [*KP[:16], [-1e6, 1e6, 0.0]]}),
        # Points a little outside the picture are normal (a limb out of frame).
        _person(keypoints={"points": [[-30.0, 80.0, 0.5], *KP[1:]]}),
        _person(bbox=[10, 10, 12, 40], keypoints={"points": [KP[0]] + [[0.0, 0.0, 0.0]] * 16}),
        json.dumps({"tto": {"steps": 3}, "focal_length": 500}),
    ],
)
def test_reasonable_edge_cases_still_pass(
    http: httpx.Client, make_image: Callable[..., bytes], options: str
) -> None:
    assert _post(http, make_image(64, 48), options).status_code == 202
