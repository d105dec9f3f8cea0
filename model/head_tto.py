"""The "head" scope TTO as hand-written steps (`TTOConfig.fused_head`, on by default).

The same fit as `model.tto`'s generic path (autograd through `functional_call`), computed
with the head's structure in mind. On a CPU a head step is bound by memory traffic over
millions of weights and by per-operation overhead; this engine removes most of both.

- The refinement iterations run forward and backward by hand, a handful of large products
  per step: a weight gradient is the sum over the iterations of rank-one products,
  accumulated into buffers allocated once per fit.
- fc1's feature half is never materialised. Its input z = [features, bbox_info, 1] (the 1
  carries the bias) is fixed during a fit, so every gradient of that layer is u z^T with
  u = dL/d(fc1 output); Adam's moments then stay rank one, m = M z^T and v = V (z^2)^T, and
  the layer only ever enters the forward as W z. Each update adds to W z exactly
  -lr/bc1 * M_j * sum_k z_k^2 / (sqrt(V_j / bc2) |z_k| + eps): the Adam step of the full
  matrix, applied to the one vector the forward uses. That is 2.1 M of resnet50's 3.4 M
  head weights (0.5 M of resnet18's 1.9 M) that take no memory traffic.
- The loss half (prediction -> posed keypoints -> 2D loss, and its gradient with respect to
  the head's output) is `model.tto.prediction_loss` through autograd. With
  `TTOConfig.compile`, a step's forward, loss and backward run as one `torch.compile`d graph
  (the loss gradient by `torch.func.grad_and_value` inside it); Adam stays the fused kernel.

Every person gets their own weight copy (a leading person dimension), as in the generic
path; several people are fitted in one pass. Results equal the generic path's to float
rounding (tested).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

from model.config import LossWeights, TTOConfig
from model.losses import LossTerms, check_finite
from model.outputs import RegressorOutput
from model.regressor import CAM_DIM, NUM_BETAS, POSE_DIM, RegressorHead, raw_to_output
from model.tto import (
    BodyModelLike,
    FusedAdam,
    StepBatch,
    _freeze,
    _GroupRun,
    _merge_frozen,
    _notify,
    prediction_loss,
    run_compiled,
)

log = logging.getLogger(__name__)

# The head's layers as this engine sees them: fc1's state half, fc2, the decoder.
LAYERS = ("fc1_state", "fc2", "dec")
FEATURE_LAYER = "fc1_feat"


def supported(head: Any, names: list[str]) -> bool:
    """Whether this engine fits `names` of `head`: whole layers (weight and bias together)."""
    if not isinstance(head, RegressorHead):
        return False
    layers = {n.split(".")[0] for n in names}
    if not layers <= {*LAYERS, FEATURE_LAYER}:
        return False
    own = dict(head.named_parameters())
    return all(n in names for n in own if n.split(".")[0] in layers)


@dataclass
class _Weights:
    """The head's weights for P people: adapted tensors carry a leading person dimension,
    fixed ones are the head's own. `base` (P, H) is fc1's feature half applied to z."""

    w: dict[str, Tensor]  # "fc1_state", "fc2", "dec": (out, in) or (P, out, in)
    b: dict[str, Tensor | None]  # "fc2", "dec": (out,) or (P, out); "fc1_state": None
    base: Tensor

    def adapted(self, adapt: frozenset[str]) -> dict[str, Tensor]:
        """The per-person tensors (in a fixed order): what Adam updates and a stop freezes."""
        out = {f"{n}.weight": self.w[n] for n in LAYERS if n in adapt}
        out.update({f"{n}.bias": b for n in LAYERS if n in adapt and (b := self.b[n]) is not None})
        out["base"] = self.base
        return out

    def tensors(self) -> dict[str, Tensor]:
        """Every layer's weight and bias by parameter name (the compiled graphs' input)."""
        out = {f"{n}.weight": w for n, w in self.w.items()}
        return out | {f"{n}.bias": b for n, b in self.b.items() if b is not None}

    @staticmethod
    def of(tensors: dict[str, Tensor], base: Tensor) -> _Weights:
        return _Weights(
            w={n: tensors[f"{n}.weight"] for n in LAYERS},
            b={n: tensors.get(f"{n}.bias") for n in LAYERS},
            base=base,
        )

    def load(self, tensors: dict[str, Tensor]) -> None:
        for key, t in tensors.items():
            if key == "base":
                self.base = t
            else:
                layer, kind = key.split(".")
                (self.w if kind == "weight" else self.b)[layer] = t


def _mv(w: Tensor, x: Tensor) -> Tensor:
    """x (P, in) through weight (out, in) or per-person (P, out, in): (P, out)."""
    if w.dim() == 2:
        return x @ w.t()
    # x as a row against the transposed weights: 4x faster than w @ x at 16 people here.
    return torch.bmm(x.unsqueeze(1), w.transpose(1, 2)).squeeze(1)


def _vm(g: Tensor, w: Tensor) -> Tensor:
    """g (P, out) back through the weight: g @ w, (P, in)."""
    if w.dim() == 2:
        return g @ w
    return torch.bmm(g.unsqueeze(1), w).squeeze(1)


def _add_bias(y: Tensor, b: Tensor | None) -> Tensor:
    return y if b is None else y + b


@dataclass
class _Trace:
    """What the backward needs of a forward: each iteration's inputs to the three layers."""

    states: list[Tensor]  # (P, S): fc1_state's input
    a: list[Tensor]  # (P, H): fc2's input
    x: list[Tensor]  # (P, H): the decoder's input


def _forward(weights: _Weights, init: Tensor, n_iter: int) -> tuple[Tensor, _Trace]:
    """The refinement iterations (dropout off): the final state (P, S) and the trace."""
    trace = _Trace([], [], [])
    state = init
    for _ in range(n_iter):
        trace.states.append(state)
        a = weights.base + _mv(weights.w["fc1_state"], state)
        x = _add_bias(_mv(weights.w["fc2"], a), weights.b["fc2"])
        state = _add_bias(_mv(weights.w["dec"], x), weights.b["dec"]) + state
        trace.a.append(a)
        trace.x.append(x)
    return state, trace


class _Grads:
    """Gradient buffers of the adapted layers, allocated once per fit and reused."""

    def __init__(self, weights: _Weights, adapt: frozenset[str]) -> None:
        self.w = {n: torch.empty_like(weights.w[n]) for n in LAYERS if n in adapt}

    def fill(
        self,
        weights: _Weights,
        factors: dict[str, tuple[list[Tensor], list[Tensor]]],
        grads: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """`_backprop`'s factors as weight gradients (in the buffers), added to `grads`."""
        for name, (outer, inner) in factors.items():
            # sum_i outer_i^T inner_i, as broadcast products accumulated into the buffer:
            # 3-5x faster here than one (P, out, n) @ (P, n, in) product (an MKL GEMM with
            # an inner dimension of 3), and no fresh 4 MB allocation per step.
            buf = self.w[name].view(-1, *weights.w[name].shape[-2:])
            torch.mul(outer[0].unsqueeze(2), inner[0].unsqueeze(1), out=buf)
            for o, x in zip(outer[1:], inner[1:], strict=True):
                buf.addcmul_(o.unsqueeze(2), x.unsqueeze(1))
            grads[f"{name}.weight"] = self.w[name]
        return grads


def _backprop(
    weights: _Weights, trace: _Trace, g: Tensor, adapt: frozenset[str]
) -> tuple[dict[str, tuple[list[Tensor], list[Tensor]]], dict[str, Tensor]]:
    """Back through the iterations from g (P, S) = dL/d(final state).

    Returns each adapted layer's weight gradient as factors (outer_i, inner_i), the
    gradient being sum_i outer_i^T inner_i over the iterations, and the other gradients
    (biases; "base": dL/d(fc1 output) summed over the iterations)."""
    n_iter = len(trace.states)
    fc1 = bool(adapt & {"fc1_state", FEATURE_LAYER})
    d_out: list[Tensor] = []  # dL/d(decoder output), per iteration, the last first
    d_x: list[Tensor] = []
    d_a: list[Tensor] = []
    for i in reversed(range(n_iter)):
        d_out.append(g)
        d_x.append(_vm(g, weights.w["dec"]))
        if i > 0 or fc1:  # the first iteration's only needs fc2's pass for fc1's gradients
            d_a.append(_vm(d_x[-1], weights.w["fc2"]))
        if i > 0:  # the state's gradient flows through fc1_state into the iteration before
            g = g + _vm(d_a[-1], weights.w["fc1_state"])
    for d in (d_out, d_x, d_a):
        d.reverse()  # in the trace's order
    pairs = {"fc1_state": (d_a, trace.states), "fc2": (d_x, trace.a), "dec": (d_out, trace.x)}
    factors = {name: pairs[name] for name in LAYERS if name in adapt}
    grads = {
        f"{name}.bias": torch.stack(pairs[name][0]).sum(0)
        for name in factors
        if weights.b[name] is not None
    }
    if FEATURE_LAYER in adapt:
        grads["base"] = torch.stack(d_a).sum(0)
    return factors, grads


class _FeatureAdam:
    """Adam on fc1's feature half, kept as its effect on `base` (see the module docstring).

    z: (P, K) the layer's input with a trailing 1 for the bias. M, V: (P, H) the rank-one
    factors of the first and second moments."""

    def __init__(self, z: Tensor, hidden: int, config: TTOConfig) -> None:
        self.z2, self.abs_z = z * z, z.abs()
        self.lr, self.eps = config.adam_lr, config.adam_eps
        self.beta1, self.beta2 = config.adam_betas
        self.compiled = config.compile
        self.m = z.new_zeros(z.shape[0], hidden)
        self.v = z.new_zeros(z.shape[0], hidden)
        self.t = 0

    def step(self, base: Tensor, u: Tensor) -> None:
        """One Adam update of fc1's feature weights with gradient u z^T, applied to base."""
        self.t += 1
        self.m.mul_(self.beta1).add_(u, alpha=1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(u, u, value=1 - self.beta2)
        bc1 = 1 - self.beta1**self.t
        bc2 = 1 - self.beta2**self.t
        c = (self.v / bc2).sqrt()  # (P, H): sqrt(v_jk / bc2) = c_j |z_k|
        base.sub_(self.m * self.row_sums(c), alpha=self.lr / bc1)

    def row_sums(self, c: Tensor) -> Tensor:
        """sum_k z_k^2 / (c_j |z_k| + eps) for every person and row j: (P, H)."""
        if self.compiled:
            out = run_compiled(_row_sums, self.z2, self.abs_z, c, self.eps)
            if out is not None:
                return out
        # Eager, in blocks of rows that keep the (P, rows, K) temporaries in cache.
        out = torch.empty_like(c)
        for j in range(0, c.shape[1], _ROW_BLOCK):
            rows = c[:, j : j + _ROW_BLOCK]
            out[:, j : j + _ROW_BLOCK] = _row_sums(self.z2, self.abs_z, rows, self.eps)
        return out


_ROW_BLOCK = 128


def _row_sums(z2: Tensor, abs_z: Tensor, c: Tensor, eps: float) -> Tensor:
    return (z2.unsqueeze(1) / (c.unsqueeze(2) * abs_z.unsqueeze(1) + eps)).sum(2)


# --- the loss half -------------------------------------------------------------------------


def _split(state: Tensor) -> RegressorOutput:
    pose, betas, cam = state.split((POSE_DIM, NUM_BETAS, CAM_DIM), dim=1)
    return raw_to_output(pose, betas, cam)


def _flat_loss(objective: str) -> Callable[..., Any]:
    def flat(
        state: Tensor, batch: StepBatch, body: BodyModelLike, weights: LossWeights
    ) -> tuple[Tensor, tuple[Tensor, tuple[Tensor, ...]]]:
        r = prediction_loss(
            _split(state), batch, body, objective=objective, weights=weights, per_sample=True
        )
        terms = tuple(getattr(r.terms, f.name) for f in dataclasses.fields(r.terms))
        return r.loss, (r.per_sample.detach(), terms)

    return flat


def _forward_backward(
    tensors: dict[str, Tensor],
    base: Tensor,
    init: Tensor,
    batch: StepBatch,
    body: BodyModelLike,
    loss_weights: LossWeights,
    objective: str,
    n_iter: int,
    adapt: frozenset[str],
) -> tuple[
    Tensor, tuple[Tensor, ...], Tensor,
    dict[str, tuple[list[Tensor], list[Tensor]]], dict[str, Tensor],
]:
    """Forward, loss and backward of one step (no update), each person's own loss.

    Returns (per-person losses (P,), the loss terms, the final state (P, S), the weight
    gradients as factors and the other gradients, as `_backprop`)."""
    weights = _Weights.of(tensors, base)
    final, trace = _forward(weights, init, n_iter)
    flat = _flat_loss(objective)
    if torch.compiler.is_compiling():  # functorch's transform traces into the graph
        g, (_, (per, terms)) = grad_and_value(flat, has_aux=True)(
            final, batch, body, loss_weights
        )
    else:  # eager autograd: the same gradient with less per-operation overhead
        with torch.enable_grad():
            leaf = final.detach().requires_grad_(True)
            loss, (per, terms) = flat(leaf, batch, body, loss_weights)
            (g,) = torch.autograd.grad(loss, [leaf])
        terms = tuple(t.detach() for t in terms)
    factors, grads = _backprop(weights, trace, g, adapt)
    return per, terms, final, factors, grads


def _step(
    weights: _Weights,
    init: Tensor,
    batch: StepBatch,
    body: BodyModelLike,
    config: TTOConfig,
    objective: str,
    n_iter: int,
    adapt: frozenset[str],
) -> tuple[Tensor, tuple[Tensor, ...], Tensor, dict, dict]:
    """`_forward_backward`, as one compiled graph when config.compile (the graph holds the
    many small operations of the loss half and the iterations)."""
    args = (
        weights.tensors(), weights.base, init, batch, body, config.loss_weights, objective,
        n_iter, adapt,
    )
    if config.compile:
        out = run_compiled(_forward_backward, *args)
        if out is not None:
            check_finite(out[0], "the TTO loss")  # skipped inside the graph
            return out
    return _forward_backward(*args)


def _evaluate(
    tensors: dict[str, Tensor],
    base: Tensor,
    init: Tensor,
    batch: StepBatch,
    body: BodyModelLike,
    loss_weights: LossWeights,
    n_iter: int,
) -> tuple[Tensor, Tensor]:
    """The final state (P, S) and each person's 2D loss (P,) with these weights."""
    weights = _Weights.of(tensors, base)
    final, _ = _forward(weights, init, n_iter)
    r = prediction_loss(
        _split(final), batch, body, objective="2d", weights=loss_weights, per_sample=True
    )
    return final, r.per_sample


# --- the fit -------------------------------------------------------------------------------


@torch.no_grad()
def fit_group(
    head: RegressorHead,
    names: list[str],
    features: Tensor,
    bbox_info: Tensor,
    batch: StepBatch,
    body: BodyModelLike,
    config: TTOConfig,
    *,
    on_step: Callable[[int, int], None] | None,
    record_steps: tuple[int, ...] = (),
) -> _GroupRun:
    """The staged fit of P people (one weight copy each), as `model.tto._fit_group`."""
    n_people = features.shape[0]
    total = 1 + config.steps
    adapt = frozenset(n.split(".")[0] for n in names)
    own = {n: p.detach() for n, p in head.named_parameters()}

    def copy(t: Tensor, layer: str) -> Tensor:  # one copy per person of an adapted layer
        return t.expand(n_people, *t.shape).clone() if layer in adapt else t

    z = torch.cat([features, bbox_info, features.new_ones(n_people, 1)], dim=1)
    weights = _Weights(
        w={n: copy(own[f"{n}.weight"], n) for n in LAYERS},
        b={n: copy(own[f"{n}.bias"], n) if f"{n}.bias" in own else None for n in LAYERS},
        base=head.feature_term(features, bbox_info),
    )
    init = torch.cat([head.init_pose, head.init_betas, head.init_cam], dim=1)
    init = init.expand(n_people, -1)
    grads = _Grads(weights, adapt)
    use_aux = config.use_aux and batch.aux is not None

    def step(objective: str) -> tuple[dict[str, Tensor], LossTerms, Tensor]:
        """Gradients, loss terms and the final state (the prediction, on demand)."""
        per, terms, final, factors, other = _step(
            weights, init, batch, body, config, objective, head.n_iter, adapt
        )
        return grads.fill(weights, factors, other), LossTerms(*terms), final

    # Step 0: one SGD step on L_test-u (2D + agreement with f_u).
    g0, terms0, initial = step("test_u" if use_aux else "2d")
    for key, t in weights.adapted(adapt).items():
        if key == "base":
            if FEATURE_LAYER in adapt:  # W z - lr (u z^T) z = W z - lr |z|^2 u
                t.sub_(g0["base"] * (z * z).sum(1, keepdim=True), alpha=config.sgd_lr)
        else:
            t.sub_(g0[key], alpha=config.sgd_lr)
    history = [terms0.keypoints_2d.detach()]
    steps_run = torch.ones(n_people, dtype=torch.long)
    stopped = torch.zeros(n_people, dtype=torch.bool)
    _notify(on_step, 1, total)

    # Adam steps on the 2D keypoint loss only, with a per-person early stop.
    tensors = {k: t for k, t in weights.adapted(adapt).items() if k != "base"}
    optimizer = FusedAdam(list(tensors.values()), config) if tensors else None
    feature_adam = _FeatureAdam(z, weights.base.shape[1], config) if FEATURE_LAYER in adapt else None
    frozen: dict[str, Tensor] | None = None
    recorded: dict[int, RegressorOutput] = {}
    for k in range(1, config.steps + 1):
        g, terms, state = step("2d")
        if optimizer is not None:
            optimizer.step([g[key] for key in tensors])
        if feature_adam is not None:
            feature_adam.step(weights.base, g["base"])
        if k - 1 in record_steps:
            recorded[k - 1] = _split(state)
        losses = terms.total.detach()
        running = ~stopped
        steps_run += running.long()
        history.append(losses)
        newly = running & ((losses - history[-2]).abs() < config.early_stop)
        if bool(newly.any()):
            frozen = _freeze(frozen, weights.adapted(adapt), newly)
            stopped |= newly
        _notify(on_step, k + 1, total)
        if bool(stopped.all()):
            break

    weights.load(_merge_frozen(weights.adapted(adapt), frozen, stopped))
    args = (weights.tensors(), weights.base, init, batch, body, config.loss_weights, head.n_iter)
    evaluated = run_compiled(_evaluate, *args) if config.compile else None
    final, final_loss = evaluated if evaluated is not None else _evaluate(*args)
    last_pred = _split(final)
    if config.steps in record_steps:
        recorded[config.steps] = last_pred
    return _GroupRun(
        initial=_split(initial),
        final=last_pred,
        history=history,
        final_loss=final_loss,
        test_u=terms0.total.detach(),
        steps_run=steps_run,
        stopped=stopped,
        recorded=recorded,
    )
