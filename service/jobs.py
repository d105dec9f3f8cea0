"""The Redis job store: the one module that knows the key layout. The API and workers use it.

Layout (every key starts with the store's prefix, ``metahmr:`` by default):

- ``job:{id}`` hash: status, created_at, updated_at, options, image (meta), progress,
  result, error (JSON), attempts, worker, files (JSON list), started_at, finished_at.
- ``job:{id}:image`` the uploaded bytes; ``job:{id}:file:{name}`` result files.
  All of a job's keys expire after ``ttl_s``; the image is dropped once the job has finished.
- ``running`` set of job ids in state running (the reaper's work list).
- ``queued`` sorted set of job ids in state queued, oldest first (score: creation time, 0
  for a job put back in the queue), so a worker can take several at once (micro-batching).
  Kept with every status change; an id whose job expired while queued is dropped when seen.
- ``workers`` sorted set: worker id -> time (Redis clock) its heartbeat expires.
- ``rate:{who}:{minute}`` submission counters; ``stats:*`` hashes behind /metrics.

Status changes run as Lua scripts, so a check and its write are one atomic step: a job
goes queued -> running -> succeeded | failed | canceled, running -> queued when its worker
died (the reaper), and never leaves a final state.

Job-scoped logging lives here too (end of the module), because the API and the workers both
need it and the job store is what the worker may import from this package: JSON log lines
that carry the id of the job being handled (`job_context`, `configure_logging`).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis

# The Celery task a job is sent as; the API sends it by name and never imports worker code.
RECOVER_TASK = "metahmr.recover"
FILE_NAMES = ("mesh.obj", "mesh.glb", "overlay.png")
FILE_MEDIA_TYPES = {
    "mesh.obj": "text/plain",
    "mesh.glb": "model/gltf-binary",
    "overlay.png": "image/png",
}
# Histogram upper bounds kept in Redis so every API replica reports the same numbers.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTO_STEP_BUCKETS = (0, 1, 2, 5, 10, 15, 20, 30)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total: int


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    created_at: str
    updated_at: str
    options: dict[str, Any]
    image: dict[str, Any]
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = None
    files: tuple[str, ...] = ()
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class HistogramData:
    """Non-cumulative counts per upper bound (last entry: +Inf), plus sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass(frozen=True)
class JobStats:
    finished: dict[str, int] = field(default_factory=dict)
    duration_s: HistogramData | None = None
    tto_steps: HistogramData | None = None


class JobCanceled(Exception):
    """The job was canceled while a worker was running it."""


class LeaseLost(Exception):
    """The job no longer belongs to this worker (it was re-queued after a missed heartbeat)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_job_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# KEYS: 1 job hash, 2 running set, 3 image, 4 queued index.
# ARGV: 1 allowed current statuses (space separated), 2 new status, 3 required worker ('' =
# any), 4 job id, 5 ttl seconds (0 = keep), 6 '1' to drop the image, 7.. field/value pairs.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do if s == cur then allowed = true end end
if not allowed then return {0, cur} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == 'running' then redis.call('SADD', KEYS[2], ARGV[4])
else redis.call('SREM', KEYS[2], ARGV[4]) end
if ARGV[2] == 'queued' then redis.call('ZADD', KEYS[4], 0, ARGV[4])
else redis.call('ZREM', KEYS[4], ARGV[4]) end
if ARGV[6] == '1' then redis.call('DEL', KEYS[3]) end
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return {1, cur}
"""

# KEYS: 1 job hash, 2 running set, 3 queued index. ARGV: 1 worker, 2 now (ISO), 3 job id.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local mine = cur == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[1]
if cur ~= 'queued' and not mine then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'updated_at', ARGV[2],
           'started_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HDEL', KEYS[1], 'progress')
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return {1, cur}
"""

# Take up to ARGV[3] queued jobs, oldest first, for one worker: each one exactly as _CLAIM
# would. KEYS: 1 queued index, 2 running set. ARGV: 1 worker, 2 now (ISO), 3 limit, 4 key
# prefix (job keys are built here, as in _REAP). Every id looked at leaves the index (claimed,
# or no longer queued), so each pass reads new ones.
_CLAIM_QUEUED = """
local out = {}
local limit = tonumber(ARGV[3])
while #out < limit do
  local ids = redis.call('ZRANGE', KEYS[1], 0, limit - #out - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    local key = ARGV[4] .. 'job:' .. id
    if redis.call('HGET', key, 'status') == 'queued' then
      redis.call('HSET', key, 'status', 'running', 'worker', ARGV[1], 'updated_at', ARGV[2],
                 'started_at', ARGV[2])
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HDEL', key, 'progress')
      redis.call('SADD', KEYS[2], id)
      table.insert(out, id)
    end
  end
end
return out
"""

# Scripts that read the clock use Redis's, so workers on several hosts agree on expiry.
_HEARTBEAT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600)
return 1
"""

_LIVE_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

# KEYS: 1 running set, 2 workers, 3 queued index. ARGV: 1 key prefix, 2 max attempts, 3 now (ISO),
# 4 error JSON when attempts are used up. Job keys are built here from the prefix (fine on a
# single Redis; this store does not target Redis Cluster).
_REAP = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'job:' .. id
  local status = redis.call('HGET', key, 'status')
  if status ~= 'running' then
    redis.call('SREM', KEYS[1], id)
  else
    local w = redis.call('HGET', key, 'worker')
    local expiry = false
    if w then expiry = redis.call('ZSCORE', KEYS[2], w) end
    if (not expiry) or tonumber(expiry) < now then
      redis.call('SREM', KEYS[1], id)
      local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
      if attempts >= tonumber(ARGV[2]) then
        redis.call('HSET', key, 'status', 'failed', 'error', ARGV[4], 'updated_at', ARGV[3],
                   'finished_at', ARGV[3], 'worker', '')
        redis.call('DEL', key .. ':image')
        table.insert(out, {id, 'failed'})
      else
        redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[3], 'worker', '')
        redis.call('HDEL', key, 'progress')
        redis.call('ZADD', KEYS[3], 0, id)
        table.insert(out, {id, 'queued'})
      end
    end
  end
end
return out
"""


class JobStore:
    """Typed access to jobs, worker heartbeats, rate limits and job statistics in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: int, prefix: str = "metahmr:") -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM)
        self._claim_queued = client.register_script(_CLAIM_QUEUED)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._live = client.register_script(_LIVE_WORKERS)
        self._reap = client.register_script(_REAP)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int, prefix: str = "metahmr:") -> JobStore:
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, ttl_s=ttl_s, prefix=prefix)

    # -- keys -------------------------------------------------------------------------------
    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _image(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:image"

    def _file(self, job_id: str, name: str) -> str:
        return f"{self.prefix}job:{job_id}:file:{name}"

    @property
    def _running(self) -> str:
        return f"{self.prefix}running"

    @property
    def _queued(self) -> str:
        return f"{self.prefix}queued"

    @property
    def _workers(self) -> str:
        return f"{self.prefix}workers"

    # -- jobs -------------------------------------------------------------------------------
    def create(
        self, image: bytes, options: Mapping[str, Any], image_meta: Mapping[str, Any]
    ) -> JobRecord:
        """Store a new queued job and its image (same TTL); returns the record."""
        job_id = str(uuid.uuid4())
        stamp = now_iso()
        fields: dict[Any, Any] = {
            "status": JobStatus.QUEUED.value,
            "created_at": stamp,
            "updated_at": stamp,
            "options": json.dumps(dict(options)),
            "image": json.dumps(dict(image_meta)),
            "attempts": 0,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._job(job_id), mapping=fields)
        pipe.expire(self._job(job_id), self.ttl_s)
        pipe.set(self._image(job_id), image, ex=self.ttl_s)
        pipe.zadd(self._queued, {job_id: time.time()})
        pipe.execute()
        return JobRecord(
            job_id=job_id,
            status=JobStatus.QUEUED,
            created_at=stamp,
            updated_at=stamp,
            options=dict(options),
            image=dict(image_meta),
        )

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.client.hgetall(self._job(job_id))
        if not raw or b"status" not in raw:
            return None
        return _record(job_id, {_text(k): _text(v) for k, v in raw.items()})

    def image(self, job_id: str) -> bytes | None:
        return _bytes(self.client.get(self._image(job_id)))

    def file(self, job_id: str, name: str) -> bytes | None:
        if name not in FILE_NAMES:
            return None
        return _bytes(self.client.get(self._file(job_id, name)))

    def put_files(self, job_id: str, files: Mapping[str, bytes]) -> None:
        """Store result files (before `finish`, so they exist when the job reads succeeded)."""
        unknown = set(files) - set(FILE_NAMES)
        if unknown:
            raise ValueError(f"unknown result files {sorted(unknown)}; valid: {FILE_NAMES}")
        pipe = self.client.pipeline(transaction=True)
        for name, data in files.items():
            pipe.set(self._file(job_id, name), data, ex=self.ttl_s)
        pipe.execute()

    def claim(self, job_id: str, worker: str) -> tuple[bool, JobStatus | None]:
        """queued -> running for `worker` (or running again by the same worker, when its
        earlier try of this task stopped on an error). Returns (claimed, status before)."""
        keys = [self._job(job_id), self._running, self._queued]
        ok, before = self._claim(keys=keys, args=[worker, now_iso(), job_id])
        return bool(ok), JobStatus(before.decode()) if before else None

    def claim_queued(self, worker: str, limit: int) -> list[str]:
        """Claim up to `limit` queued jobs for `worker`, oldest first, each exactly as `claim`
        does (queued -> running, one atomic step for all). Returns their ids; canceled,
        running, finished and expired jobs are skipped."""
        if limit <= 0:
            return []
        ids = self._claim_queued(
            keys=[self._queued, self._running], args=[worker, now_iso(), limit, self.prefix]
        )
        return [_text(i) for i in ids]

    def queued_jobs(self) -> list[str]:
        """Ids in the queued index, oldest first."""
        ids: list[bytes] = self.client.zrange(self._queued, 0, -1)  # type: ignore[assignment]
        return [_text(i) for i in ids]

    def release(self, job_id: str, worker: str) -> bool:
        """running -> queued by its own worker, to be retried later (transient errors)."""
        ok, _ = self._run_transition(
            job_id,
            allowed=(JobStatus.RUNNING,),
            to=JobStatus.QUEUED,
            worker=worker,
            fields={"worker": "", "updated_at": now_iso()},
        )
        return ok

    def set_progress(self, job_id: str, worker: str, stage: str, step: int, total: int) -> None:
        """Record progress; raises JobCanceled or LeaseLost when the worker must stop."""
        progress = json.dumps({"stage": stage, "step": int(step), "total": int(total)})
        ok, before = self._run_transition(
            job_id,
            allowed=(JobStatus.RUNNING,),
            to=JobStatus.RUNNING,
            worker=worker,
            fields={"progress": progress, "updated_at": now_iso()},
        )
        if not ok:
            _raise_stop(job_id, before)

    def finish(
        self,
        job_id: str,
        worker: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: JobError | None = None,
        files: tuple[str, ...] = (),
    ) -> bool:
        """running -> succeeded (with result) or failed (with error); False if refused."""
        if (result is None) == (error is None):
            raise ValueError("finish() takes exactly one of result or error")
        stamp = now_iso()
        fields: dict[str, str] = {"updated_at": stamp, "finished_at": stamp}
        if result is not None:
            fields |= {"result": json.dumps(result), "files": json.dumps(list(files))}
        else:
            assert error is not None
            fields["error"] = json.dumps({"code": error.code, "message": error.message})
        ok, _ = self._run_transition(
            job_id,
            allowed=(JobStatus.RUNNING,),
            to=JobStatus.SUCCEEDED if result is not None else JobStatus.FAILED,
            worker=worker,
            drop_image=True,
            refresh_ttl=True,
            fields=fields,
        )
        if not ok and files:
            self.client.delete(*(self._file(job_id, n) for n in files))
        return ok

    def fail_queued(self, job_id: str, error: JobError) -> bool:
        """queued -> failed, for jobs a worker refuses before running (e.g. image expired)."""
        stamp = now_iso()
        ok, _ = self._run_transition(
            job_id,
            allowed=(JobStatus.QUEUED,),
            to=JobStatus.FAILED,
            drop_image=True,
            refresh_ttl=True,
            fields={
                "updated_at": stamp,
                "finished_at": stamp,
                "error": json.dumps({"code": error.code, "message": error.message}),
            },
        )
        return ok

    def cancel(self, job_id: str) -> tuple[bool, JobStatus | None]:
        """queued|running -> canceled. Returns (canceled, status before)."""
        stamp = now_iso()
        return self._run_transition(
            job_id,
            allowed=(JobStatus.QUEUED, JobStatus.RUNNING),
            to=JobStatus.CANCELED,
            drop_image=True,
            refresh_ttl=True,
            fields={"updated_at": stamp, "finished_at": stamp},
        )

    def delete(self, job_id: str) -> bool:
        """Remove a job and everything stored with it; False if it did not exist."""
        keys = [self._job(job_id), self._image(job_id)]
        keys += [self._file(job_id, n) for n in FILE_NAMES]
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.srem(self._running, job_id)
        pipe.zrem(self._queued, job_id)
        removed, _, _ = pipe.execute()
        return bool(removed)

    def _run_transition(
        self,
        job_id: str,
        *,
        allowed: tuple[JobStatus, ...],
        to: JobStatus,
        worker: str = "",
        drop_image: bool = False,
        refresh_ttl: bool = False,
        fields: Mapping[str, str],
    ) -> tuple[bool, JobStatus | None]:
        args: list[str] = [
            " ".join(s.value for s in allowed),
            to.value,
            worker,
            job_id,
            str(self.ttl_s if refresh_ttl else 0),
            "1" if drop_image else "0",
        ]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._job(job_id), self._running, self._image(job_id), self._queued]
        ok, before = self._transition(keys=keys, args=args)
        status = JobStatus(before.decode()) if before else None
        return bool(ok), status

    # -- workers ----------------------------------------------------------------------------
    def heartbeat(self, worker: str, ttl_s: float) -> None:
        """Mark `worker` alive for the next `ttl_s` seconds (Redis clock)."""
        self._heartbeat(keys=[self._workers], args=[worker, ttl_s])

    def forget_worker(self, worker: str) -> None:
        self.client.zrem(self._workers, worker)

    def live_workers(self) -> int:
        return len(self.live_worker_ids())

    def live_worker_ids(self) -> list[str]:
        """Workers whose heartbeat has not expired (ids are host:pid:random)."""
        return [w.decode() for w in self._live(keys=[self._workers])]

    def reap(self, max_attempts: int) -> list[tuple[str, JobStatus]]:
        """Re-queue running jobs whose worker stopped beating (fail them after
        `max_attempts` starts). Returns (job id, new status) for each job touched."""
        error = json.dumps(
            {
                "code": "worker_lost",
                "message": f"the worker running this job died {max_attempts} time(s); "
                "the input may crash the pipeline (check the worker logs)",
            }
        )
        rows = self._reap(
            keys=[self._running, self._workers, self._queued],
            args=[self.prefix, max_attempts, now_iso(), error],
        )
        return [(i.decode(), JobStatus(s.decode())) for i, s in rows]

    def running_jobs(self) -> set[str]:
        return {_text(m) for m in self.client.smembers(self._running)}

    # -- rate limits ------------------------------------------------------------------------
    def hit_rate_limit(self, who: str, limit: int, window_s: int = 60) -> tuple[bool, int]:
        """Count one request for `who` in the current fixed window.
        Returns (allowed, seconds until the window ends)."""
        now = time.time()
        window = int(now // window_s)
        digest = hashlib.sha256(who.encode()).hexdigest()[:24]
        key = f"{self.prefix}rate:{digest}:{window}"
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window_s + 1)
        count, _ = pipe.execute()
        retry_after = max(1, int((window + 1) * window_s - now + 0.999))
        return int(count) <= limit, retry_after

    # -- broker and statistics --------------------------------------------------------------
    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue. Kombu's Redis transport keeps a queue as a list
        named after it, plus one list per priority step (name + '\\x06\\x16' + step)."""
        names = [queue] + [f"{queue}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return int(sum(pipe.execute()))

    def record_finished(
        self, status: JobStatus, duration_s: float, tto_steps: Sequence[int] = ()
    ) -> None:
        """Count a finished job (and the TTO steps run for each of its people) in the shared
        statistics read by every API's /metrics."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(f"{self.prefix}stats:finished", status.value, 1)
        _observe(pipe, f"{self.prefix}stats:duration_s", DURATION_BUCKETS_S, duration_s)
        for steps in tto_steps:
            _observe(pipe, f"{self.prefix}stats:tto_steps", TTO_STEP_BUCKETS, float(steps))
        pipe.execute()

    def stats(self) -> JobStats:
        pipe = self.client.pipeline(transaction=False)
        for name in ("finished", "duration_s", "tto_steps"):
            pipe.hgetall(f"{self.prefix}stats:{name}")
        finished, duration, steps = pipe.execute()
        return JobStats(
            finished={k.decode(): int(v) for k, v in finished.items()},
            duration_s=_histogram(duration, DURATION_BUCKETS_S),
            tto_steps=_histogram(steps, TTO_STEP_BUCKETS),
        )

    def ping(self) -> bool:
        return bool(self.client.ping())


def _observe(pipe: Any, key: str, bounds: tuple[float, ...], value: float) -> None:
    slot = next((str(b) for b in bounds if value <= b), "+Inf")
    pipe.hincrby(key, slot, 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", value)


def _histogram(raw: dict[bytes, bytes], bounds: tuple[float, ...]) -> HistogramData:
    data = {k.decode(): v.decode() for k, v in raw.items()}
    counts = tuple(int(data.get(str(b), 0)) for b in bounds) + (int(data.get("+Inf", 0)),)
    return HistogramData(
        bounds=tuple(float(b) for b in bounds),
        counts=counts,
        total=float(data.get("sum", 0.0)),
        count=int(data.get("count", 0)),
    )


def _text(value: bytes | str) -> str:
    # The client returns bytes (no decode_responses: images and files are binary).
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else value.encode()


def _raise_stop(job_id: str, status: JobStatus | None) -> None:
    if status is JobStatus.CANCELED:
        raise JobCanceled(f"job {job_id} was canceled")
    raise LeaseLost(f"job {job_id} is no longer ours (status {status})")


def _record(job_id: str, raw: dict[str, str]) -> JobRecord:
    def load(name: str) -> Any:
        text = raw.get(name)
        return json.loads(text) if text else None

    progress = load("progress")
    error = load("error")
    return JobRecord(
        job_id=job_id,
        status=JobStatus(raw["status"]),
        created_at=raw.get("created_at", ""),
        updated_at=raw.get("updated_at", ""),
        options=load("options") or {},
        image=load("image") or {},
        progress=Progress(**progress) if progress else None,
        result=load("result"),
        error=JobError(**error) if error else None,
        attempts=int(raw.get("attempts", 0)),
        worker=raw.get("worker") or None,
        files=tuple(load("files") or ()),
        started_at=raw.get("started_at") or None,
        finished_at=raw.get("finished_at") or None,
    )


# --- job-scoped logging -----------------------------------------------------------------------
# The job id lives in a context variable: set it around the work for one job (`job_context`),
# and every log record emitted meanwhile, in any module, carries it.

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "metahmr_job_id", default=None
)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Adds `job_id` to every record (None outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, job_id, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _RESERVED and key != "job_id" and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route the root logger to stderr, as JSON lines (or plain text for humans)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s] %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
