"""`metahmr serve` as a child process: started on a free port, waited for until /readyz
answers 200, stopped with SIGTERM (then SIGKILL). What the benchmarks, the demo screenshot
and the end-to-end and browser tests that need a whole stack share."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]


class Served(NamedTuple):
    proc: subprocess.Popen[bytes]
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(url: str) -> bool:
    """Whether the API at `url` answers /readyz with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def serve_subprocess(
    env: Mapping[str, str],
    log_file: IO[bytes] | None = None,
    timeout_s: float = 180.0,
    args: Sequence[str] = ("--workers", "1"),
    stop_timeout_s: float = 60.0,
) -> Iterator[Served]:
    """`metahmr serve --port P *args` with exactly `env`; yields it once ready. Raises
    RuntimeError if it exits first, TimeoutError if it is not ready within timeout_s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), *args],
        cwd=REPO, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"metahmr serve exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"metahmr serve was not ready within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield Served(proc, url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
