"""The per-address rate limit cannot be dodged with X-Forwarded-For (issue 14 item 8): the
header counts only from METAHMR_TRUSTED_PROXIES, through uvicorn configured as `metahmr serve`
configures it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import ValidationError
from starlette.requests import Request

from bench.serve_stack import free_port
from service.config import Settings
from service.deps import client_address
from service.main import create_app
from service.serve import api_server_config


@pytest.fixture
def serve(settings: Settings) -> Iterator[Callable[..., httpx.Client]]:
    """Start the app with some settings changed under `metahmr serve`'s uvicorn config."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(**changes: object) -> httpx.Client:
        port = free_port()
        app = create_app(settings.model_copy(update=changes))
        server = uvicorn.Server(api_server_config(app, "127.0.0.1", port))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        running.append((server, thread, client))
        return client

    yield start
    for server, thread, client in running:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


def _submit(http: httpx.Client, image: bytes, forwarded: str) -> int:
    response = http.post(
        "/recover",
        files={"image": ("p.png", image, "image/png")},
        headers={"X-Forwarded-For": forwarded},
    )
    return response.status_code


def test_a_changing_forwarded_for_does_not_reset_the_limit(
    serve: Callable[..., httpx.Client], make_image: Callable[..., bytes]
) -> None:
    http = serve(rate_limit_per_min=3)
    codes = [_submit(http, make_image(), f"203.0.113.{i}") for i in range(6)]
    assert codes == [202, 202, 202, 429, 429, 429]


def test_a_trusted_proxy_names_the_client(
    serve: Callable[..., httpx.Client], make_image: Callable[..., bytes]
) -> None:
    http = serve(rate_limit_per_min=2, trusted_proxies=["127.0.0.1"])
    # Each client behind the proxy has its own budget ...
    assert [_submit(http, make_image(), f"203.0.113.{i}") for i in range(4)] == [202] * 4
    # ... and spoofed hops to the left of the proxy's own entry do not change who it is.
    codes = [_submit(http, make_image(), f"198.51.100.{i}, 192.0.2.7") for i in range(3)]
    assert codes == [202, 202, 429]


def _request(peer: str, forwarded: list[str]) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "client": (peer, 5000), "headers": headers})


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("192.0.2.1", ["203.0.113.9"], [], "192.0.2.1"),
        ("192.0.2.1", ["203.0.113.9"], ["10.0.0.0/8"], "192.0.2.1"),
        ("10.1.2.3", ["203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),
        ("10.1.2.3", ["6.6.6.6, 203.0.113.9, 10.0.0.4"], ["10.0.0.0/8"], "203.0.113.9"),
        ("10.1.2.3", ["6.6.6.6", "203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),
        ("10.1.2.3", ["not-an-ip, 10.0.0.4"], ["10.0.0.0/8"], "not-an-ip"),
        ("10.1.2.3", [], ["10.0.0.0/8"], "10.1.2.3"),
        ("::1", ["2001:db8::5"], ["::1"], "2001:db8::5"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], trusted: list[str], client: str) -> None:
    assert client_address(_request(peer, forwarded), trusted) == client


def test_trusted_proxies_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAHMR_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    assert Settings().trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]
    monkeypatch.setenv("METAHMR_TRUSTED_PROXIES", "proxy.local")
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings()
