"""A small HTTP client for the metahmr API: submit, wait with backoff, download files.

with MetahmrClient("http://127.0.0.1:8000") as client:
    job = client.recover("person.jpg", {"return": ["overlay"]})
    png = client.download(job["job_id"], "overlay.png")
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    """The API answered with an error ({"error": {"code", "message"}})."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class JobFailed(Exception):
    """The job ended failed or canceled; `job` is its last view."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(
            f"job {job.get('job_id')} {job.get('status')}: "
            f"{error.get('code', '')} {error.get('message', '')}".rstrip()
        )
        self.job = dict(job)


@dataclass(frozen=True)
class Backoff:
    """Polling delays: initial_s, times factor after each poll, capped at max_s."""

    initial_s: float = 0.05
    factor: float = 1.5
    max_s: float = 2.0


class MetahmrClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> MetahmrClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        image: bytes | str | Path,
        options: Mapping[str, Any] | None = None,
        *,
        filename: str = "image",
    ) -> str:
        """POST /recover; returns the job id."""
        if isinstance(image, str | Path):
            filename = Path(image).name
            image = Path(image).read_bytes()
        data = {"options": json.dumps(dict(options))} if options else None
        response = self.http.post("/recover", files={"image": (filename, image)}, data=data)
        return str(_json(response)["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return _json(self.http.get(f"/jobs/{job_id}"))

    def wait(
        self, job_id: str, *, timeout_s: float = 600.0, backoff: Backoff | None = None
    ) -> dict[str, Any]:
        """Poll until the job is final; returns it when succeeded, raises JobFailed when
        failed or canceled, TimeoutError when `timeout_s` passes first."""
        backoff = backoff or Backoff()
        deadline = time.monotonic() + timeout_s
        delay = backoff.initial_s
        while True:
            try:
                job = self.job(job_id)
            except httpx.TransportError:  # the server may be restarting: keep polling
                job = {"status": "unknown"}
            if job["status"] == "succeeded":
                return job
            if job["status"] in FINAL:
                raise JobFailed(job)
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(delay)
            delay = min(delay * backoff.factor, backoff.max_s)

    def recover(
        self,
        image: bytes | str | Path,
        options: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = 600.0,
    ) -> dict[str, Any]:
        """Submit and wait: the succeeded job (its `result` holds the §5 result)."""
        return self.wait(self.submit(image, options), timeout_s=timeout_s)

    def download(self, job_id: str, name: str) -> bytes:
        """A result file: mesh.obj, mesh.glb, overlay.png, animation.glb, animation.bvh or
        smpl.npz."""
        response = self.http.get(f"/jobs/{job_id}/{name}")
        if response.status_code != 200:
            _json(response)
        return response.content

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """DELETE /jobs/{id}: the canceled job, or None when a finished job was deleted."""
        response = self.http.delete(f"/jobs/{job_id}")
        if response.status_code == 204:
            return None
        return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        retry = response.headers.get("Retry-After")
        raise ApiError(
            response.status_code,
            error.get("code", "http_error"),
            error.get("message", response.text[:200]),
            float(retry) if retry and retry.isdigit() else None,
        )
    if not isinstance(body, dict):
        raise ApiError(response.status_code, "bad_response", "the server did not answer JSON")
    return body
