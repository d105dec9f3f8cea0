"""Specification of model/linear_tape.py: a head's linear-layer weight gradients as one product
per layer, equal to autograd's."""

from __future__ import annotations

import pytest
import torch

from model.body import load_body_model
from model.config import LossWeights
from model.linear_tape import LinearTape, active_tape
from model.outputs import CropInfo
from model.regressor import RegressorHead
from model.tto_step import StepBatch, loss_and_grad, step_loss

torch.set_num_threads(1)


@pytest.fixture
def head() -> RegressorHead:
    torch.manual_seed(0)
    head = RegressorHead(feature_dim=12, hidden=16, n_iter=3, dropout=0.0).eval()
    with torch.no_grad():  # decoder weights big enough that every layer's gradient matters
        head.dec.weight.mul_(50.0)
    return head


def _inputs(rows: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(rows, 12, generator=gen)
    bbox = torch.randn(rows, 3, generator=gen)
    target = torch.randn(rows, 157, generator=gen)
    return features, bbox, target


def _loss(head: RegressorHead, params: dict[str, torch.Tensor], rows: int = 2) -> torch.Tensor:
    features, bbox, target = _inputs(rows)
    pose, betas, cam = _raw(head, params, features, bbox)
    return ((torch.cat([pose, betas, cam], 1) - target) ** 2).sum()


def _raw(head: RegressorHead, params: dict[str, torch.Tensor], features, bbox):
    class Raw(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, f, b):
            return self.head.forward_raw(f, b)

    named = {f"head.{n}": p for n, p in params.items()}
    return torch.func.functional_call(Raw(), named, (features, bbox))


def _leaves(head: RegressorHead, names: list[str]) -> dict[str, torch.Tensor]:
    own = dict(head.named_parameters())
    return {n: own[n].detach().clone().requires_grad_(True) for n in names}


def _autograd(head: RegressorHead, names: list[str], rows: int = 2) -> dict[str, torch.Tensor]:
    params = _leaves(head, names)
    grads = torch.autograd.grad(_loss(head, params, rows), list(params.values()))
    return dict(zip(names, grads, strict=True))


def _taped(
    head: RegressorHead, names: list[str], rows: int = 2, buffers: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], LinearTape]:
    params = _leaves(head, names)
    tape = LinearTape(params, buffers)
    with tape.recording():
        assert active_tape() is tape
        loss = _loss(head, params, rows)
    assert active_tape() is None
    rest = [n for n in names if n not in tape.covered]
    found = torch.autograd.grad(loss, [*tape.outputs, *(params[n] for n in rest)])
    grads = dict(zip(rest, found[len(tape.outputs) :], strict=True))
    grads.update(tape.gradients(found[: len(tape.outputs)]))
    return grads, tape


def test_every_layers_gradient_equals_autograds(head: RegressorHead) -> None:
    names = [n for n, _ in head.named_parameters()]
    want = _autograd(head, names)
    got, tape = _taped(head, names)
    assert set(got) == set(names)
    for n in names:
        assert got[n].shape == want[n].shape and got[n].is_contiguous(), n
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-6), n
        assert want[n].abs().max() > 1e-4, n  # a gradient that says something
    # fc1's feature half once, the other layers once per refinement iteration
    layers = ("fc1_feat.weight", "fc1_state.weight", "fc2.weight", "dec.weight")
    counts = {w: sum(1 for name, _, _ in tape.calls if name == w) for w in layers}
    assert counts == {"fc1_feat.weight": 1, "fc1_state.weight": 3, "fc2.weight": 3, "dec.weight": 3}
    assert "fc1_state.bias" not in tape.covered  # that layer has no bias


def test_one_persons_gradients_equal_autograds_in_the_callers_buffers(head: RegressorHead) -> None:
    # One row a call: each layer's gradient is the sum of its rank-one terms, formed in place
    # in the buffer the caller keeps (reused, not reallocated, on the next step).
    names = [n for n, _ in head.named_parameters()]
    want = _autograd(head, names, rows=1)
    buffers: dict[str, torch.Tensor] = {}
    got, _ = _taped(head, names, rows=1, buffers=buffers)
    assert set(buffers) == {"fc1_feat.weight", "fc1_state.weight", "fc2.weight", "dec.weight"}
    for n in names:
        assert got[n].shape == want[n].shape and got[n].is_contiguous(), n
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-6), n
        assert want[n].abs().max() > 1e-4, n
    assert got["fc2.weight"] is buffers["fc2.weight"]
    kept = buffers["fc2.weight"].data_ptr()
    again, _ = _taped(head, names, rows=1, buffers=buffers)
    assert again["fc2.weight"].data_ptr() == kept
    assert torch.allclose(again["fc2.weight"], want["fc2.weight"], rtol=1e-5, atol=1e-6)


def test_only_the_adapted_layers_are_recorded(head: RegressorHead) -> None:
    names = ["dec.weight", "dec.bias", "fc2.bias"]  # fc2's bias without its weight
    want = _autograd(head, names)
    got, tape = _taped(head, names)
    assert {name for name, _, _ in tape.calls} == {"dec.weight"}
    assert tape.covered == {"dec.weight", "dec.bias"}  # fc2.bias comes from autograd
    for n in names:
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-6), n


def test_a_layer_the_forward_never_applies_is_left_to_autograd(head: RegressorHead) -> None:
    params = _leaves(head, ["fc1_feat.weight", "fc1_feat.bias", "dec.weight"])
    tape = LinearTape(params)
    features, bbox, _ = _inputs()
    assert tape.can_cover(params)
    with tape.recording():  # the feature term given: fc1_feat is not applied
        out = torch.func.functional_call(head, params, (features, bbox, torch.zeros(2, 16)))
    assert tape.covered == {"dec.weight"}
    grads = tape.gradients(torch.autograd.grad(out.params.rotmats().sum(), tape.outputs))
    assert set(grads) == {"dec.weight"} and grads["dec.weight"].abs().max() > 0


class _Encoded(torch.nn.Module):
    """A plain nn.Linear (not through `model.regressor.linear`) before a head, as a
    BlazePose model's encoder is in the "full" scope."""

    def __init__(self, head: RegressorHead) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(12, 12)
        self.head = head

    def forward(self, features: torch.Tensor, bbox: torch.Tensor):
        return self.head(torch.relu(self.enc(features)), bbox)


def test_loss_and_grad_leaves_layers_outside_the_head_to_autograd(head: RegressorHead) -> None:
    body = load_body_model()
    torch.manual_seed(6)
    module = _Encoded(head).eval()
    gen = torch.Generator().manual_seed(7)
    crop = CropInfo.from_boxes(
        torch.tensor([[320.0, 240.0]]), torch.tensor([300.0]), torch.tensor([[480.0, 640.0]])
    )
    xy = 300 + 40 * torch.randn(1, 17, 2, generator=gen)
    batch = StepBatch(
        (torch.randn(1, 12, generator=gen), crop.bbox_info()),
        torch.cat([xy, torch.ones(1, 17, 1)], -1), crop,
    )  # fmt: skip
    own = dict(module.named_parameters())
    names = list(own)
    leaves = {n: own[n].detach().clone().requires_grad_(True) for n in names}
    grads, _ = loss_and_grad(module, leaves, batch, body, objective="2d", weights=LossWeights())
    plain = {n: own[n].detach().clone().requires_grad_(True) for n in names}
    loss = step_loss(module, plain, batch, body, objective="2d", weights=LossWeights()).loss
    want = dict(zip(names, torch.autograd.grad(loss, list(plain.values())), strict=True))
    got = dict(zip(names, grads, strict=True))
    assert want["enc.weight"].abs().max() > 0
    for n in names:
        assert torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-7), n


def test_loss_and_grad_eager_equals_autograd_through_the_body() -> None:
    body = load_body_model()
    torch.manual_seed(3)
    head = RegressorHead(feature_dim=12, hidden=32, n_iter=3, dropout=0.0).eval()
    gen = torch.Generator().manual_seed(4)
    crop = CropInfo.from_boxes(
        torch.tensor([[320.0, 240.0]]), torch.tensor([300.0]), torch.tensor([[480.0, 640.0]])
    )
    features = torch.randn(1, 12, generator=gen)
    xy = 300 + 40 * torch.randn(1, 17, 2, generator=gen)
    keypoints = torch.cat([xy, torch.ones(1, 17, 1)], -1)
    batch = StepBatch((features, crop.bbox_info()), keypoints, crop)
    weights = LossWeights()
    names = [n for n, _ in head.named_parameters()]
    params = _leaves(head, names)
    grads, result = loss_and_grad(head, params, batch, body, objective="2d", weights=weights)
    plain = _leaves(head, names)
    loss = step_loss(head, plain, batch, body, objective="2d", weights=weights).loss
    want = torch.autograd.grad(loss, list(plain.values()))
    assert float(result.loss) == pytest.approx(float(loss.detach()), rel=1e-6)
    for n, g, w in zip(names, grads, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7), (n, (g - w).abs().max())


def test_per_person_copies_get_each_persons_own_gradient(head: RegressorHead) -> None:
    """Weights with a leading person dimension: person p's rows run with copy p, and each
    copy's gradient is that person's alone (as autograd gives it person by person)."""
    features, bbox, target = _inputs()  # 2 people
    names = ["fc1_state.weight", "fc2.weight", "fc2.bias", "dec.weight", "dec.bias"]
    own = dict(head.named_parameters())
    gen = torch.Generator().manual_seed(5)
    copies = {n: own[n].detach() + 0.01 * torch.randn(2, *own[n].shape, generator=gen) for n in names}

    def person_loss(p: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
        pose, betas, cam = _raw(head, params, features[p : p + 1], bbox[p : p + 1])
        return ((torch.cat([pose, betas, cam], 1) - target[p : p + 1]) ** 2).sum()

    want = []
    for p in range(2):
        leaves = {n: copies[n][p].clone().requires_grad_(True) for n in names}
        want.append(torch.autograd.grad(person_loss(p, leaves), list(leaves.values())))
    stacked = {n: t.clone().requires_grad_(True) for n, t in copies.items()}
    buffers: dict[str, torch.Tensor] = {}
    for _ in range(2):  # the second call writes into the first call's buffers
        tape = LinearTape(stacked, buffers)
        with tape.recording():
            pose, betas, cam = _raw(head, stacked, features, bbox)
        loss = ((torch.cat([pose, betas, cam], 1) - target) ** 2).sum()
        got = tape.gradients(torch.autograd.grad(loss, tape.outputs))
    assert got["fc2.weight"] is buffers["fc2.weight"] and got["fc2.weight"].shape == (2, 16, 16)
    for i, n in enumerate(names):
        for p in range(2):
            assert torch.allclose(got[n][p], want[p][i], rtol=1e-5, atol=1e-6), (n, p)
