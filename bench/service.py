"""`metahmr bench service`: what the service path adds to the pipeline's own compute.

Starts the stack the way `metahmr serve` does (embedded Redis unless METAHMR_REDIS_URL is
set, worker processes, the API under uvicorn, on a free local port), then sends the docs'
example photo (640x480) with its COCO-17 keypoints:

- sequential: `requests` jobs one after another from one client;
- concurrent: `requests` jobs from `clients` threads (one HTTP client each) at once;

after `warmup` untimed jobs (the first job of a worker loads its model). Per job:
end-to-end latency (submit -> succeeded job with its result fetched, polling at a fixed
interval), the pipeline's own compute (the result's `timings_ms.total`, measured in the
worker) and the service overhead = latency - compute. Only HTTP: this module imports
neither torch nor the model, and reads the model's name and version from the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.client import Backoff, MetahmrClient
from service.config import Settings, get_settings
from service.serve import LocalStack

log = logging.getLogger(__name__)

SECTION = "service"
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
DEFAULT_IMAGE = DOCS_IMG / "example.jpg"
DEFAULT_KEYPOINTS = DOCS_IMG / "example_keypoints.json"
# The service path may add at most this fraction of the pipeline's compute (p50, sequential).
TARGET_OVERHEAD_RATIO = 0.20


@dataclass(frozen=True)
class BenchConfig:
    requests: int = 50
    clients: int = 8
    pipeline: str = "onnx"
    model_dir: Path | None = None  # None: the worker's own resolution (the shipped model)
    # Fixed poll interval: the client's default backoff (50 ms, x1.5, up to 2 s) would add
    # up to ~half a job's time in polling granularity alone.
    poll_s: float = 0.01
    warmup: int = 2
    workers: int = 1
    image: Path = DEFAULT_IMAGE
    keypoints: Path | None = DEFAULT_KEYPOINTS
    job_timeout_s: float = 600.0


@dataclass(frozen=True)
class Sample:
    """One job as the client saw it: times in ms."""

    latency_ms: float  # submit sent -> succeeded job (with result) received
    submit_ms: float  # POST /recover round trip
    compute_ms: float  # the result's timings_ms.total, measured inside the worker


@dataclass
class _BenchStack(LocalStack):
    """`metahmr serve`'s stack, but instead of serving until a signal it runs `body(url)`
    against the API (on a free port) and stops."""

    body: Callable[[str], Any] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    outcome: Any = None

    def _start_redis(self) -> bool:
        started = super()._start_redis()
        self._env.update(self.extra_env)  # what the workers run: pipeline, model dir
        return started

    def _serve_api(self) -> int:
        import uvicorn

        from service.main import create_app

        config = uvicorn.Config(create_app(self.settings), host=self.host, port=0, log_config=None)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                log.error("the API did not start")
                return 1
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            if self.body is None:
                raise ValueError("_BenchStack needs a body to run")
            self.outcome = self.body(f"http://{self.host}:{port}")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        return 0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def request_options(keypoints: Path | None) -> dict[str, Any]:
    """The request options: one person with the given keypoints file ({format, points})."""
    if keypoints is None:
        return {}
    return {"people": [{"keypoints": json.loads(keypoints.read_text())}]}


def one_job(
    client: MetahmrClient, image: bytes, filename: str, options: dict[str, Any],
    backoff: Backoff, timeout_s: float,
) -> tuple[Sample, dict[str, Any]]:  # fmt: skip
    """Submit one image and wait for it; the timings and the succeeded job."""
    start = time.perf_counter()
    job_id = client.submit(image, options, filename=filename)
    submitted = time.perf_counter()
    job = client.wait(job_id, timeout_s=timeout_s, backoff=backoff)
    done = time.perf_counter()
    compute = float(job["result"]["timings_ms"]["total"])
    sample = Sample((done - start) * 1000.0, (submitted - start) * 1000.0, compute)
    return sample, job


def run_mode(
    url: str, job: Callable[[MetahmrClient], Sample], requests: int, clients: int,
    api_key: str | None = None,
) -> tuple[list[Sample], float]:  # fmt: skip
    """`requests` jobs shared by `clients` threads, each with its own HTTP client. Returns
    the samples and the wall time (s) from the first submit to the last result."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(requests):
        todo.put(i)
    samples: list[Sample] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def loop() -> None:
        with MetahmrClient(url, api_key=api_key) as client:
            while not errors:
                try:
                    todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    sample = job(client)
                except Exception as exc:  # re-raised in the caller's thread below
                    errors.append(exc)
                    return
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return samples, wall


def summarise(samples: Sequence[Sample], wall_s: float, clients: int) -> dict[str, Any]:
    latency = [s.latency_ms for s in samples]
    compute = [s.compute_ms for s in samples]
    overhead = [s.latency_ms - s.compute_ms for s in samples]
    compute_p50 = percentile(compute, 50)
    overhead_p50 = percentile(overhead, 50)
    return {
        "requests": len(samples),
        "clients": clients,
        "wall_s": wall_s,
        "images_per_s": len(samples) / wall_s,
        "latency_p50_ms": percentile(latency, 50),
        "latency_p95_ms": percentile(latency, 95),
        "submit_p50_ms": percentile([s.submit_ms for s in samples], 50),
        "compute_p50_ms": compute_p50,
        "compute_p95_ms": percentile(compute, 95),
        "overhead_p50_ms": overhead_p50,
        "overhead_p95_ms": percentile(overhead, 95),
        # The service's share relative to the pipeline's own compute, both at p50.
        "overhead_ratio_p50": overhead_p50 / compute_p50 if compute_p50 > 0 else float("inf"),
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "note": "shared machine: other processes may have been running during the timings",
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _worker_env(config: BenchConfig) -> dict[str, str]:
    env = {"METAHMR_PIPELINE": config.pipeline}
    if config.model_dir is not None:
        env["METAHMR_MODEL_DIR"] = str(config.model_dir)
    return env


def run_benchmark(config: BenchConfig, settings: Settings | None = None) -> dict[str, Any]:
    """Start the stack, time the sequential then the concurrent mode, stop the stack."""
    if config.requests < 1 or config.clients < 1:
        raise ValueError("--requests and --clients must be at least 1")
    machine = machine_info()
    # The bench's own stack: its submissions must not be rate limited (60/min by default).
    settings = (settings or get_settings()).model_copy(update={"rate_limit_per_min": 0})
    api_key = settings.api_keys[0] if settings.api_keys else None
    image = config.image.read_bytes()
    options = request_options(config.keypoints)
    backoff = Backoff(initial_s=config.poll_s, factor=1.0, max_s=config.poll_s)
    last: dict[str, Any] = {}

    def job(client: MetahmrClient) -> Sample:
        sample, succeeded = one_job(
            client, image, config.image.name, options, backoff, config.job_timeout_s
        )
        last["result"] = succeeded["result"]
        return sample

    def body(url: str) -> dict[str, Any]:
        if config.warmup:
            run_mode(url, job, config.warmup, 1, api_key)
        modes = {}
        for name, clients in (("sequential", 1), ("concurrent", config.clients)):
            samples, wall = run_mode(url, job, config.requests, clients, api_key)
            modes[name] = summarise(samples, wall, clients)
            log.info("%s: %s", name, {k: round(v, 2) for k, v in modes[name].items()})
        return modes

    env = _worker_env(config)
    stack = _BenchStack(settings, workers=config.workers, body=body, extra_env=env)
    rc = stack.run()
    if rc != 0 or stack.outcome is None:
        raise RuntimeError(
            "the benchmark did not complete (the stack did not start or was stopped); see the log above"
        )
    result = last["result"]
    sequential = stack.outcome["sequential"]
    return {
        "modes": stack.outcome,
        "target_overhead_ratio": TARGET_OVERHEAD_RATIO,
        "meets_target": sequential["overhead_ratio_p50"] <= TARGET_OVERHEAD_RATIO,
        "model": result.get("model"),
        "image": {"file": config.image.name, **result.get("image", {})},
        "people": len(result.get("people") or []),
        "keypoints_sent": config.keypoints is not None,
        "timings_ms": dict(result.get("timings_ms") or {}),
        "tto_steps_run": [
            (p.get("fit") or {}).get("steps_run") for p in result.get("people") or []
        ],
        "timings_ms_keys": sorted((result.get("timings_ms") or {}).keys()),
        "poll_interval_ms": config.poll_s * 1000.0,
        "warmup": config.warmup,
        "workers": config.workers,
        "pipeline": config.pipeline,
        "worker_env": {
            k: v
            for k, v in os.environ.items()
            if k in ("METAHMR_ONNX_THREADS", "METAHMR_TORCH_THREADS", "METAHMR_ONNX_PROVIDER")
        },
        "machine": machine,
    }


def render_markdown(report: dict[str, Any]) -> str:
    rows = [
        "| mode | requests | clients | p50 latency (ms) | p95 latency (ms) | images/s "
        "| pipeline compute p50 (ms) | overhead p50 (ms) | overhead / compute (p50) "
        "| submit p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["modes"].items():
        rows.append(
            f"| {name} | {m['requests']} | {m['clients']} | {m['latency_p50_ms']:.1f} | "
            f"{m['latency_p95_ms']:.1f} | {m['images_per_s']:.2f} | {m['compute_p50_ms']:.1f} | "
            f"{m['overhead_p50_ms']:.1f} | {m['overhead_ratio_p50']:.2f} | "
            f"{m['submit_p50_ms']:.1f} |"
        )
    machine = report["machine"]
    model = report.get("model") or {}
    image = report["image"]
    env = ", ".join(f"{k}={v}" for k, v in report["worker_env"].items()) or "defaults"
    seq = report["modes"]["sequential"]
    verdict = "meets it" if report["meets_target"] else "does not meet it"
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} cores; load average at start "
        f"{machine.get('load_average_at_start')}. {machine['note'].capitalize()}.",
        "",
        f"Stack as `metahmr serve` starts it: {report['workers']} worker (pipeline "
        f"`{report['pipeline']}`, thread settings: {env}), embedded Redis, the API under "
        f"uvicorn, client on the same machine. Model `{model.get('name')}` version "
        f"`{model.get('version')}` (TTO scope {model.get('tto_scope')}, body model "
        f"`{model.get('body_model')}`). Input `{image['file']}` {image.get('width')}x"
        f"{image.get('height')} "
        + (
            f"with keypoints for {report['people']} person"
            if report.get("keypoints_sent", True)
            else f"with no people or keypoints sent (BlazePose's detector and landmarks find "
            f"them: {report['people']} person)"
        )
        + ", default "
        f"options (TTO steps run: {report.get('tto_steps_run')}); {report['warmup']} untimed "
        "warm-up jobs first.",
        "",
        "Latency: submit -> succeeded job with its result fetched, polling `GET /jobs/{id}` "
        f"every {report['poll_interval_ms']:g} ms. Pipeline compute: the result's "
        "`timings_ms.total`, measured inside the worker. Overhead = latency - compute, per "
        "job; submit = the `POST /recover` round trip, part of it. Images/s: requests / wall "
        "time of the mode. In the concurrent mode one worker serves all clients, so "
        "queueing dominates its overhead.",
        "",
        *rows,
        "",
        f"Target: the service path adds <= {report['target_overhead_ratio']:.0%} to the "
        f"pipeline's compute at p50 (sequential): {verdict} "
        f"({seq['overhead_p50_ms']:.1f} ms on {seq['compute_p50_ms']:.1f} ms, "
        f"{seq['overhead_ratio_p50']:.0%}).",
    ]
    stages = report.get("timings_ms") or {}
    if stages:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if isinstance(v, float))
        lines += ["", f"Stage times of the last job (concurrent mode), inside the worker (ms): {parts}."]
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (written next to its results)."""
    parts = ["metahmr", "bench", "service", "--requests", str(args.requests)]
    parts += ["--clients", str(args.clients), "--pipeline", args.pipeline]
    if args.model_dir is not None:
        parts += ["--model-dir", str(args.model_dir)]
    parts += ["--poll-ms", f"{args.poll_ms:g}"]
    if getattr(args, "no_keypoints", False):
        parts += ["--no-keypoints"]
    if args.json:
        parts += ["--json", str(args.json)]
    return " ".join(shlex.quote(p) for p in parts)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.docs import write_section

    for noisy in ("httpx", "uvicorn.access"):  # one line per poll otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.requests < 1 or args.clients < 1 or args.poll_ms <= 0:
        log.error("--requests and --clients must be at least 1, --poll-ms positive")
        return 2
    config = BenchConfig(
        requests=args.requests,
        clients=args.clients,
        pipeline=args.pipeline,
        model_dir=args.model_dir,
        poll_s=args.poll_ms / 1000.0,
        keypoints=None if getattr(args, "no_keypoints", False) else DEFAULT_KEYPOINTS,
    )
    report = run_benchmark(config)
    report["command"] = command_line(args)
    seq = report["modes"]["sequential"]
    log.info(
        "sequential p50: latency %.1f ms, compute %.1f ms, overhead %.1f ms (%.0f%%): %s the "
        "<= %.0f%% target",
        seq["latency_p50_ms"], seq["compute_p50_ms"], seq["overhead_p50_ms"],
        100 * seq["overhead_ratio_p50"], "meets" if report["meets_target"] else "misses",
        100 * TARGET_OVERHEAD_RATIO,
    )  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_doc:
        name = SECTION if config.pipeline == "onnx" else f"{SECTION} ({config.pipeline})"
        write_section(Path(args.doc), name, render_markdown(report))
        log.info("wrote section %r of %s", name, args.doc)
    return 0
