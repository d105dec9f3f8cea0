"""The BlazePose feature cache: what it stores, resuming, and training a head over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.blazepose import FEATURE_DIM
from training.datasets import HMRDataset, collate_samples
from training.features import FeatureDataset, cache_features, open_dataset
from training.synth.writer import SynthJob, synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fs") / "train"
    synthesize(SynthJob("train", 6, out, seed=5, workers=0, shard_size=3), progress=False)
    return out


@pytest.fixture(scope="module")
def cache(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fs") / "cache"
    return cache_features([str(synth_dir)], out, views=2, workers=1)


def test_cache_holds_every_person_and_view_with_labels(cache: Path, synth_dir: Path) -> None:
    ds = FeatureDataset(cache)
    images = HMRDataset(synth_dir)
    assert len(ds) == len(images) and ds.views == 2 and ds.feature_dim == FEATURE_DIM
    s0, s1 = ds[(2, 0)], ds[(2, 1)]
    assert s0.image.shape == (FEATURE_DIM,) and torch.isfinite(s0.image).all()
    assert int(s0.index) == int(s1.index) == 2
    assert not torch.equal(s0.image, s1.image)  # two augmented views differ
    # BlazePose's keypoints land on the person's labelled keypoints (renders read well).
    kp, gt = ds.blazepose_keypoints(), ds.arrays[0]["keypoints2d"]
    vis = gt[..., 2] > 0
    err = np.linalg.norm(kp[..., :2] - gt[..., :2], axis=-1)
    per_person = (err * vis).sum(1) / vis.sum(1) / ds.arrays[0]["box_size"]
    assert np.median(per_person) < 0.08


def test_a_second_run_resumes_without_recomputing(cache: Path, synth_dir: Path) -> None:
    shard = next(cache.glob("view0_shard_*.npz"))
    before = shard.stat().st_mtime_ns
    cache_features([str(synth_dir)], cache, views=2, workers=1)
    assert shard.stat().st_mtime_ns == before
    assert isinstance(open_dataset([str(cache)]), FeatureDataset)
    with pytest.raises(ValueError, match="alone"):
        open_dataset([str(cache), str(synth_dir)])


def test_a_blazepose_head_trains_on_the_cache(cache: Path, tmp_path: Path) -> None:
    from model.body import load_body_model
    from model.config import BackboneConfig, LossWeights, RegressorConfig
    from training.config import PretrainConfig
    from training.pretrain import PretrainTask

    cfg = PretrainConfig(
        data=(str(cache),), out_dir=str(tmp_path),
        regressor=RegressorConfig(BackboneConfig("blazepose-full", input_noise=0.01), hidden=64,
                                  dropout=0.0),
        loss_weights=LossWeights(vertices=0.0),
    )  # fmt: skip
    task = PretrainTask(cfg, load_body_model())
    ds = FeatureDataset(cache)
    batch = collate_samples([ds[(i, 0)] for i in range(len(ds))])
    opt = torch.optim.Adam([p for m in task.modules().values() for p in m.parameters()], 1e-3)
    losses = []
    for _ in range(30):
        task.train_mode()
        opt.zero_grad()
        losses.append(task.step(batch)["loss"])
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
