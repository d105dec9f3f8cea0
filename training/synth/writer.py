"""Sharded, resumable, deterministic writer for synthetic data sets.

Layout of an output folder:
    manifest.json                       what was asked for (split, seed, num, shard size)
    images/{split}/{shard:05d}/{index:08d}.jpg
    annotations/{split}_{shard:05d}.npz  one per shard, SPIN/CLIFF field names

A shard's annotation file is written (atomically) only after all its images, so a killed
run resumes at the first shard without one. Annotation files are byte-identical for the
same arguments: every sample has its own seed, the zip entries carry a fixed timestamp.
Memory stays flat: the parent holds one shard's labels, workers hold one image.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Written into every annotation file as `layout`: tells the reader that `part` and `S` hold
# the SMPL-24 joints (2D pixels / 3D camera frame), unlike real SPIN files (SPIN's 24 joints).
FORMAT = "metahmr-synth-v1"
# Per-row fields of an annotation file, in the order they are written.
ANNOTATION_FIELDS: tuple[str, ...] = (
    "imgname", "center", "scale", "part", "S", "pose", "shape", "has_smpl", "openpose",
    "focal_length", "cam_t", "img_h", "img_w", "coco17", "bbox", "part_vis", "coco17_vis",
    "openpose_vis", "family", "index",
)


@dataclass(frozen=True)
class SynthJob:
    split: str
    num: int
    out: Path
    seed: int = 0
    workers: int = 2
    shard_size: int = 500
    long_side: int = 640

    def manifest(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("out")
        d.pop("workers")  # results do not depend on it
        return {"format": FORMAT, **d}


@dataclass(frozen=True)
class SynthSummary:
    written: int  # images rendered by this run
    skipped: int  # images in shards that were already complete
    shards: int
    seconds: float
    startup_seconds: float  # until the first image arrived (process start, model loading)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """Throughput after start-up: what a long run gets."""
        busy = self.seconds - self.startup_seconds
        return (self.written - 1) / busy if self.written > 1 and busy > 0 else 0.0


def save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """np.savez, but reproducible (fixed zip timestamps) and atomic (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def shard_path(out: Path, split: str, shard: int) -> Path:
    return out / "annotations" / f"{split}_{shard:05d}.npz"


def image_name(split: str, index: int, shard_size: int) -> str:
    """Image path relative to the data set folder (the `imgname` field)."""
    return f"images/{split}/{index // shard_size:05d}/{index:08d}.jpg"


def _check_manifest(job: SynthJob) -> None:
    path = job.out / "manifest.json"
    wanted = job.manifest()
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            raise ValueError(
                f"{job.out} already holds a different data set ({found}); asked for {wanted}. "
                "Use another --out folder or delete this one."
            )
        return
    job.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")


# -- worker side -------------------------------------------------------------------------

_ENGINE = None
_JOB: SynthJob | None = None


def _init_worker(job: SynthJob, single_threaded_gl: bool = False) -> None:
    global _ENGINE, _JOB
    if single_threaded_gl:
        # Mesa's llvmpipe starts a raster thread per core in every process; with one worker
        # per core they only fight each other (see the render benchmark).
        os.environ.setdefault("LP_NUM_THREADS", "1")
    from training.synth.engine import SynthEngine
    from training.synth.splits import split_config

    _JOB = job
    _ENGINE = SynthEngine(split_config(job.split, job.long_side))


def _render_one(index: int) -> dict[str, Any]:
    from PIL import Image

    assert _ENGINE is not None and _JOB is not None, "worker not initialised"
    sample = _ENGINE.sample(_JOB.seed, index)
    name = image_name(_JOB.split, index, _JOB.shard_size)
    path = _JOB.out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(sample.image).save(tmp, format="JPEG", quality=sample.jpeg_quality)
    os.replace(tmp, path)
    return {"imgname": np.str_(name), **sample.labels}


# -- parent side -------------------------------------------------------------------------


def _pending_indices(job: SynthJob, shards: list[int]) -> Iterator[int]:
    for shard in shards:
        yield from range(shard * job.shard_size, min(job.num, (shard + 1) * job.shard_size))


def _stack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: np.stack([np.asarray(r[name]) for r in rows]) for name in ANNOTATION_FIELDS}


def synthesize(job: SynthJob, progress: bool = True) -> SynthSummary:
    """Render `job.num` samples of `job.split` into `job.out`, skipping finished shards."""
    from tqdm import tqdm

    if job.num < 1 or job.shard_size < 1 or job.workers < 0:
        raise ValueError(f"num and shard_size must be >= 1 and workers >= 0 (got {job})")
    _check_manifest(job)
    (job.out / "annotations").mkdir(parents=True, exist_ok=True)
    total_shards = (job.num + job.shard_size - 1) // job.shard_size
    pending = [s for s in range(total_shards) if not shard_path(job.out, job.split, s).exists()]
    todo = sum(min(job.num, (s + 1) * job.shard_size) - s * job.shard_size for s in pending)
    skipped = job.num - todo
    if skipped:
        log.info("resuming: %d of %d shards already complete", total_shards - len(pending), total_shards)
    start = time.perf_counter()
    bar = tqdm(total=job.num, initial=skipped, unit="img", disable=not progress, desc=job.split)
    rows: list[dict[str, Any]] = []
    first = 0.0
    shard_iter = iter(pending)
    current = next(shard_iter, None)
    with _results(job, _pending_indices(job, pending)) as results:
        for row in results:
            rows.append(row)
            first = first or time.perf_counter() - start
            bar.update(1)
            assert current is not None
            end = min(job.num, (current + 1) * job.shard_size)
            if int(row["index"]) == end - 1:
                save_npz(shard_path(job.out, job.split, current), {**_stack(rows), "layout": np.str_(FORMAT)})
                rows = []
                current = next(shard_iter, None)
    bar.close()
    return SynthSummary(todo, skipped, len(pending), time.perf_counter() - start, first)


class _results:
    """Context manager yielding rendered rows in index order, in-process or from a pool."""

    def __init__(self, job: SynthJob, indices: Iterator[int]) -> None:
        self.job, self.indices = job, indices
        self.pool: Any = None

    def __enter__(self) -> Iterator[dict[str, Any]]:
        if self.job.workers == 0:
            _init_worker(self.job)
            return (_render_one(i) for i in self.indices)
        import multiprocessing as mp

        # spawn: OpenGL contexts and torch thread pools do not survive fork.
        self.pool = mp.get_context("spawn").Pool(
            self.job.workers, initializer=_init_worker, initargs=(self.job, True)
        )
        return self.pool.imap(_render_one, self.indices, chunksize=2)

    def __exit__(self, *exc: object) -> None:
        global _ENGINE
        if self.pool is not None:
            self.pool.terminate() if exc[0] is not None else self.pool.close()
            self.pool.join()
        elif _ENGINE is not None:
            _ENGINE.close()
            _ENGINE = None
