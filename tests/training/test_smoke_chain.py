"""The whole training chain on tiny data, through the command line:

render train/test/shifted -> `train pretrain` -> `train meta` -> `train keypoints` ->
`eval` -> `export`; the losses fall and every artefact appears. Tiny on purpose (TINY
regressor at a 128x96 crop, 16 + 8 + 8 small images, one CPU thread): about a minute.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from cli import main
from model.checkpoint import load_checkpoint
from training.run_log import read_log

log = logging.getLogger(__name__)

COMMON = ["--batch-size", "8", "--workers", "0", "--threads", "1", "--no-progress",
          "--log-every", "5"]


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def test_render_pretrain_meta_keypoints_eval_export(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = tmp_path / "data"
    for split, num, seed in (("train", 16, 1), ("test", 8, 2), ("shifted", 8, 3)):
        _run(["data", "synth", "--split", split, "--num", str(num), "--out", str(data / split),
              "--seed", str(seed), "--workers", "0", "--long-side", "160", "--no-progress"])
    pre, meta, kp = tmp_path / "pre", tmp_path / "meta", tmp_path / "kp"
    _run(["train", "pretrain", "--data", str(data / "train"), "--out", str(pre), "--size", "tiny",
          "--crop", "128x96", "--steps", "40", "--lr", "1e-3", "--warmup", "3",
          "--checkpoint-every", "20", *COMMON])
    _run(["train", "meta", "--init", str(pre / "final.pt"), "--data", str(data / "train"),
          "--out", str(meta), "--steps", "10", "--lr", "1e-3", "--inner-lr", "1e-3",
          "--warmup", "2", *COMMON])
    model = tmp_path / "model.pt"
    _run(["train", "keypoints", "--checkpoint", str(meta / "final.pt"), "--data",
          str(data / "train"), "--out", str(kp), "--save-to", str(model), "--width", "0.25",
          "--deconv", "32", "--crop", "128x96", "--steps", "10", *COMMON])
    docs = tmp_path / "docs"
    _run(["eval", "--pretrained", str(pre / "final.pt"), "--meta-dual", str(model),
          "--test", str(data / "test"), "--shifted", str(data / "shifted"), "--out-dir",
          str(docs), "--steps", "0,1,3", "--batch-size", "8", "--workers", "0", "--threads",
          "1", "--no-progress"])
    _run(["export", "--checkpoint", str(model), "--out", str(tmp_path / "onnx")])

    pre_log = read_log(pre / "log.jsonl")
    first, tail = pre_log[0]["loss"], min(r["loss"] for r in pre_log[-3:])
    log.info("pretrain loss %.4f -> %.4f", first, tail)
    assert tail < 0.85 * first
    meta_log = read_log(meta / "log.jsonl")
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["f_u/total"]) for r in meta_log)
    kp_log = read_log(kp / "log.jsonl")
    assert kp_log[-1]["loss"] < kp_log[0]["loss"]

    ckpt = load_checkpoint(model)
    assert ckpt.detector is not None and ckpt.f_u is not None and ckpt.tto_scope == "head"
    assert ckpt.extra["method"] == "meta-dual"
    results = json.loads((docs / "results.json").read_text())
    methods = {r["method"] for r in results["rows"]}
    assert methods == {"regression", "eft", "meta-dual"}
    assert {r["keypoints"] for r in results["rows"]} == {"noisy_gt", "detector"}
    assert (docs / "results.md").is_file() and (docs / "results_steps.png").stat().st_size > 1000
    assert (tmp_path / "onnx" / "manifest.json").is_file()
