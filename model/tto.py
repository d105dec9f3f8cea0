"""Test-time optimisation (TTO) from the meta-parameters (ARCHITECTURE §3).

`fit` adapts a per-person copy of f_w's weights to that person's 2D keypoints:

- step 0: one SGD step on L_test-u (2D keypoints + agreement with f_u's prediction);
- Adam steps: on the 2D keypoint loss only, until `TTOConfig.steps` or until the loss
  changes by less than `TTOConfig.early_stop`;

with BatchNorm and dropout in eval mode. The scope says which weights adapt: "head" (the
regressor head over fixed backbone features) or "full" (everything).

The functional core (`predict`, `step_loss`, `inner_step`) takes parameters as a dict, so
meta-training calls the very same `inner_step` (first- or second-order) that the TTO uses.
With ``per_sample=True`` every adapted tensor carries a leading person dimension and the
forward runs under `torch.func.vmap`: each person gets their own weights and gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from model.config import LossWeights, TTOConfig
from model.losses import LossTerms, check_finite, loss_test_u, reprojected_keypoint_loss
from model.outputs import BodyOutput, CropInfo, FitResult, RegressorOutput, SMPLParams
from model.regressor import Regressor

log = logging.getLogger(__name__)

OBJECTIVES = ("test_u", "2d")
_KEYPOINT_COUNTS = {"coco17": 17, "openpose25": 25, "smpl24": 24}
SKIP_NO_KEYPOINTS = "no keypoint with confidence > 0"
# People fitted in one pass by the fused head engine (each with their own weight copy, about
# 21 MB for a 1024-wide head with every weight adapting).
FUSED_GROUP = 16

Params = dict[str, Tensor]


class BodyModelLike(Protocol):
    """What the TTO needs of `model.body.BodyModel`."""

    def __call__(self, params: SMPLParams) -> BodyOutput: ...  # full mesh

    def keypoints_only(self, params: SMPLParams) -> BodyOutput: ...  # vertices None


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


@dataclass(frozen=True)
class StepBatch:
    """The data one inner step sees.

    args: the module's inputs: (features (B, F) or images (B, 3, H, W), bbox_info (B, 3)),
        for a head optionally followed by its cached feature_term (B, hidden).
    keypoints: (B, K, 3). aux / aux_body: f_u's prediction and its posed body (full mesh for
    the vertex term), or None for a 2D-only step 0.
    """

    args: tuple[Tensor, ...]
    keypoints: Tensor
    crop: CropInfo
    keypoint_format: str = "coco17"
    aux: RegressorOutput | None = None
    aux_body: BodyOutput | None = None


@dataclass(frozen=True)
class StepLoss:
    """loss: what to differentiate (scalar). per_sample: (B,) per-person totals.
    terms: every term with reduction "none". pred: the prediction it was computed from."""

    loss: Tensor
    per_sample: Tensor
    terms: LossTerms
    pred: RegressorOutput


# --- functional core -----------------------------------------------------------------------


def predict(
    module: nn.Module,
    params: Params,
    args: tuple[Tensor, ...],
    buffers: Params | None = None,
    per_sample: bool = False,
) -> RegressorOutput:
    """Run `module` (a `Regressor` or `RegressorHead`) with `params` replacing its own.

    params: any subset of the module's parameters; the rest are the module's own.
    per_sample: each tensor in params is (B, ...) — one copy per sample — and sample i of
    `args` runs with copy i (under `torch.func.vmap`).
    """
    tensors = {**params, **(buffers or {})}
    if not per_sample:
        return functional_call(module, tensors, args)

    def one(p: Params, *xs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = functional_call(module, {**p, **(buffers or {})}, tuple(x[None] for x in xs))
        prm = out.params
        return prm.global_orient[0], prm.body_pose[0], prm.betas[0], out.crop_cam[0]

    go, bp, betas, cam = vmap(one)(params, *args)
    return RegressorOutput(SMPLParams(go, bp, betas), cam)


def step_loss(
    module: nn.Module,
    params: Params,
    batch: StepBatch,
    body: BodyModelLike,
    *,
    objective: str,
    weights: LossWeights,
    buffers: Params | None = None,
    per_sample: bool = False,
) -> StepLoss:
    """The TTO objective of a prediction with `params`.

    objective: "test_u" (L_test-u; its agreement terms need batch.aux) or "2d" (the
    unweighted 2D keypoint loss, what the Adam steps minimise).
    The loss to differentiate is the batch mean, or with per_sample the sum of per-person
    losses (so each person's gradient is that person's own).
    """
    pred = predict(module, params, batch.args, buffers, per_sample)
    return prediction_loss(
        pred, batch, body, objective=objective, weights=weights, per_sample=per_sample
    )


def prediction_loss(
    pred: RegressorOutput,
    batch: StepBatch,
    body: BodyModelLike,
    *,
    objective: str,
    weights: LossWeights,
    per_sample: bool = False,
) -> StepLoss:
    """`step_loss` of a given prediction (B people): the loss half of a step."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {OBJECTIVES}")
    if objective == "2d":
        per = reprojected_keypoint_loss(
            pred,
            body.keypoints_only(pred.params),
            batch.keypoints,
            batch.crop,
            batch.keypoint_format,
            reduction="none",
        )
        zero = torch.zeros_like(per)
        terms = LossTerms(per, per, zero, zero, zero, zero, zero)
    else:
        # The vertex term needs the full mesh; skip it when there is nothing to agree with.
        needs_mesh = batch.aux_body is not None and batch.aux_body.vertices is not None
        pred_body = body(pred.params) if needs_mesh else body.keypoints_only(pred.params)
        terms = loss_test_u(
            pred,
            pred_body,
            batch.keypoints,
            batch.crop,
            weights,
            batch.aux,
            batch.aux_body,
            batch.keypoint_format,
            reduction="none",
        )
        per = terms.total
    loss = per.sum() if per_sample else per.mean()
    return StepLoss(loss, per, terms, pred)


def loss_and_grad(
    module: nn.Module,
    params: Params,
    batch: StepBatch,
    body: BodyModelLike,
    *,
    objective: str,
    weights: LossWeights,
    per_sample: bool = False,
    compiled: bool = False,
) -> tuple[list[Tensor], StepLoss]:
    """`step_loss` and its gradient with respect to each of `params` (in their order).

    compiled=False: eager forward, then `torch.autograd.grad`. compiled=True: forward and
    backward as one `torch.compile`d graph of `torch.func.grad_and_value(step_loss)` (the
    same maths; a graph is compiled once per shape and objective, then reused), which
    removes the per-operation overhead that dominates a small head's step on a CPU. The
    gradients are constants either way (no graph through them).
    """
    if compiled and _COMPILE_FAILURE is None:
        try:
            grad_fn = _compiled_grad(objective, per_sample)
            grads_by_name, (total, (per, terms, pred)) = grad_fn(
                params, module, batch, body, weights
            )
        except Exception as exc:  # no C++ compiler, an unsupported backend, ...
            log.debug("torch.compile failure", exc_info=True)
            _compile_failed(exc)
        else:
            check_finite(per, "the TTO loss")  # skipped inside the graph
            grads = [grads_by_name[n] for n in params]
            return grads, StepLoss(total, per, LossTerms(*terms), _unflat_pred(pred))
    result = step_loss(
        module, params, batch, body, objective=objective, weights=weights, per_sample=per_sample
    )
    names = list(params)
    grads_or_none = torch.autograd.grad(result.loss, [params[n] for n in names], allow_unused=True)
    return [
        torch.zeros_like(params[n]) if g is None else g
        for n, g in zip(names, grads_or_none, strict=True)
    ], result


_COMPILED: dict[tuple[str, bool], Callable[..., Any]] = {}
_RECOMPILE_LIMIT = 64
_COMPILE_FAILURE: str | None = None  # why torch.compile failed in this process, if it did


def _compile_failed(exc: Exception) -> None:
    """Remember that compiling failed; every later step runs eager (the same maths)."""
    global _COMPILE_FAILURE
    _COMPILE_FAILURE = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log.warning("TTO: torch.compile failed (%s); running the steps eagerly", _COMPILE_FAILURE)


def compile_failure() -> str | None:
    """Why the compiled TTO steps fell back to eager in this process (None: they did not)."""
    return _COMPILE_FAILURE


_COMPILED_FNS: dict[Callable[..., Any], Callable[..., Any]] = {}


def run_compiled(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) as a `torch.compile`d graph (compiled on first use, once per function),
    or None when compiling failed (then this process runs everything eagerly).

    With inductor's C++ wrapper, a call costs a third less here than with its Python one.
    """
    if _COMPILE_FAILURE is not None:
        return None
    try:
        if fn not in _COMPILED_FNS:
            _allow_recompiles()
            _COMPILED_FNS[fn] = torch.compile(fn, options={"cpp_wrapper": True})
        return _COMPILED_FNS[fn](*args)
    except Exception as exc:  # no C++ compiler, an unsupported backend, ...
        log.debug("torch.compile failure", exc_info=True)
        _compile_failed(exc)
        return None


def _allow_recompiles() -> None:
    """Raise dynamo's per-function recompile limit: a compiled TTO function gets a graph per
    objective, adapted subset, network shape and (static, then dynamic) number of people,
    and the default limit (8) would silently drop the rest to eager."""
    limit = max(int(torch._dynamo.config.recompile_limit), _RECOMPILE_LIMIT)
    torch._dynamo.config.recompile_limit = limit


def _compiled_grad(objective: str, per_sample: bool) -> Callable[..., Any]:
    """The compiled ``grad_and_value`` of the flat step loss, one per (objective, per_sample).

    One function object per key, so torch.compile's cache (and its recompilation for a new
    number of people, after which the batch size is dynamic) is shared by every fit.
    """
    key = (objective, per_sample)
    if key not in _COMPILED:
        # Every key's graphs hang off the same traced frame (functorch's wrapper).
        _allow_recompiles()

        def flat(
            params: Params, module: nn.Module, batch: StepBatch, body: BodyModelLike,
            weights: LossWeights,
        ) -> tuple[Tensor, tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]]:
            r = step_loss(
                module, params, batch, body, objective=objective, weights=weights,
                per_sample=per_sample,
            )
            terms = tuple(getattr(r.terms, f.name) for f in dataclasses.fields(r.terms))
            prm = r.pred.params
            pred = (prm.global_orient, prm.body_pose, prm.betas, r.pred.crop_cam)
            return r.loss, (r.per_sample.detach(), terms, pred)

        _COMPILED[key] = torch.compile(grad_and_value(flat, has_aux=True))
    return _COMPILED[key]


def _unflat_pred(pred: tuple[Tensor, ...]) -> RegressorOutput:
    go, bp, betas, cam = (t.detach() for t in pred)
    return RegressorOutput(SMPLParams(go, bp, betas), cam)


def inner_step(
    module: nn.Module,
    params: Params,
    batch: StepBatch,
    body: BodyModelLike,
    *,
    lr: float,
    weights: LossWeights,
    objective: str = "test_u",
    buffers: Params | None = None,
    per_sample: bool = False,
    first_order: bool = True,
    compiled: bool = False,
) -> tuple[Params, StepLoss]:
    """One SGD step on the TTO objective: ``w' = w - lr * grad``. Returns (w', the loss at w).

    params must require grad (leaves for the TTO; the live parameters, or tensors derived
    from them, in meta-training). first_order=False keeps the graph of the gradient, so an
    outer loss on w' differentiates through the step (second-order MAML); first_order=True
    treats the gradient as a constant (w' still depends on w through the identity term).
    compiled: compute the loss and gradient as one compiled graph (`loss_and_grad`); the
    TTO's step 0 uses it, meta-training (whose w' must stay differentiable in w) does not.
    """
    names = list(params)
    if compiled:
        if not first_order or buffers:
            raise ValueError("a compiled inner step is first-order and takes no buffers")
        plain = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        grad_list, result = loss_and_grad(
            module, plain, batch, body, objective=objective, weights=weights,
            per_sample=per_sample, compiled=True,
        )
        return {n: params[n] - lr * g for n, g in zip(names, grad_list, strict=True)}, result
    result = step_loss(
        module,
        params,
        batch,
        body,
        objective=objective,
        weights=weights,
        buffers=buffers,
        per_sample=per_sample,
    )
    grads = torch.autograd.grad(
        result.loss,
        [params[n] for n in names],
        create_graph=not first_order,
        allow_unused=True,
    )
    updated = {}
    for name, grad in zip(names, grads, strict=True):
        if grad is None:  # a parameter this objective does not reach
            updated[name] = params[name]
            continue
        updated[name] = params[name] - lr * (grad.detach() if first_order else grad)
    return updated, result


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
    people: tuple[int, ...] = (1, 2),
    keypoint_format: str = "coco17",
) -> float:
    """Compile the TTO's graphs before the first request (config.compile; "head" scope).

    Fits a made-up scene of each size in `people` (1, then 2: the second compile makes the
    number of people dynamic, so every later size reuses it). Returns the seconds it took.
    No-op (0.0) when config.compile is off or the scope is not "head".
    """
    if not config.compile or config.scope != "head":
        return 0.0
    device = next(regressor.parameters()).device
    start = time.perf_counter()
    for n in people:
        k = _KEYPOINT_COUNTS[keypoint_format]
        crop = CropInfo.from_boxes(
            torch.full((n, 2), 200.0), torch.full((n,), 300.0), torch.full((n, 2), 400.0)
        ).to(device)
        keypoints = torch.cat([200.0 + 50.0 * torch.rand(n, k, 2), torch.ones(n, k, 1)], -1)
        features = torch.zeros(n, regressor.head.feature_dim, device=device)
        with torch.no_grad():
            aux = regressor.head(features, crop.bbox_info())
        inputs = TTOInputs(keypoints.to(device), crop, keypoint_format, features=features)
        fit(regressor, inputs, body, dataclasses.replace(config, steps=1, early_stop=0.0), aux)
    return time.perf_counter() - start


# --- the fit -------------------------------------------------------------------------------


def fit(
    regressor: Regressor,
    inputs: TTOInputs,
    body: BodyModelLike,
    config: TTOConfig | None = None,
    aux: RegressorOutput | None = None,
    *,
    batched: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
    record_steps: tuple[int, ...] = (),
) -> FitResult:
    """Adapt a copy of `regressor`'s weights to each person's 2D keypoints.

    regressor: f_w (its own weights are not changed). aux: f_u's prediction for the same
    people (B), used by step 0 when config.use_aux. batched: fit all people of the "head"
    scope at once (per-person weight copies) instead of one by one; the results are
    equal. None (default) picks the faster (`default_batched`).
    on_step(step, total): progress callback after each update.
    record_steps: Adam step counts (0..config.steps) whose predictions `FitResult.recorded`
    keeps, so one fit gives a whole error-vs-steps curve (needs early_stop == 0: with an
    early stop, people would stop at different steps).
    The device is the inputs' device; the regressor must already be there.
    """
    config = config or TTOConfig()
    _validate(inputs, aux, config)
    bad = [k for k in record_steps if not 0 <= k <= config.steps]
    if bad:
        raise ValueError(f"record_steps must lie in 0..{config.steps} (config.steps), got {bad}")
    if record_steps and config.early_stop > 0:
        raise ValueError("record_steps needs early_stop = 0 (every person runs every step)")
    with _eval_mode(regressor), _threads(config.num_threads), torch.enable_grad():
        return _fit(regressor, inputs, body, config, aux, batched, on_step, tuple(record_steps))


def _fit(
    regressor: Regressor,
    inputs: TTOInputs,
    body: BodyModelLike,
    config: TTOConfig,
    aux: RegressorOutput | None,
    batched: bool | None,
    on_step: Callable[[int, int], None] | None,
    record_steps: tuple[int, ...] = (),
) -> FitResult:
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
    from model import head_tto  # it builds on this module

    fused = config.scope == "head" and config.fused_head and head_tto.supported(module, names)
    if batched is None:
        batched = default_batched(config, fused)
    if config.scope == "head" and batched and people:
        size = FUSED_GROUP if fused else len(people)
        groups = [people[i : i + size] for i in range(0, len(people), size)]
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
            *_aux_for(aux, idx, body, config),
        )
        if fused:
            run = head_tto.fit_group(
                regressor.head, names, x[idx], bbox_info[idx], batch, body, config,
                on_step=progress.of(g), record_steps=record_steps,
            )
        else:
            start = {n: own[n].detach() for n in names}
            run = _fit_group(
                module, start, batch, body, config, per_sample=len(group) > 1,
                on_step=progress.of(g), record_steps=record_steps,
            )
        for k, i in enumerate(group):
            records[i] = run.person(k)
    return _assemble([records[i] for i in range(len(active))], config.scope)


def default_batched(config: TTOConfig, fused: bool) -> bool:
    """Whether `fit(batched=None)` fits a head scope's people in one pass: the faster of the
    two as measured in `docs/benchmarks.md` (the answers are equal either way).

    Batched when only the output layers adapt. With every head weight adapting, a step is
    bound by the traffic over each person's weight copy: the generic path's vmap and the
    compiled fused steps are faster one person at a time, the eager fused steps batched.
    """
    if config.head_subset == "output":
        return True
    return fused and not config.compile


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
class _GroupRun:
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


def _fit_group(
    module: nn.Module,
    start: Params,
    batch: StepBatch,
    body: BodyModelLike,
    config: TTOConfig,
    *,
    per_sample: bool,
    on_step: Callable[[int, int], None] | None,
    record_steps: tuple[int, ...] = (),
) -> _GroupRun:
    """The staged fit of P people (one weight copy each when per_sample, else P = 1)."""
    n_people = batch.keypoints.shape[0]
    total = 1 + config.steps
    expand = (lambda t: t.expand(n_people, *t.shape).clone()) if per_sample else torch.clone
    params = {n: expand(p).requires_grad_(True) for n, p in start.items()}
    use_aux = config.use_aux and batch.aux is not None

    # Step 0: one SGD step on L_test-u (2D + agreement with f_u), through `inner_step`.
    stepped, loss0 = inner_step(
        module,
        params,
        batch,
        body,
        lr=config.sgd_lr,
        weights=config.loss_weights,
        objective="test_u" if use_aux else "2d",
        per_sample=per_sample,
        compiled=config.compile,
    )
    params = {n: p.detach().requires_grad_(True) for n, p in stepped.items()}
    history = [loss0.terms.keypoints_2d.detach()]
    steps_run = torch.ones(n_people, dtype=torch.long)
    stopped = torch.zeros(n_people, dtype=torch.bool)
    _notify(on_step, 1, total)

    # Adam steps on the 2D keypoint loss only, with a per-person early stop.
    optimizer = _adam(list(params.values()), config)
    frozen: Params | None = None  # weights of people who stopped, kept from their last step
    recorded: dict[int, RegressorOutput] = {}
    for step in range(1, config.steps + 1):
        # autograd.grad (inside loss_and_grad), not backward(): only the adapted copies get
        # gradients (backward would also fill .grad of the regressor's own parameters).
        grads, current = loss_and_grad(
            module, params, batch, body, objective="2d", weights=config.loss_weights,
            per_sample=per_sample, compiled=config.compile,
        )
        if step - 1 in record_steps:  # this step's forward is the prediction after step - 1
            recorded[step - 1] = current.pred.detach()
        # contiguous(): vmap returns transposed weight gradients, and fused Adam on CPU
        # (torch 2.13) reads a gradient as if it had its parameter's strides.
        optimizer.step([g.contiguous() for g in grads])
        losses = current.per_sample.detach()
        running = ~stopped
        steps_run += running.long()
        history.append(losses)
        newly = running & ((losses - history[-2]).abs() < config.early_stop)
        if bool(newly.any()):
            frozen = _freeze(frozen, params, newly)
            stopped |= newly
        _notify(on_step, step + 1, total)
        if bool(stopped.all()):
            break

    final_params = _merge_frozen(params, frozen, stopped)
    with torch.no_grad():
        last = step_loss(
            module,
            final_params,
            batch,
            body,
            objective="2d",
            weights=config.loss_weights,
            per_sample=per_sample,
        )
    if config.steps in record_steps:
        recorded[config.steps] = last.pred.detach()
    return _GroupRun(
        initial=loss0.pred.detach(),
        final=last.pred.detach(),
        history=history,
        final_loss=last.per_sample.detach(),
        test_u=loss0.per_sample.detach(),
        steps_run=steps_run,
        stopped=stopped,
        recorded=recorded,
    )


def _freeze(frozen: Params | None, params: Params, newly: Tensor) -> Params:
    """Remember the current weights of the people in `newly` (P,) bool."""
    if frozen is None:
        return {n: p.detach().clone() for n, p in params.items()}
    for n, p in params.items():
        frozen[n][newly] = p.detach()[newly]
    return frozen


def _merge_frozen(params: Params, frozen: Params | None, stopped: Tensor) -> Params:
    if frozen is None:
        return {n: p.detach() for n, p in params.items()}
    merged = {}
    for n, p in params.items():
        mask = stopped.reshape(-1, *([1] * (p.dim() - 1)))
        merged[n] = torch.where(mask, frozen[n], p.detach())
    return merged


class FusedAdam:
    """`torch.optim.Adam(fused=True)` without the Optimizer machinery: the same kernel
    (`torch._fused_adam_`) on the same state, called directly with the gradients.

    Fused Adam does the whole update in one kernel per tensor (4-10x less Adam time on this
    CPU than the per-op path), and skipping `Optimizer.step`'s bookkeeping saves a sizeable
    part of a head-scope TTO step. Adam is elementwise, so stacked per-person weights get
    exactly the per-person update. Devices without the fused kernel use torch.optim.Adam.
    """

    def __init__(self, params: list[Tensor], config: TTOConfig) -> None:
        self.params = params
        self.lr, self.eps = config.adam_lr, config.adam_eps
        self.betas = config.adam_betas
        self.fused = params[0].device.type in ("cpu", "cuda")
        if not self.fused:
            self._fallback = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)
            return
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.state_steps = [torch.zeros((), device=p.device) for p in params]

    def step(self, grads: list[Tensor]) -> None:
        """One Adam update of the parameters (in place) with these gradients."""
        if not self.fused:
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            self._fallback.step()
            return
        with torch.no_grad():
            torch._foreach_add_(self.state_steps, 1)
            torch._fused_adam_(
                self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.state_steps,
                amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                weight_decay=0.0, eps=self.eps, maximize=False, grad_scale=None, found_inf=None,
            )


def _adam(params: list[Tensor], config: TTOConfig) -> FusedAdam:
    return FusedAdam(params, config)


def _aux_for(
    aux: RegressorOutput | None, idx: Tensor, body: BodyModelLike, config: TTOConfig
) -> tuple[RegressorOutput | None, BodyOutput | None]:
    if aux is None or not config.use_aux:
        return None, None
    sub = aux.select(idx).detach()
    needs_mesh = config.loss_weights.vertices != 0
    with torch.no_grad():
        aux_body = run_compiled(_pose, body, sub.params, needs_mesh) if config.compile else None
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
    if fmt not in _KEYPOINT_COUNTS:
        raise ValueError(
            f"unsupported keypoint format {fmt!r}; valid: {tuple(_KEYPOINT_COUNTS)} "
            "(convert others with model.keypoints.convert_keypoints)"
        )
    n_kp = _KEYPOINT_COUNTS[fmt]
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
