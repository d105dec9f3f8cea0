"""Choosing the test-time learning rates on a validation split (never on the test splits).

`tune_tto` runs one method's TTO on the validation split (noisy ground-truth keypoints, the
protocol's noise) once per candidate learning rate and Adam momentum (beta1), and keeps the
pair with the lowest PA-MPJPE after `steps` Adam steps. Which rates a candidate sets:

- ``eft``: both the step-0 SGD rate and the Adam rate (the pre-trained weights were never
  trained for a particular step);
- ``meta`` / ``meta-dual``: the Adam rate only; step 0 keeps the inner rate the
  meta-parameters were trained for (`sgd_lr` = meta-training's `inner_lr`).

beta1 is the Adam steps' first-moment decay (`TTOConfig.adam_betas[0]`; beta2 stays). With
only 14 steps, a long momentum carries each step's direction into the next ones: on the
shipped model's shifted validation split, beta1 0.5 fitted better than Adam's default 0.9
(`docs/tuning.md`).

The chosen rates go into the checkpoint's TTO settings (what `metahmr eval` and the service
use) with the early stop off: the rates were measured over all `steps`, and an early stop on
the 2D loss's absolute change (2e-5) ended real requests after one or two steps, short of
the fit the rates were chosen for. The candidates' errors go into its
``extra["tto_tuning"]`` and into a section of the tuning report (`docs/tuning.md`):
`report_name` and `report_section` make it, the command (`metahmr tune`) writes it.

Which validation split: the one the TTO is for. The shipped model is tuned on a held-out
*shifted* split (`--split shifted`, its own seed): in-domain, the regression is already as
good as the synthetic data makes it and any rate above the smallest costs 3D accuracy there,
while the TTO exists for photos unlike the training renders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.body import BodyModel
from model.checkpoint import Checkpoint, save_checkpoint
from model.config import HEAD_SUBSETS
from training.config import EvalConfig
from training.distributed import resolve_device
from training.evaluate import Method, evaluate, load_methods

log = logging.getLogger(__name__)

TUNABLE = ("eft", "meta", "meta-dual")
DEFAULT_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
DEFAULT_BETA1S = (0.9,)  # Adam's own; the shipped recipe searches more (README)
CRITERION = "pa_mpjpe"
REPORT_HEADER = (
    "# TTO learning rates\n\n"
    "Each section is written by `metahmr tune` for one checkpoint: the test-time learning "
    "rates tried on the validation split and the one kept (lowest PA-MPJPE). The test "
    "splits are never used for this. Do not edit by hand.\n"
)


@dataclass(frozen=True)
class TuneConfig:
    """checkpoint: the .pt to tune. method: how it is used ("eft", "meta", "meta-dual").
    val: validation split folder. lrs: candidate rates. beta1s: candidate Adam momenta (each
    rate is tried with each). steps: Adam steps the error is measured at. limit: at most
    this many validation samples. head_subset: tune (and keep) the TTO with this set of
    adapted head weights ("all" or "output"; None = the checkpoint's own)."""

    checkpoint: str
    method: str
    val: str
    lrs: tuple[float, ...] = DEFAULT_LRS
    beta1s: tuple[float, ...] = DEFAULT_BETA1S
    steps: int = 14
    limit: int | None = 256
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    head_subset: str | None = None

    def __post_init__(self) -> None:
        if self.head_subset is not None and self.head_subset not in HEAD_SUBSETS:
            raise ValueError(f"unknown head_subset {self.head_subset!r}; valid: {HEAD_SUBSETS}")
        if self.method not in TUNABLE:
            raise ValueError(f"unknown method {self.method!r}; tunable: {TUNABLE}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be positive learning rates, got {self.lrs}")
        if not self.beta1s or not all(0 <= b < 1 for b in self.beta1s):
            raise ValueError(f"beta1s must lie in [0, 1), got {self.beta1s}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass(frozen=True)
class TuneResult:
    """rows: one per candidate ({"lr", "beta1", "sgd_lr", "adam_lr", "mpjpe", "pa_mpjpe",
    ...}); best: the kept row; baseline: the same metrics of f_w's regression, without TTO."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    baseline: dict[str, Any]
    checkpoint: Checkpoint


def candidate_rates(method: str, ckpt: Checkpoint, lr: float) -> tuple[float, float]:
    """(sgd_lr, adam_lr) a candidate `lr` stands for (see the module docstring)."""
    return (lr, lr) if method == "eft" else (ckpt.tto.sgd_lr, lr)


def tune_tto(config: TuneConfig, body: BodyModel | None = None) -> TuneResult:
    """Try every candidate on the validation split; returns the rows and the tuned checkpoint."""
    from model.body import load_body_model

    device = resolve_device(config.device)
    body = (body if body is not None else load_body_model()).to(device)
    eval_config = EvalConfig(
        checkpoints={config.method: config.checkpoint}, splits={"val": config.val},
        keypoints=("noisy_gt",), steps=(0, config.steps), table_steps=config.steps,
        batch_size=config.batch_size, workers=config.workers, device=config.device,
        seed=config.seed, limit=config.limit, progress=False,
    )
    (base,) = load_methods(eval_config, device)
    if config.head_subset is not None:
        subset_tto = replace(base.ckpt.tto, head_subset=config.head_subset)
        base = replace(base, ckpt=replace(base.ckpt, tto=subset_tto))
    plain = Method("regression", base.checkpoint, base.f_w, None, base.ckpt)
    baseline = _metrics(evaluate(eval_config, body, methods=[plain]).rows[0])
    rows = []
    beta2 = base.ckpt.tto.adam_betas[1]
    for beta1 in config.beta1s:
        for lr in config.lrs:
            sgd_lr, adam_lr = candidate_rates(config.method, base.ckpt, lr)
            tto = replace(
                base.ckpt.tto, sgd_lr=sgd_lr, adam_lr=adam_lr, adam_betas=(beta1, beta2)
            )
            ckpt = replace(base.ckpt, tto=tto)
            result = evaluate(
                eval_config, body, methods=[Method(base.name, base.checkpoint, base.f_w, base.f_u, ckpt)]
            )
            by_steps = {r["steps"]: r for r in result.rows}
            rows.append({"lr": lr, "beta1": beta1, "sgd_lr": sgd_lr, "adam_lr": adam_lr,
                         **_metrics(by_steps[config.steps])})
            log.info("%s lr %g beta1 %g: PA-MPJPE %.1f mm", config.method, lr, beta1,
                     rows[-1][CRITERION])
    best = min(rows, key=lambda r: r[CRITERION])
    # The schedule that was measured: these rates over every one of the steps (the
    # evaluation runs them all), so the checkpoint stops early no more.
    tuned_tto = replace(
        base.ckpt.tto, sgd_lr=best["sgd_lr"], adam_lr=best["adam_lr"],
        adam_betas=(best["beta1"], beta2), early_stop=0.0,
    )
    tuned = replace(
        base.ckpt, tto=tuned_tto,
        extra={**base.ckpt.extra, "tto_tuning": {
            "method": config.method, "val": config.val, "steps": config.steps,
            "samples": result.samples.get("val", 0), "criterion": CRITERION,
            "rows": rows, "baseline": baseline, "best_lr": best["lr"],
            "best_beta1": best["beta1"]}},
    )
    return TuneResult(rows, best, baseline, tuned)


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k: row[k] for k in ("mpjpe", "pa_mpjpe", "pve", "pck")}


def report_name(config: TuneConfig) -> str:
    """The heading of this checkpoint's section of the tuning report."""
    name = f"{config.method}: {Path(config.checkpoint).name}"
    if config.head_subset is not None:
        name += f" ({config.head_subset} head weights)"
    return name


def report_section(config: TuneConfig, result: TuneResult) -> str:
    """The markdown body of this checkpoint's section of the tuning report."""
    base = result.baseline
    samples = int(result.checkpoint.extra["tto_tuning"]["samples"])
    lines = [
        f"Checkpoint `{config.checkpoint}`, method {config.method}, validation split "
        f"`{config.val}` ({samples} samples, noisy ground-truth keypoints), {config.steps} "
        f"Adam steps after step 0, the `{result.checkpoint.tto.head_subset}` head weights "
        "adapting. "
        + ("Each rate is both the step-0 SGD rate and the Adam rate."
           if config.method == "eft" else
           f"Step 0 keeps the meta-trained inner rate {result.best['sgd_lr']:g}; the rate "
           "tried is the Adam rate."),
        "",
        f"Without TTO: MPJPE {base['mpjpe']:.1f} mm, PA-MPJPE {base['pa_mpjpe']:.1f} mm.",
        "",
        "| lr | Adam beta1 | MPJPE (mm) | PA-MPJPE (mm) | PVE (mm) | PCK@0.05 | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        kept = "kept" if r is result.best else ""
        lines.append(f"| {r['lr']:g} | {r['beta1']:g} | {r['mpjpe']:.1f} | {r['pa_mpjpe']:.1f} | "
                     f"{r['pve']:.1f} | {100 * r['pck']:.1f} | {kept} |")
    return "\n".join(lines)


def run_tune(config: TuneConfig, out: str | None) -> TuneResult:
    """Tune and save the tuned checkpoint (to `out`, default in place); the report section
    is `report_section(config, result)`, under the heading `report_name(config)`."""
    result = tune_tto(config)
    target = out or config.checkpoint
    save_checkpoint(result.checkpoint, target)
    log.info("kept lr %g, beta1 %g (PA-MPJPE %.1f mm) -> %s", result.best["lr"],
             result.best["beta1"], result.best[CRITERION], target)
    return result
