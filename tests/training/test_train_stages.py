"""Specification of the training stages: the pre-training and meta-training step functions,
the shared loop's exact resume, the detector step, and the evaluation rows.

Everything runs on a tiny synthetic split (8 images, small JPEGs) and the TINY regressor of
tests/model/test_tto.py, at a 128x96 network crop, on one CPU thread.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model import tto_step as tto
from model.body import load_body_model
from model.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from model.config import BackboneConfig, DetectorConfig, RegressorConfig
from training.checkpoints import LAST, load_run_checkpoint
from training.config import (
    EvalConfig,
    LoopConfig,
    MetaConfig,
    OptimConfig,
    PretrainConfig,
)
from training.datasets import HMRDataset, collate_samples
from training.evaluate import (
    RESULTS_JSON,
    RESULTS_MD,
    RESULTS_PNG,
    evaluate,
    markdown_report,
    write_report,
)
from training.keypoints_train import crop_keypoints, heatmap_targets
from training.meta import MetaTask
from training.pretrain import PretrainTask, run_pretrain
from training.run_log import LOG_FILE, read_log
from training.synth.writer import SynthJob, synthesize

torch.set_num_threads(1)

TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64, crop_hw=(128, 96))
TINY_DETECTOR = DetectorConfig(BackboneConfig("resnet18", 0.25), (32, 32, 32), crop_hw=(128, 96))
ROW_KEYS = {"split", "keypoints", "method", "scope", "steps", "mpjpe", "pa_mpjpe", "pve", "pck"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stages") / "train"
    synthesize(SynthJob("train", 8, out, seed=11, workers=0, long_side=160), progress=False)
    return out


@pytest.fixture(scope="module")
def body():
    return load_body_model()


@pytest.fixture(scope="module")
def batch(data: Path):
    ds = HMRDataset(data)
    return collate_samples([ds[i] for i in range(4)])


def _loop(**kw) -> LoopConfig:
    base = dict(steps=4, batch_size=4, workers=0, log_every=1, checkpoint_every=2, progress=False)
    return LoopConfig(**{**base, **kw})


def _pretrain_config(data: Path, out: Path, **loop) -> PretrainConfig:
    return PretrainConfig(
        data=(str(data),), out_dir=str(out), regressor=TINY,
        optim=OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"), loop=_loop(**loop),
    )


@pytest.fixture(scope="module")
def pretrained(data: Path, body, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    return run_pretrain(_pretrain_config(data, out, steps=2), body=body).checkpoint


def _grads_finite(module: torch.nn.Module) -> bool:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)


def test_pretrain_step_gives_finite_losses_and_gradients(data, body, batch, tmp_path) -> None:
    task = PretrainTask(_pretrain_config(data, tmp_path), body)
    task.train_mode()
    scalars = task.step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in scalars.values())
    assert {"loss", "f_w/total", "f_u/total", "f_w/keypoints_2d", "f_u/vertices"} <= set(scalars)
    assert _grads_finite(task.f_w) and _grads_finite(task.f_u)


def test_init_backbone_copies_the_detector_backbone_into_f_w_and_f_u(data, body, tmp_path) -> None:
    ckpt = random_checkpoint(TINY, TINY_DETECTOR, body_model_id=body.id, seed=5)
    path = save_checkpoint(ckpt, tmp_path / "det.pt")
    task = PretrainTask(replace(_pretrain_config(data, tmp_path), init_backbone=str(path)), body)
    det = ckpt.build_detector()
    for net in (task.f_w, task.f_u):
        for name, value in det.backbone.state_dict().items():
            assert torch.equal(net.backbone.state_dict()[name], value), name
    # The heads keep their own (different) initialisations.
    assert not torch.equal(task.f_w.head.fc2.weight, task.f_u.head.fc2.weight)


def test_init_backbone_rejects_a_detector_with_another_backbone(data, body, tmp_path) -> None:
    wide = replace(TINY_DETECTOR, backbone=BackboneConfig("resnet18", 0.5))
    path = save_checkpoint(random_checkpoint(TINY, wide, body_model_id=body.id), tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"resnet18 x0.5.*resnet18 x0.25"):
        PretrainTask(replace(_pretrain_config(data, tmp_path), init_backbone=str(path)), body)
    bare = random_checkpoint(TINY, body_model_id=body.id, with_detector=False)
    path = save_checkpoint(bare, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="no keypoint detector"):
        PretrainTask(replace(_pretrain_config(data, tmp_path), init_backbone=str(path)), body)


def test_a_few_pretrain_steps_lower_the_loss_on_a_fixed_batch(data, body, batch, tmp_path) -> None:
    task = PretrainTask(_pretrain_config(data, tmp_path), body)
    task.train_mode()
    task.f_w.eval()  # no dropout noise: the loss of one batch must fall monotonically-ish
    optimizer = torch.optim.AdamW(task.f_w.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        losses.append(task.step(batch)["loss"])
        optimizer.step()
    assert min(losses[-3:]) < 0.8 * losses[0]


def test_resume_continues_exactly_from_the_saved_step(data, body, tmp_path) -> None:
    straight = run_pretrain(_pretrain_config(data, tmp_path / "a", steps=4), body=body)
    run_pretrain(_pretrain_config(data, tmp_path / "b", steps=2), body=body)
    _, state = load_run_checkpoint(tmp_path / "b" / LAST)
    assert state.step == 2 and state.stage == "pretrain"
    resumed = run_pretrain(_pretrain_config(data, tmp_path / "b", steps=4), resume=True, body=body)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for name in ("f_w", "f_u"):
        for key, value in getattr(a, name).items():
            torch.testing.assert_close(getattr(b, name)[key], value, rtol=1e-5, atol=1e-6)
    steps = [row["step"] for row in read_log(tmp_path / "b" / LOG_FILE)]
    assert steps == [1, 2, 3, 4]


def test_pretrain_checkpoint_records_config_body_scope_and_commit(pretrained, body) -> None:
    ckpt = load_checkpoint(pretrained)
    assert ckpt.body_model_id == body.id and ckpt.tto_scope == "head"
    assert ckpt.regressor_config == TINY and ckpt.f_u is not None
    assert ckpt.extra["stage"] == "pretrain" and ckpt.extra["step"] == 2
    assert "git_commit" in ckpt.extra and ckpt.extra["config"]["regressor"]["hidden"] == 64
    assert "loss" in ckpt.metrics


@pytest.mark.parametrize(
    ("scope", "task", "first_order"),
    [("head", "sample", True), ("head", "batch", False), ("full", "sample", True),
     ("full", "batch", False)],
)
def test_meta_step_runs_tto_inner_step_and_updates_w_and_u(
    pretrained, data, body, batch, tmp_path, monkeypatch, scope, task, first_order
) -> None:
    calls = []
    original = tto.inner_step

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(tto, "inner_step", spy)
    config = MetaConfig(
        init_checkpoint=str(pretrained), data=(str(data),), out_dir=str(tmp_path),
        inner_lr=1e-3, scope=scope, task=task, first_order=first_order, loop=_loop(),
    )
    meta = MetaTask(config, load_checkpoint(pretrained), body)
    before_w = {k: v.clone() for k, v in meta.f_w.state_dict().items()}
    before_u = {k: v.clone() for k, v in meta.f_u.state_dict().items()}
    meta.train_mode()
    scalars = meta.step(batch)
    assert len(calls) == 1
    assert calls[0]["first_order"] is first_order
    assert calls[0]["per_sample"] is (task == "sample")
    assert calls[0]["objective"] == "test_u"
    assert all(torch.isfinite(torch.tensor(v)) for v in scalars.values())
    # The outer loss reaches the backbone in the head scope too (through the features).
    assert _grads_finite(meta.f_w.backbone) and _grads_finite(meta.f_w.head)
    assert _grads_finite(meta.f_u)
    optimizer = torch.optim.SGD([p for g in meta.param_groups() for p in g["params"]], lr=1e-2)
    optimizer.step()
    changed_w = any(not torch.equal(v, meta.f_w.state_dict()[k]) for k, v in before_w.items())
    changed_u = any(not torch.equal(v, meta.f_u.state_dict()[k]) for k, v in before_u.items())
    assert changed_w and changed_u
    ckpt = meta.checkpoint({}, {"step": 1})
    assert ckpt.tto_scope == scope and ckpt.tto.sgd_lr == 1e-3 and ckpt.f_u is not None


def test_second_order_gradient_differs_from_first_order(pretrained, data, body, batch, tmp_path) -> None:
    grads = {}
    for first_order in (True, False):
        config = MetaConfig(
            init_checkpoint=str(pretrained), data=(str(data),), out_dir=str(tmp_path),
            inner_lr=1e-1, scope="head", task="batch", first_order=first_order, loop=_loop(),
        )
        meta = MetaTask(config, load_checkpoint(pretrained), body)
        meta.train_mode()
        meta.step(batch)
        grads[first_order] = meta.f_w.head.fc2.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_meta_without_aux_uses_the_2d_objective_and_saves_no_f_u(
    pretrained, data, body, batch, tmp_path, monkeypatch
) -> None:
    calls = []
    original = tto.inner_step
    monkeypatch.setattr(tto, "inner_step", lambda *a, **k: calls.append(k) or original(*a, **k))
    config = MetaConfig(
        init_checkpoint=str(pretrained), data=(str(data),), out_dir=str(tmp_path),
        use_aux=False, loop=_loop(),
    )
    meta = MetaTask(config, load_checkpoint(pretrained), body)
    meta.train_mode()
    meta.step(batch)
    assert calls[0]["objective"] == "2d"
    ckpt = meta.checkpoint({}, {"step": 1})
    assert ckpt.f_u is None and ckpt.tto.use_aux is False


def test_detector_targets_peak_at_the_keypoints(batch) -> None:
    points = crop_keypoints(batch, (128, 96))
    heat = heatmap_targets(points, (32, 24), 4, sigma=2.0)
    assert heat.shape == (4, 17, 32, 24)
    b, k = torch.nonzero(points[..., 2] > 0)[0].tolist()
    peak = torch.nonzero(heat[b, k] == heat[b, k].max())[0]
    expected = (points[b, k, [1, 0]] / 4 - 0.5).round()
    assert torch.allclose(peak.to(expected.dtype), expected, atol=1.0)


def test_eval_writes_results_rows_with_the_schema(data, body, tmp_path) -> None:
    ckpt = random_checkpoint(TINY, TINY_DETECTOR, body_model_id=body.id)
    path = save_checkpoint(ckpt, tmp_path / "model.pt")
    config = EvalConfig(
        checkpoints={m: str(path) for m in ("regression", "eft", "meta", "meta-dual")},
        splits={"test": str(data), "shifted": str(data)}, steps=(0, 2), table_steps=14,
        batch_size=4, workers=0, limit=4, progress=False, out_dir=str(tmp_path / "docs"),
    )
    result = evaluate(config, body=body)
    paths = write_report(result, config.out_dir, config.table_steps)
    assert [p.name for p in paths] == [RESULTS_JSON, RESULTS_MD, RESULTS_PNG]
    import json

    payload = json.loads(paths[0].read_text())
    assert set(payload) >= {"model", "rows"} and payload["model"]["body_model"] == body.id
    rows = payload["rows"]
    assert all(set(r) == ROW_KEYS for r in rows)
    combos = {(r["split"], r["keypoints"], r["method"], r["steps"]) for r in rows}
    for split in ("test", "shifted"):
        for source in ("noisy_gt", "detector"):
            assert (split, source, "regression", 0) in combos
            for method in ("eft", "meta", "meta-dual"):
                assert {(split, source, method, k) for k in (0, 2)} <= combos
    assert all(r["mpjpe"] >= r["pa_mpjpe"] >= 0 and 0 <= r["pck"] <= 1 for r in rows)
    md = paths[1].read_text()
    assert "| meta-dual |" in md and RESULTS_PNG in md
    methods = payload["methods"]
    assert "tto_ms_per_person" not in methods["regression"]
    assert all(methods[m]["tto_ms_per_person"]["head"] > 0 for m in ("eft", "meta", "meta-dual"))
    assert "TTO wall time per person" in md and "TTO learning rates" in md
    # The same tables go into a model card's Metrics section, the rest of the card untouched.
    from bench.docs import write_section
    from training.evaluate import card_metrics

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Card\n\n## Training\n\nsteps: 3\n\n## Metrics\n\nold\n\n## Limits\n\nmany\n")
    write_section(card, "Metrics", card_metrics(result, config.table_steps))
    text = card.read_text()
    assert "old" not in text and "steps: 3" in text and "## Limits\n\nmany" in text
    assert "### Keypoints: noisy_gt" in text and "| meta-dual |" in text


def _noisy_test_eval(data: Path, body, tmp_path: Path, methods: tuple[str, ...], **kw) -> EvalConfig:
    """An eval of a random tiny checkpoint as every method, on `data` as the test split, with
    the noisy ground-truth keypoints only."""
    path = save_checkpoint(random_checkpoint(TINY, with_detector=False, body_model_id=body.id),
                           tmp_path / "m.pt")
    return EvalConfig(checkpoints=dict.fromkeys(methods, str(path)), splits={"test": str(data)},
                      keypoints=("noisy_gt",), workers=0, progress=False, **kw)


def test_eval_breaks_the_noisy_keypoint_errors_down_by_pose_family(data, body, tmp_path) -> None:
    import json

    import numpy as np

    from training.eval_families import split_families

    config = _noisy_test_eval(data, body, tmp_path, ("regression", "eft"), steps=(0, 2),
                              batch_size=3, limit=5, out_dir=str(tmp_path / "docs"))
    result = evaluate(config, body=body)
    fams = split_families(data)
    with np.load(HMRDataset(data).files[0].path) as ann:
        assert list(fams) == [str(f) for f in ann["family"]]
    entry = result.families["test"]
    assert entry["steps"] == 2
    assert entry["counts"] == {f: int((fams[:5] == f).sum()) for f in set(fams[:5])}
    # The families' means, weighted by their people, give back the split's row.
    for method, k in (("regression", 0), ("eft", 2)):
        row = next(r for r in result.rows if (r["method"], r["steps"]) == (method, k))
        for metric in ("mpjpe", "pa_mpjpe"):
            per = entry[metric][method]
            mean = sum(per[f] * n for f, n in entry["counts"].items()) / 5
            assert abs(mean - row[metric]) < 0.06
    paths = write_report(result, config.out_dir, config.table_steps)
    assert json.loads(paths[0].read_text())["families"] == json.loads(json.dumps(result.families))
    md = paths[1].read_text()
    assert "## Pose families" in md and "**test** (2 Adam steps)" in md
    assert f"| {max(entry['counts'], key=entry['counts'].get)} |" in md
    # An annotation file without families (a real data set's) gives none.
    src = HMRDataset(data).files[0].path
    with np.load(src) as ann:
        arrays = {k: ann[k] for k in ann.files if k != "family"}
    np.savez(tmp_path / "real.npz", **arrays)
    assert split_families(tmp_path / "real.npz") is None


def test_eval_compares_scopes_with_rows_and_timings_for_each(data, body, tmp_path) -> None:
    config = _noisy_test_eval(data, body, tmp_path, ("regression", "meta-dual"), steps=(0, 1),
                              batch_size=4, limit=4, scope="head,full")
    result = evaluate(config, body=body)
    scopes = {(r["method"], r["scope"], r["steps"]) for r in result.rows}
    assert scopes == {("regression", "none", 0), ("meta-dual", "head", 0), ("meta-dual", "head", 1),
                      ("meta-dual", "full", 0), ("meta-dual", "full", 1)}
    by = {(r["scope"], r["steps"]): r["mpjpe"] for r in result.rows if r["method"] == "meta-dual"}
    assert by[("head", 1)] != by[("full", 1)]  # different weights adapt
    assert set(result.methods["meta-dual"]["tto_ms_per_person"]) == {"head", "full"}
    md = markdown_report(result, 14, RESULTS_PNG)
    assert "| meta-dual (head) |" in md and "| meta-dual (full) |" in md
    # The family tables name the rows as the results tables do.
    assert set(result.families["test"]["pa_mpjpe"]) == {
        "regression", "meta-dual (head)", "meta-dual (full)"}
    with pytest.raises(ValueError, match="unknown TTO scope"):
        EvalConfig({"eft": "c.pt"}, {"test": "d"}, scope="head,everything")


def test_eval_noise_is_identical_across_methods(data, body, tmp_path) -> None:
    """Same checkpoint under two names: identical numbers, so both saw the same keypoints."""
    path = save_checkpoint(random_checkpoint(TINY, with_detector=False, body_model_id=body.id),
                           tmp_path / "m.pt")
    config = EvalConfig(
        checkpoints={"eft": str(path), "meta": str(path)}, splits={"test": str(data)},
        keypoints=("noisy_gt",), steps=(1,), batch_size=4, workers=0, limit=4, progress=False,
    )
    rows = evaluate(replace(config), body=body).rows
    by_method = {r["method"]: r for r in rows}
    assert by_method["eft"]["mpjpe"] == by_method["meta"]["mpjpe"]


def _tune_command(checkpoint: Path, data: Path, out: Path, report: Path, *flags: str) -> int:
    """`metahmr tune` on the CPU, in-process: training makes the report section, the CLI
    writes it."""
    from cli import main

    return main(["tune", "--checkpoint", str(checkpoint), "--method", "eft", "--val", str(data),
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out),
                 "--report", str(report), *flags])


def test_tune_keeps_the_rate_with_the_lowest_validation_error_and_writes_it(
    pretrained, data, body, tmp_path
) -> None:
    report = tmp_path / "tuning.md"
    out = tmp_path / "tuned.pt"
    assert _tune_command(pretrained, data, out, report,
                         "--lrs", "1e-9,3e-3", "--steps", "3", "--limit", "8") == 0
    tuned = load_checkpoint(out)
    tuning = tuned.extra["tto_tuning"]
    errors = [r["pa_mpjpe"] for r in tuning["rows"]]
    best = min(tuning["rows"], key=lambda r: r["pa_mpjpe"])
    assert len(errors) == 2 and tuning["best_lr"] == best["lr"]
    # A rate of 1e-9 leaves the prediction where regression put it.
    assert abs(tuning["rows"][0]["pa_mpjpe"] - tuning["baseline"]["pa_mpjpe"]) < 0.05
    assert (tuned.tto.sgd_lr, tuned.tto.adam_lr) == (best["lr"], best["lr"])
    text = report.read_text()
    assert text.startswith("# TTO learning rates\n")  # a new report starts with its header
    assert f"## eft: {Path(pretrained).name}" in text and text.count("| kept |") == 1


def test_tune_of_a_meta_checkpoint_keeps_its_step_zero_rate(pretrained, data, body, tmp_path) -> None:
    from training.tune import TuneConfig, tune_tto

    ckpt = load_checkpoint(pretrained)
    path = save_checkpoint(replace(ckpt, tto=replace(ckpt.tto, sgd_lr=2e-4)), tmp_path / "m.pt")
    config = TuneConfig(str(path), "meta-dual", str(data), lrs=(1e-4, 1e-3), steps=1,
                        limit=4, batch_size=4, workers=0, device="cpu")
    result = tune_tto(config, body)
    assert {r["sgd_lr"] for r in result.rows} == {2e-4}
    assert [r["adam_lr"] for r in result.rows] == [1e-4, 1e-3]
    assert result.checkpoint.tto.sgd_lr == 2e-4
    with pytest.raises(ValueError, match="tunable"):
        TuneConfig(str(path), "regression", str(data))


def test_tune_tries_every_rate_with_every_adam_beta1_and_keeps_the_best_pair(
    pretrained, data, body, tmp_path
) -> None:
    from training.tune import TuneConfig

    report = tmp_path / "tuning.md"
    out = tmp_path / "tuned.pt"
    assert _tune_command(pretrained, data, out, report, "--lrs", "1e-9,3e-3",
                         "--beta1s", "0.9,0", "--steps", "3", "--limit", "8") == 0
    tuned = load_checkpoint(out)
    tuning = tuned.extra["tto_tuning"]
    pairs = [(r["lr"], r["beta1"]) for r in tuning["rows"]]
    assert pairs == [(1e-9, 0.9), (3e-3, 0.9), (1e-9, 0.0), (3e-3, 0.0)]
    best = min(tuning["rows"], key=lambda r: r["pa_mpjpe"])
    assert (tuning["best_lr"], tuning["best_beta1"]) == (best["lr"], best["beta1"])
    assert tuned.tto.adam_betas == (best["beta1"], load_checkpoint(pretrained).tto.adam_betas[1])
    # beta1 changes the fit: at 3e-3 the two momenta end in different places.
    by_pair = {(r["lr"], r["beta1"]): r["pa_mpjpe"] for r in tuning["rows"]}
    assert by_pair[(3e-3, 0.9)] != by_pair[(3e-3, 0.0)]
    text = report.read_text()
    assert "| lr | Adam beta1 |" in text and "| 0.003 | 0 |" in text and text.count("| kept |") == 1
    with pytest.raises(ValueError, match="beta1s"):
        TuneConfig(str(pretrained), "eft", str(data), beta1s=(1.0,))


def test_tune_with_another_head_subset_keeps_it_and_names_its_section(
    pretrained, data, body, tmp_path
) -> None:
    from training.tune import TuneConfig

    assert load_checkpoint(pretrained).tto.head_subset == "all"
    report = tmp_path / "tuning.md"
    flags = ("--lrs", "1e-3", "--steps", "2", "--limit", "4")
    assert _tune_command(pretrained, data, tmp_path / "out.pt", report,
                         *flags, "--head-subset", "output") == 0
    assert load_checkpoint(tmp_path / "out.pt").tto.head_subset == "output"
    assert _tune_command(pretrained, data, tmp_path / "all.pt", report, *flags) == 0
    text = report.read_text()
    assert f"## eft: {Path(pretrained).name} (output head weights)" in text
    assert f"## eft: {Path(pretrained).name}\n" in text  # the other section stays
    assert "the `output` head weights adapting" in text
    with pytest.raises(ValueError, match="head_subset"):
        TuneConfig(str(pretrained), "eft", str(data), head_subset="fc2")
