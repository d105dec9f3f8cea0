"""The Redis job store: the one module that knows the key layout. The API and workers use it.

Layout (every key starts with the store's prefix, ``metahmr:`` by default):

- ``job:{id}`` hash: status, created_at, updated_at, options, image (meta), progress,
  result, error (JSON), attempts, worker, files (JSON list), started_at, finished_at, owner
  (a keyed hash of the API key that created it; absent when no keys were configured).
- ``job:{id}:image`` the uploaded bytes; ``job:{id}:file:{name}`` result files.
  All of a job's keys expire after ``ttl_s``; the image is dropped once the job has finished.
- ``running`` set of job ids in state running (the reaper's work list).
- ``unsent`` sorted set: id -> creation time of jobs whose task the API has not yet handed to
  the broker (`mark_sent`); a job left there (the API died in between) is sent by a worker's
  reaper (`take_unsent`).
- ``workers`` sorted set: worker id -> time (Redis clock) its heartbeat expires.
- ``outages`` sorted set: the times workers could not reach Redis (`note_outage`); a job whose
  lease ran out then is re-queued without counting as one of its worker deaths (``lost``).
- ``purge_due`` flag: an image or job was deleted since the last AOF rewrite (`compact`);
  ``compact_lock`` (expiring) spaces the rewrites.
- ``rate:{who}:{minute}`` submission counters; ``stats:*`` hashes behind /metrics.
- ``owner_salt``: the random key of the owner hashes, made once by the first API to need it.

What waits to run is the broker's queue of recover tasks (one message a job, sent by the
API or, for a job put back, by a worker): the store keeps no queue of its own.

Status changes run as Lua scripts (`service.jobs.scripts`), so a check and its write are one
atomic step: a job goes queued -> running -> succeeded | failed | canceled, running -> queued
when its worker died (the reaper), and never leaves a final state.

Deleted data and Redis's append-only file: Redis appends every write, deletes included, to
its AOF, so a deleted image stays on disk until the file is rewritten. `compact` (run by the
workers' reaper, at most every `aof_rewrite_interval_s`) asks Redis for that rewrite once
something was deleted, so deletion reaches the disk too.

Job-scoped logging is its neighbour in this package (`service.jobs.logs`): the API and the
workers both need it, and the job store package is what the worker may import from the
service.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from service.jobs import scripts
from service.jobs.records import (
    DURATION_BUCKETS_S,
    FILE_NAMES,
    TTO_STEP_BUCKETS,
    HistogramData,
    JobCanceled,
    JobError,
    JobRecord,
    JobStats,
    JobStatus,
    LeaseLost,
    now_iso,
    record_from_hash,
)


class JobStore:
    """Typed access to jobs, worker heartbeats, rate limits and job statistics in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: int, prefix: str = "metahmr:") -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._transition = client.register_script(scripts.TRANSITION)
        self._claim = client.register_script(scripts.CLAIM)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._live = client.register_script(scripts.LIVE_WORKERS)
        self._reap = client.register_script(scripts.REAP)
        self._note_outage = client.register_script(scripts.NOTE_OUTAGE)
        self._take_unsent = client.register_script(scripts.TAKE_UNSENT)

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
    def _workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def _unsent(self) -> str:
        return f"{self.prefix}unsent"

    @property
    def _outages(self) -> str:
        return f"{self.prefix}outages"

    @property
    def _purge_due(self) -> str:
        return f"{self.prefix}purge_due"

    # -- jobs -------------------------------------------------------------------------------
    def create(
        self,
        image: bytes,
        options: Mapping[str, Any],
        image_meta: Mapping[str, Any],
        owner: str | None = None,
    ) -> JobRecord:
        """Store a new queued job and its image (same TTL); returns the record. `owner`: the
        caller's id (never an API key itself), or None for a job anyone may read."""
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
        if owner:
            fields["owner"] = owner
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._job(job_id), mapping=fields)
        pipe.expire(self._job(job_id), self.ttl_s)
        pipe.set(self._image(job_id), image, ex=self.ttl_s)
        pipe.zadd(self._unsent, {job_id: time.time()})
        pipe.execute()
        return JobRecord(
            job_id=job_id,
            status=JobStatus.QUEUED,
            created_at=stamp,
            updated_at=stamp,
            options=dict(options),
            image=dict(image_meta),
            owner=owner or None,
        )

    def owner_salt(self) -> bytes:
        """The random key of the owner hashes, the same for every API replica on this Redis:
        made by the first caller (SET NX), read by all. Read on every use rather than cached,
        so that replicas cannot disagree after Redis lost its data."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(f"{self.prefix}owner_salt", secrets.token_hex(32), nx=True)
        pipe.get(f"{self.prefix}owner_salt")
        _, salt = pipe.execute()
        return bytes(salt)

    def mark_sent(self, job_id: str) -> None:
        """The job's task is with the broker: it is no longer at risk of being stranded."""
        self.client.zrem(self._unsent, job_id)

    def mark_unsent(self, job_id: str) -> None:
        """A queued job whose task could not be sent: `take_unsent` hands it out next."""
        self.client.zadd(self._unsent, {job_id: 0})

    def take_unsent(self, older_than_s: float) -> list[str]:
        """Queued jobs created more than `older_than_s` ago whose task was never sent (the
        API stopped between `create` and `mark_sent`). Each is returned once; send it."""
        ids = self._take_unsent(keys=[self._unsent], args=[older_than_s, self.prefix])
        return [_text(i) for i in ids]

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.client.hgetall(self._job(job_id))
        if not raw or b"status" not in raw:
            return None
        return record_from_hash(job_id, {_text(k): _text(v) for k, v in raw.items()})

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
        keys = [self._job(job_id), self._running]
        ok, before = self._claim(keys=keys, args=[worker, now_iso(), job_id])
        return bool(ok), JobStatus(before.decode()) if before else None

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
        pipe.zrem(self._unsent, job_id)
        pipe.set(self._purge_due, 1)
        removed, *_ = pipe.execute()
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
        keys = [self._job(job_id), self._running, self._image(job_id), self._purge_due]
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

    def reap(self, max_attempts: int, lease_s: float = 0.0) -> list[tuple[str, JobStatus]]:
        """Re-queue running jobs whose worker stopped beating; fail one whose workers died
        under it `max_attempts` times (a lease that ran out while Redis was unreachable is
        not a death: see `note_outage`; lease_s is the heartbeat TTL, to find the worker's
        last beat). Returns (job id, new status) for each job touched."""
        error = json.dumps(
            {
                "code": "worker_lost",
                "message": f"the worker running this job died {max_attempts} time(s); "
                "the input may crash the pipeline (check the worker logs)",
            }
        )
        rows = self._reap(
            keys=[self._running, self._workers, self._outages, self._purge_due],
            args=[self.prefix, max_attempts, now_iso(), error, lease_s],
        )
        return [(i.decode(), JobStatus(s.decode())) for i, s in rows]

    def note_outage(self, seconds: float) -> None:
        """Record that this worker could not reach Redis for the last `seconds` (its last good
        beat until now), so that leases which ran out meanwhile do not count as deaths."""
        self._note_outage(keys=[self._outages], args=[seconds])

    def compact(self, every_s: float) -> bool:
        """Rewrite Redis's append-only file if something was deleted since the last rewrite
        and none was started in the last `every_s` seconds (by any worker), so deleted images
        leave the disk too. True if a rewrite was started. Without AOF: nothing to do."""
        if not self.client.exists(self._purge_due):
            return False
        if not self.client.set(f"{self.prefix}compact_lock", 1, nx=True, px=int(every_s * 1000)):
            return False
        try:
            appendonly = self.client.config_get("appendonly").get("appendonly")
        except redis.ResponseError:  # CONFIG disabled (some managed Redis): its own rewrites
            appendonly = None
        self.client.delete(self._purge_due)  # deletions from now on wait for the next rewrite
        if _text(appendonly or b"no") != "yes":
            return False
        try:
            self.client.bgrewriteaof()
        except redis.ResponseError as exc:  # one already running: try again next time
            self.client.set(self._purge_due, 1)
            if "in progress" not in str(exc):
                raise
            return False
        return True

    def running_jobs(self) -> set[str]:
        return {_text(m) for m in self.client.smembers(self._running)}

    def running_jobs_of(self, worker: str) -> list[str]:
        """Ids of the running jobs whose lease `worker` holds."""
        ids = sorted(self.running_jobs())
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._job(job_id), "worker")
        owners = pipe.execute()
        return [j for j, w in zip(ids, owners, strict=True) if w is not None and _text(w) == worker]

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

    # -- statistics ---------------------------------------------------------------------------
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
