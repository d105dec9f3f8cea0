"""The Adam stage's update (`model.tto_adam`): torch.optim.Adam's maths, and fc1's feature
half adapted as its output equal to Adam on the full matrix."""

from __future__ import annotations

import torch

from model.config import TTOConfig
from model.tto_adam import AdamHyper, adam_update


def _hyper(config: TTOConfig, t: int) -> AdamHyper:
    b1, b2 = config.adam_betas
    return AdamHyper(
        torch.tensor(config.adam_lr / (1 - b1**t)), torch.tensor(1 - b2**t), b1, b2,
        config.adam_eps,
    )  # fmt: skip


def test_adam_update_equals_torch_adam() -> None:
    torch.manual_seed(0)
    config = TTOConfig(adam_lr=3e-3)
    mine = torch.randn(7, 5)
    ref = mine.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref], lr=config.adam_lr, betas=config.adam_betas, eps=config.adam_eps)
    m, v = torch.zeros_like(mine), torch.zeros_like(mine)
    for t in range(1, 6):
        g = torch.randn(7, 5) * 10.0 ** (t - 3)  # gradients of varying scale
        mine, m, v = adam_update(mine, g, m, v, _hyper(config, t))
        ref.grad = g
        adam.step()
    assert (mine - ref.detach()).abs().max() <= 1e-6
    assert (mine - ref.detach()).abs().max() < (ref.detach() - torch.randn(7, 5)).abs().max()


def test_the_feature_term_steps_as_adam_on_the_full_layer() -> None:
    """u = W z + b under Adam on (W, b) with gradients g z^T, g: adam_update on u with the
    rank-one moments gives the same u, with zeros and tiny values in z."""
    torch.manual_seed(1)
    config = TTOConfig(adam_lr=1e-2)
    hidden, k = 300, 9  # more rows than one eager block
    z = torch.randn(1, k)
    z[0, 2], z[0, 5] = 0.0, 1e-9
    layer = torch.nn.Linear(k, hidden)
    adam = torch.optim.Adam(
        layer.parameters(), lr=config.adam_lr, betas=config.adam_betas, eps=config.adam_eps
    )
    with torch.no_grad():
        u = layer(z)
    z1 = torch.cat([z, torch.ones(1, 1)], dim=1)
    factors = (z1 * z1, z1.abs())
    m, v = torch.zeros_like(u), torch.zeros_like(u)
    for t in range(1, 8):
        g = torch.randn(1, hidden)
        g[0, 3] = 0.0  # a row with no gradient does not move
        u, m, v = adam_update(u, g, m, v, _hyper(config, t), factors)
        layer.weight.grad, layer.bias.grad = g.T @ z, g[0].clone()
        adam.step()
    with torch.no_grad():
        full = layer(z)
    assert (u - full).abs().max() <= 1e-5
    assert (u - full).abs().max() * 100 < (full - layer.bias).abs().max()
