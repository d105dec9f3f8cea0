"""Cached BlazePose outputs: the frozen backbone run once per synthetic person and view.

A BlazePose regressor's backbone (`model.backbones.LandmarkEncoder`) reads BlazePose's output
vector, which never changes while the heads train, so `cache_features` computes it once for
each person of a data set, for `views` augmented views (flip, box shift and scale, drawn
from (seed, view, index)), exactly as the worker does at serving time: an upright ROI around
the CLIFF box (`model.blazepose.roi_from_cliff_boxes`), the landmark network, the head's
input vector (`head_features`) and BlazePose's COCO-17 keypoints. The labels are those of the
augmented view (`training.datasets.to_sample`).

On disk, ``OUT/shard_XXXXX.npz`` (one per `SHARD` people of one view, written atomically, so
an interrupted run resumes at the first missing shard) and ``OUT/features.json`` (what was
cached from where). `FeatureDataset` serves them to the training loop as `HMRSample`s whose
`image` is the (FEATURE_DIM,) vector; item (index, epoch) reads view epoch % views.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training.augment import AugmentConfig, augment_and_crop, sample_params
from training.datasets import HMRDataset, HMRSample, to_sample

log = logging.getLogger(__name__)

MANIFEST = "features.json"
SHARD = 1000
# Views keep flips, shifts and scales; rotation and occluders act on the crop only, and
# BlazePose reads the full image.
CACHE_AUGMENT = AugmentConfig(rotation_prob=0.0, occlusion_prob=0.0, color=0.0)
KEYPOINTS_FIELD = "blazepose_keypoints"  # (17, 3) COCO-17 px, BlazePose's own


def is_feature_cache(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def open_dataset(sources: list[str] | tuple[str, ...] | str) -> HMRDataset | FeatureDataset:
    """Training data: a feature cache folder (one) as a `FeatureDataset`, else images."""
    items = [sources] if isinstance(sources, str) else list(sources)
    caches = [s for s in items if is_feature_cache(s)]
    if not caches:
        return HMRDataset(items)
    if len(items) > 1:
        raise ValueError(
            f"a feature cache is used alone, got {items}; cache the sources together "
            "(`metahmr data features --data A --data B --out DIR`)"
        )
    return FeatureDataset(caches[0])


def _shard_path(out: Path, view: int, shard: int) -> Path:
    return out / f"view{view}_shard_{shard:05d}.npz"


def cache_features(
    sources: list[str],
    out: str | Path,
    views: int = 1,
    variant: str = "full",
    seed: int = 0,
    augment: bool = True,
    workers: int = 1,
    limit: int | None = None,
) -> Path:
    """Cache BlazePose features of every person in `sources` (see the module docstring).

    views: augmented views per person (view 0 is un-augmented when augment is False).
    workers: processes (each runs BlazePose on one thread). limit: the first N people only.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = HMRDataset(sources)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    jobs = [
        (view, shard)
        for view in range(views)
        for shard in range((n + SHARD - 1) // SHARD)
        if not _shard_path(out, view, shard).is_file()
    ]
    log.info("caching %d people x %d views from %s: %d shards to write", n, views,
             ", ".join(sources), len(jobs))  # fmt: skip
    args = [(sources, str(out), view, shard, n, variant, seed, augment) for view, shard in jobs]
    if workers > 1 and len(args) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for done in pool.imap_unordered(_cache_shard, args):
                log.info("wrote %s", done)
    else:
        for a in args:
            log.info("wrote %s", _cache_shard(a))
    manifest = {
        "sources": [str(s) for s in sources], "people": n, "views": views, "variant": variant,
        "seed": seed, "augment": augment, "shard": SHARD,
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _cache_shard(args: tuple[Any, ...]) -> str:
    from model.blazepose import (
        BlazePose,
        coco17_keypoints,
        head_features,
        roi_from_cliff_boxes,
    )

    sources, out, view, shard, n, variant, seed, augment = args
    torch.set_num_threads(1)
    dataset = HMRDataset(sources)
    bp = BlazePose(variant, threads=1)
    rows: dict[str, list[np.ndarray]] = {}
    for index in range(shard * SHARD, min(n, (shard + 1) * SHARD)):
        try:
            person = dataset.person(index)
        except (OSError, ValueError, SyntaxError) as exc:
            log.warning("skipping unreadable sample %d: %s", index, exc)
            continue
        rng = np.random.default_rng([seed, view, index])
        params = sample_params(rng, CACHE_AUGMENT)
        if not augment:
            params = replace(params, flip=False, shift=(0.0, 0.0), scale=1.0)
        crop, person = augment_and_crop(rng, person, params)
        roi = roi_from_cliff_boxes(person.center[None], np.array([person.box_size]))
        lm = bp.landmarks(person.image, roi)
        sample = to_sample(crop, person, index)
        feats = head_features(lm, person.center[None], np.array([person.box_size]))[0]
        for f in fields(HMRSample):
            value = feats if f.name == "image" else getattr(sample, f.name).numpy()
            rows.setdefault(f.name, []).append(np.asarray(value))
        rows.setdefault(KEYPOINTS_FIELD, []).append(coco17_keypoints(lm)[0])
    path = _shard_path(Path(out), view, shard)
    tmp = path.with_suffix(".tmp.npz")
    arrays: dict[str, Any] = {k: np.stack(v) for k, v in rows.items()}
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return str(path)


@cache
def cached_blazepose_keypoints(folder: str) -> np.ndarray:
    """(N, 17, 3) view 0's BlazePose keypoints of a cache, by dataset index."""
    ds = FeatureDataset(folder)
    out = np.zeros((int(ds.arrays[0]["index"].max()) + 1, 17, 3), np.float32)
    out[ds.arrays[0]["index"]] = ds.blazepose_keypoints()
    return out


class FeatureDataset(Dataset):
    """A feature cache as training samples: item (index, epoch) -> `HMRSample` of view
    epoch % views (its `image` is the head's input vector). `keypoints(i)` are BlazePose's."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not is_feature_cache(folder):
            raise FileNotFoundError(
                f"{folder} is not a feature cache (no {MANIFEST}); write one with "
                "`metahmr data features --data DATA --out DIR`"
            )
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.views = int(self.manifest["views"])
        self.arrays: list[dict[str, np.ndarray]] = []
        for view in range(self.views):
            shards = sorted(folder.glob(f"view{view}_shard_*.npz"))
            parts = [dict(np.load(s)) for s in shards]
            self.arrays.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        self.n = len(self.arrays[0]["index"])
        self.feature_dim = int(self.arrays[0]["image"].shape[1])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | tuple[int, int]) -> HMRSample:
        index, epoch = (key, 0) if isinstance(key, int) else key
        a = self.arrays[epoch % self.views]
        return HMRSample(**{f.name: torch.as_tensor(np.asarray(a[f.name][index])) for f in fields(HMRSample)})

    def blazepose_keypoints(self, view: int = 0) -> np.ndarray:
        """(N, 17, 3) BlazePose's COCO-17 keypoints of each person (full-image pixels)."""
        return self.arrays[view][KEYPOINTS_FIELD]
