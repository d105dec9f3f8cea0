"""`metahmr bench synth`: images/s of the synthetic engine, and memory as N grows."""

from __future__ import annotations

import logging
import os
import platform
import resource
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TARGET_IMAGES_PER_SECOND = 15.0


def run_bench(num: int, workers: int, split: str, doc: Path | None) -> int:
    """Render `num` images twice over (N and 2N into fresh folders: memory must not grow),
    report steady-state images/s, and write the `synth` section of `doc` when given."""
    from training.synth.writer import SynthJob, synthesize

    results = []
    for n in (num // 2, num):
        with tempfile.TemporaryDirectory() as tmp:
            job = SynthJob(split=split, num=n, out=Path(tmp), seed=0, workers=workers, shard_size=50)
            summary = synthesize(job, progress=False)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append((n, summary, peak_mb, parent_mb))
        log.info("N=%d: %.2f images/s steady (%.2f overall), start-up %.1f s, worker peak RSS %.0f MB",
                 n, summary.steady_images_per_second, summary.images_per_second,
                 summary.startup_seconds, peak_mb)
    n, best, peak_mb, parent_mb = results[-1]
    rate = best.steady_images_per_second
    lines = [
        f"`metahmr bench synth --num {num} --workers {workers} --split {split}` "
        f"on {platform.machine()} with {os.cpu_count()} CPU cores; default image size "
        "(long side 640 px, common aspect ratios), JPEG + SPIN/CLIFF annotations to disk.",
        "",
        "| images | workers | images/s (steady) | images/s (incl. start-up) | start-up s | peak RSS of a worker (MB) | parent RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n_i, s, peak, parent in results:
        lines.append(
            f"| {n_i} | {workers} | {s.steady_images_per_second:.1f} | {s.images_per_second:.1f} "
            f"| {s.startup_seconds:.1f} | {peak:.0f} | {parent:.0f} |"
        )
    verdict = "meets" if rate >= TARGET_IMAGES_PER_SECOND else "misses"
    lines += ["", f"Target >= {TARGET_IMAGES_PER_SECOND:.0f} images/s with 2 workers: {verdict} it ({rate:.1f})."]
    body = "\n".join(lines)
    if doc is not None:
        from bench.docs import write_section

        write_section(doc, "synth", body)
        log.info("wrote the synth section of %s", doc)
    log.info("%s", body)
    return 0
