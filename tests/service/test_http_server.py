"""The app behind a real uvicorn server on a free port, driven by the package's own client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from broker_checks import broker_messages

from bench.serve_stack import free_port
from service.client import ApiError, MetahmrClient
from service.config import Settings
from service.jobs import JobStore
from service.main import create_app


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    port = free_port()
    app = create_app(settings.model_copy(update={"max_upload_mb": 0.05}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_client_submits_and_reads_a_job(
    server_url: str, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    with MetahmrClient(server_url) as client:
        job_id = client.submit(make_image(64, 48), {"tto": {"steps": 2}})
        job = client.job(job_id)
        assert job["status"] == "queued" and job["job_id"] == job_id
        store.claim(job_id, "w1")
        store.put_files(job_id, {"overlay.png": make_image(8, 8)})
        store.finish(job_id, "w1", result={"people": []}, files=("overlay.png",))
        done = client.wait(job_id, timeout_s=5)
        assert done["result"] == {"people": []}
        assert client.download(job_id, "overlay.png") == make_image(8, 8)
        assert client.cancel(job_id) is None  # finished: deleted
        with pytest.raises(ApiError) as exc:
            client.job(job_id)
        assert (exc.value.status, exc.value.code) == (404, "job_not_found")


def test_client_raises_api_errors_with_code(server_url: str) -> None:
    with MetahmrClient(server_url) as client, pytest.raises(ApiError) as exc:
        client.submit(b"not an image at all")
    assert (exc.value.status, exc.value.code) == (415, "unsupported_image")


def test_streamed_upload_without_length_is_cut_at_the_limit(
    server_url: str, store: JobStore, make_image: Callable[..., bytes]
) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # chunked transfer: the server sees no Content-Length
        yield head + make_image(64, 48)
        for _ in range(64):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{server_url}/recover",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert broker_messages(store.client, "metahmr") == 0
    assert httpx.get(f"{server_url}/healthz").status_code == 200
