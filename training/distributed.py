"""Data-parallel training over `torch.distributed` (launched by ``torchrun``).

One process per device; `init_distributed` reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK) and joins the process group (NCCL on CUDA, gloo on CPU). Without torchrun it
returns a single-process context and nothing is initialised.

Gradients are averaged with `all_reduce_gradients` (one flattened all-reduce per dtype)
rather than by wrapping the networks in DistributedDataParallel: meta-training runs the
networks through `torch.func.functional_call` with adapted weights, which bypasses DDP's
forward hooks, and one mechanism for every stage keeps the stages identical.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA (this process's local GPU) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no GPU; use --device cpu")
        return torch.device("cuda", local_rank)
    if name not in ("cpu",) and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group when WORLD_SIZE > 1; else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined the %s process group on %s", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call it from a ``finally``).

    On a normal exit the ranks meet at a barrier first, so no rank tears its gloo pairs down
    while another (rank 0 writing the final checkpoint) is still connected: a rank that did
    so could abort with "terminate called without an active exception". While an exception
    propagates there is no barrier, since the failed peer may never reach it.
    """
    if ctx.distributed and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Give every rank rank 0's weights and buffers (a resumed or seeded start agrees)."""
    if not ctx.distributed:
        return
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def all_reduce_gradients(params: Iterable[Tensor], ctx: DistContext) -> None:
    """Average .grad across ranks, in place (a missing gradient counts as zero)."""
    if not ctx.distributed:
        return
    params = list(params)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= ctx.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def average_buffers(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks, in place.

    Each rank's BatchNorm sees only its own batch; averaging after every update keeps the
    ranks' statistics identical (DDP instead copies rank 0's; the mean uses every rank's data).
    """
    if not ctx.distributed:
        return
    bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for b in bufs:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def mean_across_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average logged scalars over ranks (every rank must call it)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if ctx.device.type == "cuda":
        t = t.to(ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}
