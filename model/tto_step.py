"""The TTO's step, as pure functions of the adapted weights (ARCHITECTURE §3).

`predict` runs a module (a `Regressor` or its head) with a dict of weights in place of its
own; `step_loss` is the TTO objective of that prediction ("test_u": L_test-u, step 0's loss;
"2d": the 2D keypoint loss of the Adam steps); `loss_and_grad` differentiates it, eagerly
or as a compiled graph; `inner_step` is one SGD step on it. `model.tto`'s staged fit is
built from these, and meta-training's inner step is `inner_step` itself, so both run the
same code.

With ``per_sample=True`` every adapted tensor carries a leading person dimension and the
forward runs under `torch.func.vmap`: each person gets their own weights and gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from model.config import LossWeights
from model.linear_tape import LinearTape, active_tape
from model.losses import LossTerms, check_finite, loss_test_u, reprojected_keypoint_loss
from model.outputs import BodyOutput, CropInfo, RegressorOutput, SMPLParams

log = logging.getLogger(__name__)

OBJECTIVES = ("test_u", "2d")
# Not a parameter: a head's feature term (fc1's feature half applied to its fixed input,
# (B, hidden)) adapted in place of that layer's weights (`model.tto_adam`). `predict`
# passes it to the head as its `feature_term` argument.
FEATURE_TERM = "feature_term"

Params = dict[str, Tensor]


class BodyModelLike(Protocol):
    """What the TTO needs of `model.body.BodyModel`."""

    def __call__(self, params: SMPLParams) -> BodyOutput: ...  # full mesh

    def keypoints_only(self, params: SMPLParams) -> BodyOutput: ...  # vertices None


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
    params[FEATURE_TERM], when present, is the head's feature term (B, hidden): it replaces
    `args`' third element (the head's `feature_term` argument).
    """
    if FEATURE_TERM in params:
        params = dict(params)
        args = (*args[:2], params.pop(FEATURE_TERM))
    tensors = {**params, **(buffers or {})}
    if not per_sample:
        return functional_call(module, tensors, args)
    tape = active_tape()
    if tape is None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        tape = LinearTape(params)  # no gradient wanted: its products alone (eager)
    if tape is not None and not buffers and _head(module) and tape.can_cover(params):
        # A head (every layer through `model.regressor.linear`) whose copies are all its
        # linear layers': each person's rows meet their own weights in the tape's products,
        # no vmap needed.
        with tape.recording():
            return functional_call(module, tensors, args)

    def one(p: Params, *xs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = functional_call(module, {**p, **(buffers or {})}, tuple(x[None] for x in xs))
        prm = out.params
        return prm.global_orient[0], prm.body_pose[0], prm.betas[0], out.crop_cam[0]

    go, bp, betas, cam = vmap(one)(params, *args)
    return RegressorOutput(SMPLParams(go, bp, betas), cam)


def _head(module: nn.Module) -> bool:
    """Whether `module` is a regressor head, all of whose layers run through
    `model.regressor.linear` (the tape sees every one)."""
    return hasattr(module, "feature_input")


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
    compiled: bool = False,
) -> StepLoss:
    """The TTO objective of a prediction with `params`.

    objective: "test_u" (L_test-u; its agreement terms need batch.aux) or "2d" (the
    unweighted 2D keypoint loss, what the Adam steps minimise).
    The loss to differentiate is the batch mean, or with per_sample the sum of per-person
    losses (so each person's gradient is that person's own).
    compiled: the prediction and the loss as one `torch.compile`d graph (no buffers), whose
    loss differentiates through the graph's compiled backward.
    """
    if compiled:
        if buffers:
            raise ValueError("a compiled step loss takes no buffers")
        flat = run_compiled(
            _compiled_loss(objective, per_sample), params, module, batch, body, weights
        )
        if flat is not None:
            return unflat_step(flat)
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
    grad_buffers: Params | None = None,
) -> tuple[list[Tensor], StepLoss]:
    """`step_loss` and its gradient with respect to each of `params` (in their order).

    params must be leaves that require grad. compiled=False: eager forward, then
    `torch.autograd.grad`, for the head's linear layers of their outputs, which
    `model.linear_tape.LinearTape` turns into their weight gradients (one product a layer
    instead of one per application; per-person copies of a head's layers without vmap).
    compiled=True: the forward and loss run as one `torch.compile`d
    graph (compiled once per objective and shape, then reused), whose backward torch
    compiles with it; the gradient is still `torch.autograd.grad` of its loss. That removes
    the per-operation overhead that dominates a small head's step on a CPU. The gradients
    are constants either way (no graph through them). grad_buffers: where the tape writes
    per-person (or one person's) weight gradients, kept by the caller between steps (the
    gradients returned are then those buffers, valid until the next call).
    """
    names = list(params)
    # Eager: the linear layers the tape records get their weight gradients from it
    # (`model.linear_tape`: one product per layer), the other tensors from autograd. Under
    # vmap (per-person copies `predict` cannot run as the tape's products) it records nothing.
    tape = None if compiled else LinearTape(params, grad_buffers)
    with tape.recording() if tape is not None else contextlib.nullcontext():
        result = step_loss(
            module, params, batch, body, objective=objective, weights=weights,
            per_sample=per_sample, compiled=compiled,
        )
    outputs = [] if tape is None else tape.outputs
    covered = set() if tape is None else tape.covered
    rest = [n for n in names if n not in covered]
    found = torch.autograd.grad(
        result.loss, [*outputs, *(params[n] for n in rest)], allow_unused=True
    )
    by_name = dict(zip(rest, found[len(outputs) :], strict=True))
    if tape is not None:
        by_name.update(tape.gradients(found[: len(outputs)]))
    grads = [torch.zeros_like(params[n]) if by_name[n] is None else by_name[n] for n in names]
    return grads, dataclasses.replace(result, loss=result.loss.detach())


FlatStep = tuple[Tensor, Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]


def flat_step(r: StepLoss) -> FlatStep:
    """A `StepLoss` as plain tensors, everything detached but the loss (a compiled graph's
    output): (loss, per_sample, terms, (global_orient, body_pose, betas, crop_cam))."""
    terms = tuple(getattr(r.terms, f.name).detach() for f in dataclasses.fields(r.terms))
    prm = r.pred.params
    pred = tuple(t.detach() for t in (prm.global_orient, prm.body_pose, prm.betas, r.pred.crop_cam))
    return r.loss, r.per_sample.detach(), terms, pred


def unflat_step(flat: FlatStep) -> StepLoss:
    """`flat_step`'s tensors as a `StepLoss`, checked finite (the check is skipped inside a
    graph)."""
    loss, per, terms, pred = flat
    check_finite(per, "the TTO loss")
    go, bp, betas, cam = pred
    return StepLoss(loss, per, LossTerms(*terms), RegressorOutput(SMPLParams(go, bp, betas), cam))


def grad_and_flat(
    module: nn.Module, params: Params, batch: StepBatch, body: BodyModelLike,
    weights: LossWeights, objective: str,
) -> tuple[Params, FlatStep]:
    """Inside a compiled update graph (one person): the gradient of `step_loss` with respect
    to each of `params`, and the step as `flat_step` (its loss detached)."""

    def loss(p: Params) -> tuple[Tensor, FlatStep]:
        flat = flat_step(step_loss(module, p, batch, body, objective=objective, weights=weights))
        return flat[0], (flat[0].detach(), *flat[1:])

    grads, (_, flat) = grad_and_value(loss, has_aux=True)(params)
    return grads, flat


def _sgd_step(
    params: Params, module: nn.Module, batch: StepBatch, body: BodyModelLike,
    weights: LossWeights, lr: float, objective: str,
) -> tuple[Params, FlatStep]:
    """`inner_step` for one person as one graph: the loss, its gradient, ``w - lr * grad``."""
    grads, flat = grad_and_flat(module, params, batch, body, weights, objective)
    return {n: p.detach() - lr * grads[n] for n, p in params.items()}, flat


_LOSSES: dict[tuple[str, bool], Callable[..., Any]] = {}


def _compiled_loss(objective: str, per_sample: bool) -> Callable[..., Any]:
    """The flat step loss for `run_compiled`, one function object per (objective,
    per_sample), so torch.compile's cache (and its recompilation for a new number of
    people, after which the batch size is dynamic) is shared by every fit."""
    key = (objective, per_sample)
    if key not in _LOSSES:

        def flat(
            params: Params, module: nn.Module, batch: StepBatch, body: BodyModelLike,
            weights: LossWeights,
        ) -> FlatStep:
            return flat_step(
                step_loss(
                    module, params, batch, body, objective=objective, weights=weights,
                    per_sample=per_sample,
                )
            )

        _LOSSES[key] = flat
    return _LOSSES[key]


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
    treats the gradient as a constant (w' still depends on w through the identity term) and
    returns the loss detached: it comes from `loss_and_grad`, the Adam steps' own gradient
    (for a head's linear layers, `model.linear_tape`'s products).
    compiled: compute the step as compiled graphs (one person: the loss, its gradient and
    the update as one, w' then a constant; several: `loss_and_grad`); the TTO's step 0 uses
    it, meta-training (whose w' must stay differentiable in w) does not.
    """
    names = list(params)
    if compiled and (not first_order or buffers):
        raise ValueError("a compiled inner step is first-order and takes no buffers")
    plain = {n: p.detach().requires_grad_(True) for n, p in params.items()} if compiled else params
    if compiled and not per_sample:  # the loss, its gradient and the update as one graph
        out = run_compiled(_sgd_step, plain, module, batch, body, weights, lr, objective)
        if out is not None:
            return out[0], unflat_step(out[1])
    if first_order and not buffers:  # the gradient a constant: the Adam steps' own
        grad_list, result = loss_and_grad(
            module, plain, batch, body, objective=objective, weights=weights,
            per_sample=per_sample, compiled=compiled,
        )  # fmt: skip
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


# --- compiling -----------------------------------------------------------------------------

_RECOMPILE_LIMIT = 64
_COMPILE_FAILURE: str | None = None  # why torch.compile failed in this process, if it did
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


def compile_failure() -> str | None:
    """Why compiled TTO steps fell back to eager in this process (None: they did not)."""
    return _COMPILE_FAILURE


def _compile_failed(exc: Exception) -> None:
    """Remember that compiling failed; every later step runs eager (the same maths)."""
    global _COMPILE_FAILURE
    _COMPILE_FAILURE = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log.warning("TTO: torch.compile failed (%s); running the steps eagerly", _COMPILE_FAILURE)


def _allow_recompiles() -> None:
    """Raise dynamo's per-function recompile limit: a compiled TTO function gets a graph per
    objective, adapted subset, network shape and (static, then dynamic) number of people,
    and the default limit (8) would silently drop the rest to eager."""
    limit = max(int(torch._dynamo.config.recompile_limit), _RECOMPILE_LIMIT)
    torch._dynamo.config.recompile_limit = limit
