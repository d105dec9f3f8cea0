"""Test-time optimisation (TTO) from the meta-parameters (ARCHITECTURE §3).

`fit` adapts a per-person copy of f_w's weights to that person's 2D keypoints, in three
named stages (`fit_group`, the one step loop):

1. **step 0**: one SGD step on L_test-u (2D keypoints + agreement with f_u's prediction),
   `model.tto_step.inner_step` — the very step meta-training differentiates through;
2. **Adam steps**: on the 2D keypoint loss only, up to `TTOConfig.steps`
   (`model.tto_adam.AdamSteps`: Adam's update, with fc1's feature half adapted as its
   output, and with compiled steps one graph a step);
3. **early stop**: a person stops once their 2D loss changes by less than
   `TTOConfig.early_stop`; their weights from that step are the ones kept.

BatchNorm and dropout stay in eval mode. The scope says which weights adapt: "head" (the
regressor head over fixed backbone features) or "full" (everything). `TTORuntime` says how
the steps run here (threads; compiled steps, see `model.tto_step.loss_and_grad`; all
people in one pass or one by one); the fit is the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import TTOConfig, TTORuntime
from model.keypoints import get_format
from model.losses import KEYPOINT_FORMATS
from model.outputs import BodyOutput, CropInfo, FitResult, RegressorOutput, SMPLParams
from model.regressor import Regressor
from model.tto_adam import AdamSteps
from model.tto_step import (
    BodyModelLike,
    Params,
    StepBatch,
    compile_failure,
    inner_step,
    run_compiled,
    step_loss,
)

__all__ = [
    "SKIP_NO_KEYPOINTS", "TTOInputs", "adapted_parameter_names", "compile_failure",
    "default_batched", "fit", "fit_group", "warm_up",
]

SKIP_NO_KEYPOINTS = "no keypoint with confidence > 0"


@dataclass(frozen=True)
class TTOInputs:
    """What one `fit` call needs for B people.

    keypoints: (B, K, 3) full-image pixels + confidence, in `keypoint_format` ("coco17",
        "openpose25" or "smpl24"; convert others with `model.keypoints.convert_keypoints`).
    crop: where each crop sits in its image (`CropInfo`).
    images: (B, 3, H, W) normalised crops; needed for the "full" scope, and for "head"
        when no features are given.
    features: (B, F) pooled backbone features of f_w (e.g. from ONNX Runtime).
    """

    keypoints: Tensor
    crop: CropInfo
    keypoint_format: str = "coco17"
    images: Tensor | None = None
    features: Tensor | None = None


def adapted_parameter_names(
    regressor: Regressor, scope: str, head_subset: str = "all"
) -> list[str]:
    """Names of the parameters the TTO adapts, relative to the module it runs.

    "head" scope: names within `regressor.head` (all, or the decoder layers for
    head_subset="output"). "full" scope: every parameter name of `regressor`.
    """
    if scope == "full":
        return [n for n, _ in regressor.named_parameters()]
    if scope == "head":
        if head_subset == "output":
            return list(regressor.head.output_parameter_names())
        return [n for n, _ in regressor.head.named_parameters()]
    raise ValueError(f"unknown TTO scope {scope!r}; valid scopes: ('head', 'full')")


def warm_up(
    regressor: Regressor,
    body: BodyModelLike,
    config: TTOConfig,
    runtime: TTORuntime,
    people: tuple[int, ...] = (1, 2),
    keypoint_format: str = "coco17",
) -> float:
    """Compile the TTO's graphs before the first request (runtime.compile; "head" scope).

    Fits a made-up scene of each size in `people` (1, then 2: the second compile makes the
    number of people dynamic, so every later size reuses it) with every stage a request
    runs: step 0 (on L_test-u with an auxiliary prediction), an Adam step and the final
    evaluation. Returns the seconds it took. No-op (0.0) when runtime.compile is off or the
    scope is not "head".
    """
    if not runtime.compile or config.scope != "head":
        return 0.0
    device = next(regressor.parameters()).device
    start = time.perf_counter()
    for n in people:
        k = get_format(keypoint_format).num_keypoints
        crop = CropInfo.from_boxes(
            torch.full((n, 2), 200.0), torch.full((n,), 300.0), torch.full((n, 2), 400.0)
        ).to(device)
        keypoints = torch.cat([200.0 + 50.0 * torch.rand(n, k, 2), torch.ones(n, k, 1)], -1)
        features = torch.zeros(n, regressor.head.feature_dim, device=device)
        with torch.no_grad():
            aux = regressor.head(features, crop.bbox_info())
        inputs = TTOInputs(keypoints.to(device), crop, keypoint_format, features=features)
        fit(regressor, inputs, body, dataclasses.replace(config, steps=1, early_stop=0.0), aux,
            runtime=runtime)  # fmt: skip
    return time.perf_counter() - start


# --- the fit -------------------------------------------------------------------------------


def fit(
    regressor: Regressor,
    inputs: TTOInputs,
    body: BodyModelLike,
    config: TTOConfig | None = None,
    aux: RegressorOutput | None = None,
    *,
    runtime: TTORuntime | None = None,
    on_step: Callable[[int, int], None] | None = None,
    record_steps: tuple[int, ...] = (),
) -> FitResult:
    """Adapt a copy of `regressor`'s weights to each person's 2D keypoints.

    regressor: f_w (its own weights are not changed). aux: f_u's prediction for the same
    people (B), used by step 0 when config.use_aux. runtime: threads, compiled steps, and
    whether the "head" scope fits everyone in one pass (`TTORuntime`; the results are
    equal). on_step(step, total): progress callback after each update.
    record_steps: Adam step counts (0..config.steps) whose predictions `FitResult.recorded`
    keeps, so one fit gives a whole error-vs-steps curve (needs early_stop == 0: with an
    early stop, people would stop at different steps).
    The device is the inputs' device; the regressor must already be there.
    """
    config = config or TTOConfig()
    runtime = runtime or TTORuntime()
    _validate(inputs, aux, config)
    bad = [k for k in record_steps if not 0 <= k <= config.steps]
    if bad:
        raise ValueError(f"record_steps must lie in 0..{config.steps} (config.steps), got {bad}")
    if record_steps and config.early_stop > 0:
        raise ValueError("record_steps needs early_stop = 0 (every person runs every step)")
    with _eval_mode(regressor), _threads(runtime.num_threads), torch.enable_grad():
        return _fit(regressor, inputs, body, config, aux, runtime, on_step, tuple(record_steps))


def _fit(
    regressor: Regressor,
    inputs: TTOInputs,
    body: BodyModelLike,
    config: TTOConfig,
    aux: RegressorOutput | None,
    runtime: TTORuntime,
    on_step: Callable[[int, int], None] | None,
    record_steps: tuple[int, ...],
) -> FitResult:
    """Split the people into groups (everyone with a keypoint: one pass, or one each) and
    run `fit_group` on each; people with no confident keypoint keep the regression."""
    bbox_info = inputs.crop.bbox_info()
    if config.scope == "head":
        module: nn.Module = regressor.head
        x = _features(regressor, inputs)
    else:
        module = regressor
        x = _require_images(inputs)
    names = adapted_parameter_names(regressor, config.scope, config.head_subset)
    own = dict(module.named_parameters())
    with torch.no_grad():
        args: tuple[Tensor, ...] = (x, bbox_info)
        if config.scope == "head" and not any(n.startswith("fc1_feat.") for n in names):
            # fc1's feature part stays fixed: compute it once, not in every step.
            args = (x, bbox_info, regressor.head.feature_term(x, bbox_info))

    active = (inputs.keypoints[..., 2] > 0).any(dim=-1).tolist()
    people = [i for i, a in enumerate(active) if a]
    records: dict[int, _PersonRecord] = {}
    skipped = [i for i, a in enumerate(active) if not a]
    if skipped:  # the regression result is their answer
        with torch.no_grad():
            out = module(x[skipped], bbox_info[skipped])
        for k, i in enumerate(skipped):
            records[i] = _PersonRecord.skipped_with(out.select(k), SKIP_NO_KEYPOINTS, record_steps)
    batched = default_batched(config, runtime) if runtime.batched is None else runtime.batched
    if config.scope == "head" and batched and people:
        groups = [people]
    else:
        groups = [[i] for i in people]
    progress = _GroupProgress(on_step, len(groups))
    for g, group in enumerate(groups):
        idx = torch.tensor(group, device=x.device)
        batch = StepBatch(
            tuple(a[idx] for a in args),
            inputs.keypoints[idx],
            inputs.crop.select(idx),
            inputs.keypoint_format,
            *_aux_for(aux, idx, body, config, runtime),
        )
        run = fit_group(
            module, {n: own[n].detach() for n in names}, batch, body, config,
            per_sample=len(group) > 1, compiled=runtime.compile, on_step=progress.of(g),
            record_steps=record_steps,
        )
        for k, i in enumerate(group):
            records[i] = run.person(k)
    return _assemble([records[i] for i in range(len(active))], config.scope)


def default_batched(config: TTOConfig, runtime: TTORuntime | None = None) -> bool:
    """Whether `fit` fits a head scope's people in one pass when the runtime does not say
    (the answers are equal either way): when only the output layers adapt, or when the
    steps run eagerly (every person's layers then run as one product per layer,
    `model.linear_tape`; 16 people in one pass took 0.42x the time of one by one for the
    shipped head here, 0.45x for a paper-sized one). Compiled, with every head weight
    adapting, it loops: each person's step is one fused graph that updates the weights in
    place, while several people's step runs under vmap and updates them with
    torch.optim.Adam; the loop is the faster (16 paper-sized resnet50 heads: one pass 1.24x
    the loop's time, alternating in one process here; `docs/benchmarks.md` times the one
    pass)."""
    compiled = runtime is not None and runtime.compile
    return config.head_subset == "output" or not compiled


class _GroupProgress:
    """One progress count over several groups fitted one after another: group g's step k
    of `total` reports (g * total + k) // groups, each value once, so the caller sees one
    fit's 1..total whatever the number of groups."""

    def __init__(self, on_step: Callable[[int, int], None] | None, groups: int) -> None:
        self.on_step, self.groups, self.last = on_step, max(groups, 1), 0

    def of(self, group: int) -> Callable[[int, int], None] | None:
        if self.on_step is None:
            return None
        on_step = self.on_step

        def report(step: int, total: int) -> None:
            value = (group * total + step) // self.groups
            if value > self.last:
                self.last = value
                on_step(value, total)

        return report


@dataclass
class GroupRun:
    """What `fit_group` found for its P people (each tensor (P,) or (P, ...))."""

    initial: RegressorOutput
    final: RegressorOutput
    history: list[Tensor]  # each (P,) 2D losses before an update
    final_loss: Tensor  # (P,)
    test_u: Tensor  # (P,)
    steps_run: Tensor  # (P,) int
    stopped: Tensor  # (P,) bool
    recorded: dict[int, RegressorOutput]  # Adam steps -> (P) predictions

    def person(self, k: int) -> _PersonRecord:
        steps = int(self.steps_run[k])
        return _PersonRecord(
            initial=self.initial.select(k),
            final=self.final.select(k),
            history=tuple(float(h[k]) for h in self.history[:steps]),
            final_loss=float(self.final_loss[k]),
            test_u=float(self.test_u[k]),
            steps_run=steps,
            stopped=bool(self.stopped[k]),
            recorded={n: pred.select(k) for n, pred in self.recorded.items()},
        )


@dataclass(frozen=True)
class _PersonRecord:
    initial: RegressorOutput
    final: RegressorOutput
    history: tuple[float, ...]
    final_loss: float
    test_u: float | None
    steps_run: int
    stopped: bool
    recorded: dict[int, RegressorOutput]
    skipped: str | None = None

    @staticmethod
    def skipped_with(
        initial: RegressorOutput, reason: str, record_steps: tuple[int, ...] = ()
    ) -> _PersonRecord:
        recorded = dict.fromkeys(record_steps, initial)
        return _PersonRecord(initial, initial, (), 0.0, None, 0, False, recorded, reason)


def fit_group(
    module: nn.Module,
    start: Params,
    batch: StepBatch,
    body: BodyModelLike,
    config: TTOConfig,
    *,
    per_sample: bool,
    compiled: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    record_steps: tuple[int, ...] = (),
) -> GroupRun:
    """The staged fit of P people: step 0, Adam steps, early stop.

    module: what adapts (f_w's head, or f_w); start: the weights it adapts from (names of
    `module`'s parameters). per_sample: P people, each with their own copy of the weights
    (a leading person dimension, `torch.func.vmap`); otherwise P = 1. compiled: each
    step as compiled graphs (`model.tto_step.loss_and_grad`, `model.tto_adam.AdamSteps`).
    """
    n_people = batch.keypoints.shape[0]
    total = 1 + config.steps
    params = {n: _copies(p, n_people, per_sample).requires_grad_(True) for n, p in start.items()}

    # Step 0: one SGD step on L_test-u (2D + agreement with f_u; 2D only without f_u).
    use_aux = config.use_aux and batch.aux is not None
    stepped, loss0 = inner_step(
        module, params, batch, body, lr=config.sgd_lr, weights=config.loss_weights,
        objective="test_u" if use_aux else "2d", per_sample=per_sample, compiled=compiled,
    )
    stop = _EarlyStop(config.early_stop, loss0.terms.keypoints_2d.detach())
    _notify(on_step, 1, total)

    # Adam steps on the 2D keypoint loss only, each person stopping on their own.
    adam = AdamSteps(
        module, stepped, batch, body, config, per_sample=per_sample, compiled=compiled
    )
    recorded: dict[int, RegressorOutput] = {}
    for step in range(1, config.steps + 1):
        current = adam.step()
        if step - 1 in record_steps:  # this step's forward is the prediction after step - 1
            recorded[step - 1] = current.pred.detach()
        stop.update(current.per_sample.detach(), adam.params)
        _notify(on_step, step + 1, total)
        if stop.everyone:
            break

    with torch.no_grad():
        last = step_loss(
            module, stop.kept(adam.params), batch, body, objective="2d",
            weights=config.loss_weights, per_sample=per_sample, compiled=compiled,
        )
    if config.steps in record_steps:
        recorded[config.steps] = last.pred.detach()
    return GroupRun(
        initial=loss0.pred.detach(),
        final=last.pred.detach(),
        history=stop.history,
        final_loss=last.per_sample.detach(),
        test_u=loss0.per_sample.detach(),
        steps_run=stop.steps_run,
        stopped=stop.stopped,
        recorded=recorded,
    )


class _EarlyStop:
    """Stage 3: each person's 2D loss history and whether they stopped. A person stops once
    their loss changes by less than `threshold` between Adam steps; their weights at that
    step are the ones `kept` returns, whatever later steps (of the others) do."""

    def __init__(self, threshold: float, step0_loss: Tensor) -> None:
        self.threshold = threshold
        self.history = [step0_loss]  # each (P,): the 2D loss before an update
        self._steps_run = torch.ones(step0_loss.shape[0], dtype=torch.long)
        self.stopped = torch.zeros(step0_loss.shape[0], dtype=torch.bool)
        self.frozen: Params | None = None  # weights of people who stopped

    @property
    def off(self) -> bool:
        """Threshold 0 (the shipped schedule): everyone runs every step."""
        return self.threshold <= 0

    @property
    def everyone(self) -> bool:
        return not self.off and bool(self.stopped.all())

    @property
    def steps_run(self) -> Tensor:
        """(P,) updates made, step 0 included."""
        if self.off:
            return torch.full_like(self._steps_run, len(self.history))
        return self._steps_run

    def update(self, losses: Tensor, params: Params) -> None:
        """After an Adam step whose forward gave `losses` (P,). With early stop off, only
        the loss is kept: the comparison and its host sync would cost ~8% of a compiled fit
        of one person (measured A/B on the shipped model)."""
        self.history.append(losses)
        if self.off:
            return
        running = ~self.stopped
        self._steps_run += running.long()
        newly = running & ((losses - self.history[-2]).abs() < self.threshold)
        if not bool(newly.any()):
            return
        if self.frozen is None:
            self.frozen = {n: p.detach().clone() for n, p in params.items()}
        else:
            for n, p in params.items():
                self.frozen[n][newly] = p.detach()[newly]
        self.stopped |= newly

    def kept(self, params: Params) -> Params:
        """The weights to keep: a stopped person's from their stop, the others' current."""
        if self.frozen is None:
            return {n: p.detach() for n, p in params.items()}
        kept = {}
        for n, p in params.items():
            mask = self.stopped.reshape(-1, *([1] * (p.dim() - 1)))
            kept[n] = torch.where(mask, self.frozen[n], p.detach())
        return kept


def _copies(t: Tensor, n_people: int, per_sample: bool) -> Tensor:
    """A fresh copy of a weight: one per person (a leading dimension) when per_sample."""
    return t.expand(n_people, *t.shape).clone() if per_sample else t.clone()


def _aux_for(
    aux: RegressorOutput | None, idx: Tensor, body: BodyModelLike, config: TTOConfig,
    runtime: TTORuntime,
) -> tuple[RegressorOutput | None, BodyOutput | None]:
    if aux is None or not config.use_aux:
        return None, None
    sub = aux.select(idx).detach()
    needs_mesh = config.loss_weights.vertices != 0
    with torch.no_grad():
        aux_body = run_compiled(_pose, body, sub.params, needs_mesh) if runtime.compile else None
        if aux_body is None:
            aux_body = _pose(body, sub.params, needs_mesh)
    return sub, aux_body


def _pose(body: BodyModelLike, params: SMPLParams, mesh: bool) -> BodyOutput:
    return body(params) if mesh else body.keypoints_only(params)


def _assemble(records: list[_PersonRecord], scope: str) -> FitResult:
    return FitResult(
        initial=RegressorOutput.cat([r.initial for r in records]).detach(),
        final=RegressorOutput.cat([r.final for r in records]).detach(),
        loss_history=tuple(r.history for r in records),
        final_loss=tuple(r.final_loss for r in records),
        test_u_loss=tuple(r.test_u for r in records),
        steps_run=tuple(r.steps_run for r in records),
        stopped_early=tuple(r.stopped for r in records),
        skipped=tuple(r.skipped for r in records),
        scope=scope,
        recorded={
            k: RegressorOutput.cat([r.recorded[k] for r in records]).detach()
            for k in (records[0].recorded if records else {})
        },
    )


# --- inputs, modes, threads ----------------------------------------------------------------


def _features(regressor: Regressor, inputs: TTOInputs) -> Tensor:
    if inputs.features is not None:
        return _plain(inputs.features)
    images = _require_images(inputs)
    with torch.no_grad():
        return regressor.backbone(images)


def _require_images(inputs: TTOInputs) -> Tensor:
    if inputs.images is None:
        raise ValueError(
            "this TTO needs the normalised crops: pass TTOInputs.images (B, 3, H, W) "
            "(the 'full' scope always does; 'head' does when no features are given)"
        )
    return _plain(inputs.images)


def _plain(t: Tensor) -> Tensor:
    # Tensors made under torch.inference_mode cannot enter autograd; a copy can.
    return t.clone() if t.is_inference() else t


def _validate(inputs: TTOInputs, aux: RegressorOutput | None, config: TTOConfig) -> None:
    kp = inputs.keypoints
    fmt = inputs.keypoint_format
    if fmt not in KEYPOINT_FORMATS:
        raise ValueError(
            f"unsupported keypoint format {fmt!r}; valid: {KEYPOINT_FORMATS} "
            "(convert others with model.keypoints.convert_keypoints)"
        )
    n_kp = get_format(fmt).num_keypoints
    if not isinstance(kp, Tensor) or kp.dim() != 3 or kp.shape[1:] != (n_kp, 3):
        shape = tuple(kp.shape) if isinstance(kp, Tensor) else type(kp).__name__
        raise ValueError(f"keypoints must be (B, {n_kp}, 3) [x, y, conf] for {fmt}, got {shape}")
    if not bool(torch.isfinite(kp).all()):
        raise ValueError("keypoints contain NaN/Inf; send finite [x, y, conf] values")
    if bool((kp[..., 2] < 0).any()):
        raise ValueError("keypoint confidences must be >= 0")
    batch = kp.shape[0]
    if batch == 0:
        raise ValueError("no people to fit: keypoints is empty (B = 0)")
    if inputs.crop.batch_size != batch:
        raise ValueError(f"crop has {inputs.crop.batch_size} people, keypoints {batch}")
    inputs.crop.validate()
    for name in ("images", "features"):
        value = getattr(inputs, name)
        if value is not None and value.shape[0] != batch:
            raise ValueError(f"{name} has {value.shape[0]} people, keypoints {batch}")
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contain NaN/Inf")
    if aux is not None and aux.batch_size != batch:
        raise ValueError(f"aux prediction has {aux.batch_size} people, keypoints {batch}")
    if config.scope == "full" and inputs.images is None:
        _require_images(inputs)


def _notify(on_step: Callable[[int, int], None] | None, step: int, total: int) -> None:
    if on_step is not None:
        on_step(step, total)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """BatchNorm statistics and dropout frozen during the TTO (as the reference evaluation)."""
    if not any(m.training for m in module.modules()):  # already (the worker's case)
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
