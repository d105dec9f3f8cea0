"""The TTO's second stage, the Adam steps on the 2D keypoint loss (`model.tto.fit_group`).

`AdamSteps` holds the adapted weights and Adam's moments for P people and runs one step at a
time: the loss and its gradient, then Adam's update. Eager, the gradient comes from
`model.tto_step.loss_and_grad` (the head's linear layers get theirs from
`model.linear_tape`, one product a layer, into `grad_buffers` kept from step to step) and the
dense weights step with `torch.optim.Adam` (its fused kernel). Compiled
(`TTORuntime.compile`, one person), the forward, the loss, its gradient
(`torch.func.grad_and_value`) and the update are one `torch.compile`d graph, one call a
step, with no autograd engine or optimizer object in between; there the update is
`adam_update`, torch.optim.Adam's maths as tensor operations (bias-corrected moments,
``p -= lr / bc1 * m / (sqrt(v / bc2) + eps)``), held equal to torch.optim.Adam by a test,
and the graph writes the weights and moments back in place (`_compiled_step`).
Compiled with several people in one pass, the loss and its gradient are one compiled graph
(`loss_and_grad`, under vmap), the dense weights step with torch.optim.Adam and the feature
term (below) with `adam_update` compiled on its own (16 paper-sized resnet50 heads: 832 ms a
fit with that update eager, 633 ms compiled, measured in one process here).

**fc1's feature half** (`RegressorHead.fc1_feat`, the head's largest layer: 0.5 M of the
shipped model's 0.95 M head weights) reads an input z that does not change during a fit.
Its weight gradient is therefore always g z^T, with g = dL/du and u = W z + b the layer's
output, and Adam's moments stay rank one: m = M [z, 1]^T, v = V [z^2, 1]^T (the trailing
1 carries the bias). An Adam step then changes u by exactly

    du_j = -lr / bc1 * M_j * sum_k z_k^2 / (sqrt(V_j / bc2) |z_k| + eps),

the full matrix's step applied to the only vector the forward uses. So the stage adapts u
(`model.tto_step.FEATURE_TERM`, the head's `feature_term` argument, (P, hidden)) with
moments M, V of the same size, in place of the (P, hidden, F) weights: no weight gradient
and no memory traffic for that layer. Step 0 runs before, on the full weights (it is
meta-training's inner step); `AdamSteps` turns its result into u. The results equal
full-matrix Adam's to float rounding (tested).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from model.config import LossWeights, TTOConfig
from model.regressor import FEATURE_LAYER
from model.tto_step import (
    FEATURE_TERM,
    BodyModelLike,
    FlatStep,
    Params,
    StepBatch,
    StepLoss,
    grad_and_flat,
    loss_and_grad,
    run_compiled,
    unflat_step,
)

WEIGHT, BIAS = f"{FEATURE_LAYER}.weight", f"{FEATURE_LAYER}.bias"


@dataclasses.dataclass(frozen=True)
class AdamHyper:
    """Adam's constants for step t: lr / bc1 and bc2 as tensors (so a compiled step is one
    graph for every t), betas and eps."""

    lr_bc1: Tensor
    bc2: Tensor
    beta1: float
    beta2: float
    eps: float


def adam_update(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, h: AdamHyper, z: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam update (new tensors, nothing in place): returns (p', m', v').

    z: None for a dense weight; for the feature term u (P, hidden), (z^2, |z|) of the
    layer's input with its trailing 1 ((P, K) each): the full matrix's update applied to u
    (module docstring)."""
    m = m * h.beta1 + g * (1 - h.beta1)
    v = v * h.beta2 + g * g * (1 - h.beta2)
    if z is None:
        return p - h.lr_bc1 * m / ((v / h.bc2).sqrt() + h.eps), m, v
    c = (v / h.bc2).sqrt()  # sqrt(v_jk / bc2) = c_j |z_k|
    return p - h.lr_bc1 * m * _row_sums(z, c, h.eps), m, v


_ROW_BLOCK = 128  # rows a block of the eager row sums: the (P, rows, K) temporary stays small


def _row_sums(z: tuple[Tensor, Tensor], c: Tensor, eps: float) -> Tensor:
    """sum_k z_k^2 / (c_j |z_k| + eps) for every person and row j: (P, hidden). Compiled,
    one fused loop; eager, in blocks of rows (the whole (P, hidden, K) quotient could be
    large for many people), each computed in place in one block-sized buffer (-9% of a
    paper-sized resnet50 fit, whose K is 1606, against a new tensor per operation)."""
    z2, abs_z = z[0].unsqueeze(1), z[1].unsqueeze(1)
    if torch.compiler.is_compiling() or c.shape[1] <= _ROW_BLOCK:
        return (z2 / (c.unsqueeze(2) * abs_z + eps)).sum(2)
    out = torch.empty_like(c)
    buf = c.new_empty(c.shape[0], _ROW_BLOCK, abs_z.shape[-1])
    for j in range(0, c.shape[1], _ROW_BLOCK):
        rows = c[:, j : j + _ROW_BLOCK]
        t = buf[:, : rows.shape[1]]
        torch.mul(rows.unsqueeze(2), abs_z, out=t)
        torch.div(z2, t.add_(eps), out=t)
        torch.sum(t, 2, out=out[:, j : j + _ROW_BLOCK])
    return out


def feature_layer_adapts(module: nn.Module, names: Params) -> bool:
    """Whether `module` is a head whose feature layer adapts, weight and bias together."""
    return hasattr(module, "feature_input") and WEIGHT in names and BIAS in names


class AdamSteps:
    """The Adam stage for P people (see the module docstring).

    start: the weights after step 0 (a leading person dimension when per_sample), tensors
    the stage may update in place (`fit_group` passes step 0's new ones). When the head's
    feature layer is among them (and per_sample or P == 1), it adapts as its output u.
    `params` are the current weights (`FEATURE_TERM` in place of that layer)."""

    def __init__(
        self,
        module: nn.Module,
        start: Params,
        batch: StepBatch,
        body: BodyModelLike,
        config: TTOConfig,
        *,
        per_sample: bool,
        compiled: bool,
    ) -> None:
        self.module, self.batch, self.body = module, batch, body
        self.weights: LossWeights = config.loss_weights
        self.config, self.per_sample, self.compiled = config, per_sample, compiled
        params = {n: p.detach() for n, p in start.items()}
        self.z: tuple[Tensor, Tensor] | None = None
        if feature_layer_adapts(module, params) and (per_sample or batch.keypoints.shape[0] == 1):
            params, self.z = _take_feature_layer(module, params, batch, per_sample)
            if compiled:  # its width (the nonzero inputs) differs from person to person
                for t in self.z:
                    torch._dynamo.maybe_mark_dynamic(t, 1)
        self.params = params
        self.t = 0
        # Eager, the dense weights step with torch.optim.Adam's fused kernel (one kernel a
        # tensor; `adam_update` as separate tensor operations would cost several times more);
        # the feature term keeps its own moments either way.
        self.one_graph = compiled and not per_sample
        self.optimizer: torch.optim.Adam | None = None
        if not self.one_graph:
            dense = [p.requires_grad_(True) for n, p in params.items() if n != FEATURE_TERM]
            self.optimizer = _torch_adam(dense, config) if dense else None
        own = [n for n in params if self.optimizer is None or n == FEATURE_TERM]
        self.m = {n: torch.zeros_like(params[n]) for n in own}
        self.v = {n: torch.zeros_like(params[n]) for n in own}
        self.grad_buffers: Params = {}  # eager per-person weight gradients, reused each step

    def step(self) -> StepLoss:
        """One Adam step; returns the loss (and prediction) at the weights before it."""
        self.t += 1
        beta1, beta2 = self.config.adam_betas
        hyper = AdamHyper(
            torch.tensor(self.config.adam_lr / (1 - beta1**self.t)),
            torch.tensor(1 - beta2**self.t),
            beta1, beta2, self.config.adam_eps,
        )  # fmt: skip
        if self.one_graph:
            # No gradient leaves the graph (it takes its own, inside): an inference graph,
            # whose in-place updates inductor writes in its loops.
            with torch.no_grad():
                flat = run_compiled(
                    _compiled_step, self.module, self.params, self.m, self.v, hyper, self.z,
                    self.batch, self.body, self.weights,
                )  # fmt: skip
            if flat is not None:
                return unflat_step(flat)
        leaves = {n: p.requires_grad_(True) for n, p in self.params.items()}
        # autograd.grad (inside loss_and_grad), not backward(): only the adapted copies get
        # gradients (backward would also fill .grad of the regressor's own parameters).
        grads, current = loss_and_grad(
            self.module, leaves, self.batch, self.body, objective="2d", weights=self.weights,
            per_sample=self.per_sample, compiled=self.compiled, grad_buffers=self.grad_buffers,
        )  # fmt: skip
        with torch.no_grad():
            for (n, p), g in zip(leaves.items(), grads, strict=True):
                # The feature term, or every weight after a compile failure; compiled, one
                # fused loop (eager, the row sums are several passes over (P, hidden, K)).
                if n == FEATURE_TERM or self.optimizer is None:
                    z = self.z if n == FEATURE_TERM else None
                    args = (p.detach(), g, self.m[n], self.v[n], hyper, z)
                    out = run_compiled(adam_update, *args) if self.compiled else None
                    if out is None:
                        out = adam_update(*args)
                    self.params[n], self.m[n], self.v[n] = out
                else:
                    # contiguous(): vmap returns transposed weight gradients, and fused Adam
                    # on CPU (torch 2.13) reads a gradient as if it had its parameter's strides.
                    p.grad = g.contiguous()
            if self.optimizer is not None:
                self.optimizer.step()
        return current


def _torch_adam(params: list[Tensor], config: TTOConfig) -> torch.optim.Adam:
    """torch.optim.Adam over the dense weights, its fused kernel where the device has one.
    Adam is elementwise, so stacked per-person weights get exactly the per-person update."""
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        params,
        lr=config.adam_lr,
        betas=config.adam_betas,
        eps=config.adam_eps,
        fused=fused or None,
    )


def _take_feature_layer(
    module: nn.Module, params: Params, batch: StepBatch, per_sample: bool
) -> tuple[Params, tuple[Tensor, Tensor]]:
    """params with the feature layer's weight and bias replaced by its output u (P, hidden),
    and (z^2, |z|) of its input with a trailing 1."""
    z = module.feature_input(batch.args[0], batch.args[1]).detach()  # type: ignore[operator]
    rest = dict(params)
    weight, bias = rest.pop(WEIGHT), rest.pop(BIAS)
    with torch.no_grad():
        u = torch.einsum("phk,pk->ph", weight, z) if per_sample else z @ weight.T
        rest[FEATURE_TERM] = u + bias
    z1 = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
    # A zero input adds exactly 0 to every row sum: keep the columns someone needs (most of
    # a ReLU encoder's outputs are 0: 92% for the shipped model's example person).
    z1 = z1[:, (z1 != 0).any(dim=0)]
    return rest, ((z1 * z1).contiguous(), z1.abs().contiguous())


def _compiled_step(
    module: nn.Module,
    params: Params,
    m: Params,
    v: Params,
    hyper: AdamHyper,
    z: tuple[Tensor, Tensor] | None,
    batch: StepBatch,
    body: BodyModelLike,
    weights: LossWeights,
) -> FlatStep:
    """`AdamSteps.step` for one person as one graph: loss, gradient, update; the weights
    and moments are written back in place.

    Inductor stores the update straight into the input tensors, in the loop that computes
    it: one pass over each weight, its moments read and written where they are. New tensors
    instead would double the memory a step touches (the old and the new weights, and their
    moments, are both live during the update; 24 MB for a paper-sized head's fc2). One
    compiled fit of a paper-sized resnet18 head took 0.82x the time in place (medians of 30
    alternating rounds of two processes here, in place faster in 29; 0.83x in another run;
    once, with the shared machine heavily loaded, 1.13x).
    """
    grads, flat = grad_and_flat(module, params, batch, body, weights, "2d")
    for n, p in params.items():
        new_p, new_m, new_v = adam_update(
            p, grads[n], m[n], v[n], hyper, z if n == FEATURE_TERM else None
        )
        p.copy_(new_p)
        m[n].copy_(new_m)
        v[n].copy_(new_v)
    return flat
