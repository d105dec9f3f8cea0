"""`metahmr bench reliability`: what the service does when its parts fail, on stacks started
with `metahmr serve` (a subprocess each, its own state directory, the diagnostics pipeline,
so that the figures are the service's and not the model's).

- worker kill -9: a running job's worker (its Celery main process and pool child) is
  SIGKILLed; `serve` starts a new one and the job must still succeed;
- poison job: the worker is killed every time one job runs; it must fail as `worker_lost`
  after `max_attempts` runs, and only that job;
- Redis kill -9: the embedded Redis is SIGKILLed with jobs queued and running; every record
  must survive, the API must answer JSON (503) meanwhile, be ready again within 30 s, and
  every job must succeed;
- serve restart: `serve` is stopped (SIGTERM) with jobs queued and started again on the same
  state directory; every job must succeed;
- load: jobs from 8 and 32 concurrent clients; every job must succeed.

Each scenario's numbers are counted here, from HTTP answers only (plus the process table to
find whom to kill). The section it writes names the command that wrote it.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.serve_stack import serve_subprocess
from bench.service import machine_info, percentile

log = logging.getLogger(__name__)

SECTION = "reliability"
REPO = Path(__file__).resolve().parents[1]
FINAL = ("succeeded", "failed", "canceled")
READY_WITHIN_S = 30.0  # the bar for a killed Redis


@dataclass(frozen=True)
class ReliabilityConfig:
    kills: int = 10
    redis_jobs: int = 15
    restart_jobs: int = 6
    load_requests: int = 200
    load_clients: tuple[int, ...] = (8, 32)
    # "onnx": the load runs the real model on the docs' example photo and keypoints.
    load_pipeline: str = "echo"
    # Faster than the defaults (2 s / 10 s) so a dead worker is noticed in seconds.
    heartbeat_interval_s: float = 0.5
    heartbeat_ttl_s: float = 3.0
    echo_delay_s: float = 1.0  # a job's run time in the fault scenarios
    job_timeout_s: float = 120.0


def _photo() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 99, 199)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Stack:
    """One `metahmr serve` process and an HTTP client for it."""

    proc: subprocess.Popen[bytes]
    url: str
    http: httpx.Client

    def children(self) -> list[Any]:
        import psutil

        return [
            p for p in psutil.Process(self.proc.pid).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE
        ]  # fmt: skip

    def worker_processes(self) -> list[Any]:
        """The Celery main processes `serve` started, each with its pool children."""
        return [p for p in self.children() if "worker.celery_app" in " ".join(p.cmdline())]

    def redis_process(self) -> Any:
        return next(p for p in self.children() if "redis-server" in " ".join(p.cmdline()))

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def submit(self, image: bytes) -> str:
        response = self.http.post("/recover", files={"image": ("photo.png", image)})
        response.raise_for_status()
        return str(response.json()["job_id"])

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job view, or None while the API cannot answer (503, no connection)."""
        try:
            response = self.http.get(f"/jobs/{job_id}", timeout=5)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        return dict(response.json())

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.status(job_id)
            if job is not None and job["status"] in FINAL:
                return job
            time.sleep(poll_s)
        return {"job_id": job_id, "status": "timed_out"}

    def wait_running(self, job_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.status(job_id)
            if job is not None and job["status"] == "running":
                return True
            if job is not None and job["status"] in FINAL:
                return False
            time.sleep(0.05)
        return False


@contextmanager
def serve(state: Path, config: ReliabilityConfig, **env: str) -> Iterator[Stack]:
    """`metahmr serve --workers 1` with the diagnostics pipeline, state in `state`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    full |= {
        "METAHMR_PIPELINE": "echo",
        "METAHMR_STATE_DIR": str(state),
        "METAHMR_RATE_LIMIT_PER_MIN": "0",
        "METAHMR_HEARTBEAT_INTERVAL_S": str(config.heartbeat_interval_s),
        "METAHMR_HEARTBEAT_TTL_S": str(config.heartbeat_ttl_s),
        "METAHMR_LOG_LEVEL": "WARNING",
        **env,
    }
    state.parent.mkdir(parents=True, exist_ok=True)
    # Its output goes to serve.log beside the state (what to read when it does not start).
    with (state.parent / "serve.log").open("ab") as log_file:
        with serve_subprocess(full, log_file, timeout_s=120, args=()) as (proc, url):
            with httpx.Client(base_url=url) as http:
                yield Stack(proc, url, http)


def _kill_worker(stack: Stack) -> None:
    for main in stack.worker_processes():
        for proc in [*main.children(recursive=True), main]:
            try:
                proc.send_signal(signal.SIGKILL)
            except Exception:  # already gone
                pass


def worker_kills(stack: Stack, config: ReliabilityConfig) -> dict[str, Any]:
    """Kill the worker under a running job, `kills` times; each job must still succeed."""
    image = _photo()
    recover_s: list[float] = []
    outcomes: Counter[str] = Counter()
    for _ in range(config.kills):
        job_id = stack.submit(image)
        if not stack.wait_running(job_id, config.job_timeout_s):
            outcomes["never_ran"] += 1
            continue
        _kill_worker(stack)
        killed = time.monotonic()
        job = stack.wait(job_id, config.job_timeout_s)
        outcomes[job["status"]] += 1
        if job["status"] == "succeeded":
            recover_s.append(time.monotonic() - killed)
    return {
        "killed": config.kills,
        "outcomes": dict(outcomes),
        "kill_to_success_p50_s": percentile(recover_s, 50) if recover_s else None,
        "kill_to_success_max_s": max(recover_s) if recover_s else None,
    }


def poison_job(stack: Stack, config: ReliabilityConfig, max_attempts: int = 3) -> dict[str, Any]:
    """Kill the worker whenever one job runs; it must fail after `max_attempts` runs, and a
    job sent after it must succeed."""
    job_id = stack.submit(_photo())
    kills = 0
    while kills <= max_attempts and stack.wait_running(job_id, config.job_timeout_s):
        _kill_worker(stack)
        kills += 1
        time.sleep(0.3)  # a write the worker had sent before it died lands first
        before = (stack.status(job_id) or {}).get("updated_at")
        # It reads "running" until the reaper notices: wait for its next life (or its end).
        deadline = time.monotonic() + config.job_timeout_s
        while time.monotonic() < deadline:
            job = stack.status(job_id)
            if job is not None and job["updated_at"] != before:
                break
            time.sleep(0.05)
    job = stack.wait(job_id, config.job_timeout_s)
    after = stack.wait(stack.submit(_photo()), config.job_timeout_s)
    return {
        "kills": kills,
        "status": job["status"],
        "error_code": (job.get("error") or {}).get("code"),
        "next_job": after["status"],
    }


def redis_kill(stack: Stack, config: ReliabilityConfig) -> dict[str, Any]:
    """SIGKILL the embedded Redis with jobs queued and running; poll every job meanwhile."""
    jobs = [stack.submit(_photo()) for _ in range(config.redis_jobs)]
    stack.wait_running(jobs[0], config.job_timeout_s)
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=stack.url, timeout=5) as http:
            while not stop.is_set():
                for job_id in jobs:
                    try:
                        response = http.get(f"/jobs/{job_id}")
                    except httpx.TransportError:
                        answers["no connection"] += 1
                        continue
                    try:
                        response.json()
                        kind = "JSON"
                    except ValueError:
                        kind = "not JSON"
                    answers[f"{response.status_code} {kind}"] += 1
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stack.redis_process().send_signal(signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(0.2)  # let serve notice; /readyz may still answer from a pooled connection
    while not stack.ready() and time.monotonic() - killed < 120:
        time.sleep(0.1)
    ready_s = time.monotonic() - killed
    outcomes = Counter(stack.wait(j, config.job_timeout_s)["status"] for j in jobs)
    stop.set()
    poller.join(timeout=10)
    return {
        "jobs": len(jobs),
        "records_after": sum(stack.status(j) is not None for j in jobs),
        "outcomes": dict(outcomes),
        "ready_after_s": ready_s,
        "answers_meanwhile": dict(answers),
    }


def serve_restart(state: Path, config: ReliabilityConfig) -> dict[str, Any]:
    """Stop `serve` with jobs queued, start it again on the same state; all must succeed."""
    delay = {"METAHMR_ECHO_DELAY_S": str(config.echo_delay_s)}
    with serve(state, config, **delay) as stack:
        jobs = [stack.submit(_photo()) for _ in range(config.restart_jobs)]
        queued = sum((stack.status(j) or {}).get("status") == "queued" for j in jobs)
        stack.proc.send_signal(signal.SIGTERM)
        stopped = stack.proc.wait(timeout=60)
    start = time.monotonic()
    with serve(state, config, **delay) as stack:
        up_s = time.monotonic() - start
        outcomes = Counter(stack.wait(j, config.job_timeout_s)["status"] for j in jobs)
    return {
        "jobs": len(jobs),
        "queued_at_stop": queued,
        "serve_exit_status": stopped,
        "restart_s": up_s,
        "outcomes": dict(outcomes),
    }


def _load_request(pipeline: str) -> tuple[bytes, dict[str, Any]]:
    """The load's image and options: the docs' example photo and its COCO-17 keypoints for
    the model, the small test picture for the diagnostics pipeline."""
    if pipeline == "echo":
        return _photo(), {}
    from bench.service import DEFAULT_IMAGE, DEFAULT_KEYPOINTS, request_options

    return DEFAULT_IMAGE.read_bytes(), request_options(DEFAULT_KEYPOINTS)


def load(stack: Stack, requests: int, clients: int, config: ReliabilityConfig) -> dict[str, Any]:
    """`requests` jobs from `clients` threads, each submitting then polling its job."""
    image, options = _load_request(config.load_pipeline)
    form = {"options": json.dumps(options)} if options else None
    lock = threading.Lock()
    todo = list(range(requests))
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    def client() -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                start = time.monotonic()
                response = http.post(
                    "/recover", files={"image": ("photo", image)}, data=form
                )
                if response.status_code != 202:
                    with lock:
                        outcomes[f"submit {response.status_code}"] += 1
                    continue
                job_id = response.json()["job_id"]
                status = "timed_out"
                while time.monotonic() - start < config.job_timeout_s:
                    answer = http.get(f"/jobs/{job_id}")
                    if answer.status_code != 200:
                        status = f"poll {answer.status_code}"
                        break
                    if answer.json()["status"] in FINAL:
                        status = answer.json()["status"]
                        break
                    time.sleep(0.05)
                with lock:
                    outcomes[status] += 1
                    if status == "succeeded":
                        latencies.append(time.monotonic() - start)

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    return {
        "requests": requests,
        "clients": clients,
        "outcomes": dict(outcomes),
        "jobs_per_s": outcomes["succeeded"] / wall,
        "latency_p50_s": percentile(latencies, 50) if latencies else None,
        "latency_p95_s": percentile(latencies, 95) if latencies else None,
    }


def run_benchmark(config: ReliabilityConfig) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "config": config.__dict__ | {
        "load_clients": list(config.load_clients)}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="metahmr-reliability-") as tmp:
        root = Path(tmp)
        delay = {"METAHMR_ECHO_DELAY_S": str(config.echo_delay_s)}
        with serve(root / "faults" / "state", config, **delay) as stack:
            log.info("worker kill -9 x %d", config.kills)
            report["worker_kills"] = worker_kills(stack, config)
            log.info("poison job")
            report["poison"] = poison_job(stack, config)
            log.info("Redis kill -9 with %d jobs", config.redis_jobs)
            report["redis_kill"] = redis_kill(stack, config)
        log.info("serve restart with %d jobs", config.restart_jobs)
        report["serve_restart"] = serve_restart(root / "restart" / "state", config)
        pipeline = {"METAHMR_PIPELINE": config.load_pipeline}
        with serve(root / "load" / "state", config, **pipeline) as stack:
            report["load"] = []
            for clients in config.load_clients:
                log.info("load: %d jobs from %d clients", config.load_requests, clients)
                report["load"].append(load(stack, config.load_requests, clients, config))
    return report


def _fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def render_markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    kills, poison = report["worker_kills"], report["poison"]
    rk, rs = report["redis_kill"], report["serve_restart"]
    under_load = (
        "the same pipeline with no delay"
        if c["load_pipeline"] == "echo"
        else "the shipped model (`METAHMR_PIPELINE=onnx`) on the docs' example photo with its "
        "keypoints"
    )
    lines = [
        f"Written by `{report['command']}`: `metahmr serve --workers 1` stacks (subprocesses, "
        "their own state directories) with the diagnostics pipeline (`METAHMR_PIPELINE=echo`, "
        f"{c['echo_delay_s']:g} s a job) in the fault scenarios; under load {under_load}; "
        f"heartbeat every {c['heartbeat_interval_s']:g} s with a {c['heartbeat_ttl_s']:g} s lease. "
        f"Machine: {report['machine']['cpu_count']} cores, load average at start "
        f"{report['machine'].get('load_average_at_start')} (shared).",
        "",
        "| scenario | what happened |",
        "|---|---|",
        f"| worker kill -9 under a running job, x{kills['killed']} | {_counts(kills['outcomes'])}; "
        f"kill to success p50 {_fmt(kills['kill_to_success_p50_s'])} s, max "
        f"{_fmt(kills['kill_to_success_max_s'])} s |",
        f"| poison job (worker killed whenever it runs) | {poison['kills']} kills, then "
        f"{poison['status']} ({poison['error_code']}); the next job {poison['next_job']} |",
        f"| embedded Redis kill -9, {rk['jobs']} jobs queued/running | records after: "
        f"{rk['records_after']}/{rk['jobs']}; jobs: {_counts(rk['outcomes'])}; /readyz 200 again "
        f"{_fmt(rk['ready_after_s'])} s after the kill (first asked 0.2 s after it); "
        f"`GET /jobs/{{id}}` answers meanwhile: {_counts(rk['answers_meanwhile'])} |",
        f"| `serve` stopped (SIGTERM) with {rs['jobs']} jobs ({rs['queued_at_stop']} queued), "
        f"started again | exit status {rs['serve_exit_status']}; ready again after "
        f"{_fmt(rs['restart_s'])} s; jobs: {_counts(rs['outcomes'])} |",
    ]
    for row in report["load"]:
        lines.append(
            f"| load: {row['requests']} jobs from {row['clients']} concurrent clients | "
            f"{_counts(row['outcomes'])}; {_fmt(row['jobs_per_s'])} jobs/s, latency p50 "
            f"{_fmt(row['latency_p50_s'], 2)} s, p95 {_fmt(row['latency_p95_s'], 2)} s |"
        )
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = ["metahmr", "bench", "reliability", "--kills", str(args.kills)]
    parts += ["--redis-jobs", str(args.redis_jobs), "--restart-jobs", str(args.restart_jobs)]
    parts += ["--load-requests", str(args.load_requests), "--load-clients", args.load_clients]
    parts += ["--load-pipeline", args.load_pipeline]
    return " ".join(shlex.quote(p) for p in parts)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.docs import write_section

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        clients = tuple(int(n) for n in args.load_clients.split(",") if n)
    except ValueError:
        clients = ()
    if not clients or min(clients) < 1 or min(args.kills, args.load_requests) < 0:
        log.error("--load-clients takes positive integers, e.g. 8,32")
        return 2
    config = ReliabilityConfig(
        kills=args.kills,
        redis_jobs=args.redis_jobs,
        restart_jobs=args.restart_jobs,
        load_requests=args.load_requests,
        load_clients=clients,
        load_pipeline=args.load_pipeline,
    )
    report = run_benchmark(config)
    report["command"] = command_line(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    text = render_markdown(report)
    log.info("\n%s", text)
    if not args.no_doc:
        write_section(Path(args.doc), SECTION, text)
        log.info("wrote section %r of %s", SECTION, args.doc)
    return 0
