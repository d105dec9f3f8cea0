"""The weight gradients of a head's linear layers as one product per layer (eager TTO steps).

A TTO step applies each of the head's layers once per refinement iteration (three times).
Through autograd, every application's weight gradient is an outer product written out in
full (1024 x 1024 floats, 4 MB, for a paper-sized fc2) and the three are then added: on a
CPU, where a one-person step is bound by memory traffic, that is most of an eager step.

While a `LinearTape` records, `model.regressor.linear` applies a layer whose weight the tape
knows with its weights detached and keeps the layer's input x and output y. Autograd then
differentiates the loss with respect to the outputs only, and the tape forms each layer's
gradients from its own maths, y = x W^T + b:

    dL/dW = sum_i g_i^T x_i = G^T X  (one product),    dL/db = sum_i g_i,

with g_i = dL/dy_i: the gradient autograd gives, summed in another order. Everything else
(the body model, the loss, the path from one layer to the next) is autograd's as before.

Per-person copies (P, out, in) (several people fitted in one pass) run as each person's row
against their own transposed copy, and their gradients sum_i g_i x_i^T as broadcast
products accumulated into a buffer the caller keeps between steps: no vmap, no per-person
weight gradient written out per application. `model.tto_step.predict` takes this path for
per-person copies whenever the tape covers all of them. One person's shared weights (one row
a call) get the same: three rank-one terms accumulated in place, where a matrix product of
inner size 3 is slow. Against G^T X, an eager fit took 0.96x the time for a paper-sized
resnet50 head, 0.98x for resnet18 and 0.94x for the shipped model's (medians of 10
alternating rounds of two warm processes here; faster in 8, 6 and 6 of them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVE: ContextVar[LinearTape | None] = ContextVar("linear_tape", default=None)


@dataclass
class LinearTape:
    """Records the applications of the layers whose weights are among `params` (by name:
    ``<layer>.weight``, with ``<layer>.bias`` when it adapts too)."""

    params: dict[str, Tensor]
    # Per-person weight gradients are written into these (by weight name) when given, kept
    # by the caller from one step to the next: a fresh (P, out, in) tensor every step costs
    # about four times the products themselves here (new pages for tens of MB).
    buffers: dict[str, Tensor] | None = None
    # id of an adapted weight -> (its name, the name of its adapted bias or None)
    layers: dict[int, tuple[str, str | None]] = field(init=False)
    _known: set[str] = field(init=False)  # every weight and bias name in `layers`
    calls: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)  # (weight name, x, y)

    def __post_init__(self) -> None:
        self.layers = {}
        for name, p in self.params.items():
            if name.endswith(".weight") and p.dim() in (2, 3):
                bias = name[: -len("weight")] + "bias"
                self.layers[id(p)] = (name, bias if bias in self.params else None)
        self._known = {n for w, b in self.layers.values() for n in (w, b) if n}

    @property
    def covered(self) -> set[str]:
        """After the forward: the parameter names whose gradient `gradients` forms, those of
        the layers it recorded (the others, a weight used some other way included, need
        autograd's)."""
        recorded = {name for name, _, _ in self.calls}
        return {n for w, b in self.layers.values() if w in recorded for n in (w, b) if n}

    def can_cover(self, names: Iterable[str]) -> bool:
        """Before the forward: whether each of `names` is a weight the tape would record (or
        its bias), should its layer run through `model.regressor.linear`."""
        return set(names) <= self._known

    @contextlib.contextmanager
    def recording(self) -> Iterator[LinearTape]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def apply(self, layer: nn.Linear, x: Tensor) -> Tensor | None:
        """``layer(x)`` recorded, or None when the layer's weight is not one of the tape's.
        A weight with a leading person dimension (P, out, in) maps person p's row of x (P, in)
        with its own copy (its bias (P, out) too)."""
        known = self.layers.get(id(layer.weight))
        if known is None or x.dim() != 2:
            return None
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        if weight.dim() == 3:  # each row against its transposed copy: (P, 1, in) @ (P, in, out)
            y = torch.bmm(x.unsqueeze(1), weight.transpose(1, 2)).squeeze(1)
            y = y if bias is None else y + bias
        else:
            y = F.linear(x, weight, bias)
        if not y.requires_grad:  # x is a constant (the first iteration's start state)
            y.requires_grad_(True)
        self.calls.append((known[0], x.detach(), y))
        return y

    @property
    def outputs(self) -> list[Tensor]:
        """Every recorded output y, in the order of the calls (what to differentiate for)."""
        return [y for _, _, y in self.calls]

    def gradients(self, output_grads: Sequence[Tensor | None]) -> dict[str, Tensor]:
        """Each recorded layer's weight (and bias) gradient from dL/dy of every call (None:
        the loss does not reach that output): the names of `covered`."""
        rows: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for (name, x, y), g in zip(self.calls, output_grads, strict=True):
            xs, gs = rows.setdefault(name, ([], []))
            xs.append(x)
            gs.append(torch.zeros_like(y) if g is None else g)
        grads: dict[str, Tensor] = {}
        for weight, bias in self.layers.values():
            if weight not in rows:  # not applied through `linear`: autograd's (`covered`)
                continue
            xs, gs = rows[weight]
            per_person = self.params[weight].dim() == 3
            if per_person or all(x.shape[0] == 1 for x in xs):
                # sum_i g_i x_i^T as broadcast products: per person (P, out, in), or one
                # person's rank-one terms (out, in), which a matrix product of inner size 3
                # serves slowly (MKL, a paper-sized fc2: 116 us against 276-362 here).
                grad = self._buffer(weight)
                acc = grad if per_person else grad.unsqueeze(0)
                torch.mul(gs[0].unsqueeze(2), xs[0].unsqueeze(1), out=acc)
                for g_i, x_i in zip(gs[1:], xs[1:], strict=True):
                    acc.addcmul_(g_i.unsqueeze(2), x_i.unsqueeze(1))
                grads[weight] = grad
                if bias is not None:
                    grads[bias] = torch.stack(gs).sum(0).view_as(self.params[bias])
                continue
            g = torch.cat(gs) if len(gs) > 1 else gs[0]
            x = torch.cat(xs) if len(xs) > 1 else xs[0]
            grads[weight] = g.T @ x
            if bias is not None:
                grads[bias] = g.sum(0)
        return grads

    def _buffer(self, weight: str) -> Tensor:
        like = self.params[weight]
        if self.buffers is None:
            return torch.empty_like(like)
        buf = self.buffers.get(weight)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self.buffers[weight] = torch.empty_like(like)
        return buf


def active_tape() -> LinearTape | None:
    """The tape recording now, if any (`model.regressor.linear` asks)."""
    return _ACTIVE.get()
