"""HTTP routes (ARCHITECTURE.md §5). Thin: validation lives in deps, storage in jobs."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.deps import (
    ApiError,
    Caller,
    CallerDep,
    MetricsReaderDep,
    RecoverDep,
    StateDep,
    clip,
)
from service.jobs import (
    FILE_MEDIA_TYPES,
    FILE_NAMES,
    JobRecord,
    JobStatus,
    is_job_id,
    job_context,
)
from service.schemas import ErrorBody, ErrorResponse, JobAccepted, JobView, Links, ProgressOut

log = logging.getLogger(__name__)
router = APIRouter()
JOB_ID_LENGTH = 36

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 503)
}
_MULTIPART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG or WebP; or a short MP4, MOV or WebM video",
                        },
                        "options": {"$ref": "#/components/schemas/RecoverOptions"},
                    },
                },
                # The options part is a JSON document (sent as a form field or a file).
                "encoding": {"options": {"contentType": "application/json"}},
            }
        },
    }
}


@router.post(
    "/recover",
    status_code=202,
    response_model=JobAccepted,
    responses=_ERRORS,
    openapi_extra=_MULTIPART_DOC,
    summary="Submit an image or a short video; returns a job to poll",
)
async def recover(state: StateDep, submission: RecoverDep, response: Response) -> JobAccepted:
    record = await run_in_threadpool(
        state.store.create,
        submission.image.data,
        submission.options.to_job(),
        submission.image.meta(),
        submission.caller.owner,
    )
    with job_context(record.job_id):
        try:
            await run_in_threadpool(state.queue.send, record.job_id)
        except Exception as exc:  # kombu/redis errors: the broker is unreachable
            log.error("could not queue job: %s", exc)
            await run_in_threadpool(state.store.delete, record.job_id)
            raise ApiError(
                503, "queue_unavailable", "the job queue is unavailable; retry later"
            ) from exc
        log.info(
            "job queued", extra={"width": submission.image.width, "height": submission.image.height}
        )
    response.headers["Location"] = f"/jobs/{record.job_id}"
    return JobAccepted(job_id=record.job_id, links=Links(self=f"/jobs/{record.job_id}"))


@router.get(
    "/jobs/{job_id}", response_model=JobView, responses=_ERRORS, summary="Job status and result"
)
async def get_job(job_id: str, state: StateDep, caller: CallerDep) -> JSONResponse:
    return JSONResponse(job_view(await _load(state, job_id, caller)))


@router.get(
    "/jobs/{job_id}/{name}",
    responses={**_ERRORS, 200: {"content": {t: {} for t in FILE_MEDIA_TYPES.values()}}},
    response_class=Response,
    summary="A result file: mesh.obj, mesh.glb or overlay.png",
)
async def get_file(job_id: str, name: str, state: StateDep, caller: CallerDep) -> Response:
    if name not in FILE_NAMES:
        raise ApiError(
            404, "not_found", f"no file {clip(name)!r}; files are {', '.join(FILE_NAMES)}"
        )
    record = await _load(state, job_id, caller)
    if not record.status.is_final:
        raise ApiError(
            409, "not_finished", f"job is {record.status}; files appear when it succeeds"
        )
    data = await run_in_threadpool(state.store.file, job_id, name) if name in record.files else None
    if data is None:
        kind = "overlay" if name == "overlay.png" else "mesh"
        asked = kind in (record.options.get("return") or [])
        hint = "it was not produced" if asked else f'ask for it with options.return ["{kind}"]'
        raise ApiError(404, "not_found", f"job {job_id} has no {name}: {hint}")
    return Response(content=data, media_type=FILE_MEDIA_TYPES[name])


@router.delete(
    "/jobs/{job_id}",
    responses={**_ERRORS, 200: {"model": JobView}, 204: {"description": "deleted"}},
    summary="Cancel a pending job, or delete a finished one and its files",
)
async def delete_job(job_id: str, state: StateDep, caller: CallerDep) -> Response:
    record = await _load(state, job_id, caller)
    if not record.status.is_final:
        canceled, _ = await run_in_threadpool(state.store.cancel, job_id)
        if canceled:
            fresh = await _load(state, job_id, caller)
            return JSONResponse(job_view(fresh))
    await run_in_threadpool(state.store.delete, job_id)
    return Response(status_code=204)


@router.api_route(
    "/jobs/{job_id}", methods=["POST", "PUT", "PATCH", "HEAD", "OPTIONS"], include_in_schema=False
)
async def job_other_methods(request: Request) -> Response:
    # Starlette answers a wrong method with the Allow of the first route that matched the
    # path (GET alone); this one names both of the job's methods.
    raise ApiError(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on /jobs/{{id}}; use GET or DELETE",
        {"Allow": "GET, DELETE"},
    )


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"model": ErrorResponse}}, summary="Redis and a worker are up"
)
async def readyz(state: StateDep) -> dict[str, Any]:
    try:
        await run_in_threadpool(state.store.ping)
        workers = await run_in_threadpool(state.store.live_workers)
    except Exception as exc:
        # The error names Redis's host, port or socket path: for the logs, not for callers.
        log.error("readiness: Redis is unreachable: %s", exc)
        raise ApiError(503, "store_unavailable", "the job store is unreachable") from exc
    if workers < 1:
        raise ApiError(503, "no_worker", "no worker has sent a heartbeat recently")
    return {"status": "ready", "workers": workers}


@router.get(
    "/metrics",
    response_class=Response,
    responses={401: {"model": ErrorResponse}},
    summary="Prometheus metrics (X-API-Key when keys are set, unless METAHMR_METRICS_PUBLIC)",
)
async def metrics(state: StateDep, _reader: MetricsReaderDep) -> Response:
    body = await run_in_threadpool(generate_latest, state.metrics.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)


async def _load(state: StateDep, job_id: str, caller: Caller) -> JobRecord:
    """The job, if it exists and the caller may see it. Another key's job answers exactly as
    a missing one does, so that a 404 does not confirm that an id exists."""
    # A job id is a 36-character UUID: anything else is refused before parsing or Redis.
    valid = len(job_id) == JOB_ID_LENGTH and is_job_id(job_id)
    record = await run_in_threadpool(state.store.get, job_id) if valid else None
    if record is None or not caller.may_see(record):
        raise ApiError(404, "job_not_found", f"no job {clip(job_id)!r} (unknown or expired)")
    return record


def job_view(record: JobRecord) -> dict[str, Any]:
    """The `JobView` JSON of a record. Its result is the worker's `RecoverResult.to_job()`,
    passed through as stored: the worker built it from the typed contract, and the API does
    not parse it a second time."""
    base = f"/jobs/{record.job_id}"
    files = {n: f"{base}/{n}" for n in record.files} if record.status is JobStatus.SUCCEEDED else {}
    view = JobView(
        job_id=record.job_id,
        status=record.status.value,
        created_at=record.created_at,
        updated_at=record.updated_at,
        progress=ProgressOut(**vars(record.progress)) if record.progress else None,
        result=None,
        error=ErrorBody(code=record.error.code, message=record.error.message)
        if record.error
        else None,
        links=Links(self=base, files=files),
    ).model_dump(mode="json")
    view["result"] = record.result
    return view
