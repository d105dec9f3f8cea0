"""Specification of model/tto.py: the staged fit, scopes, batching, early stop, bad input,
and the functional inner step that meta-training shares.

The networks here are randomly initialised, so "the TTO helps" is checked on a synthetic
target: the body model posed with known parameters, its keypoints projected through a
known camera plus noise. The test schedule uses larger learning rates than the reference
settings (1e-5) so that a few steps from random weights move the fit visibly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.body import load_body_model
from model.config import BackboneConfig, LossWeights, RegressorConfig, TTOConfig, TTORuntime
from model.geometry import axis_angle_to_rotmat
from model.losses import project_points, reprojected_keypoint_loss, reprojection_error_px
from model.outputs import CropInfo, RegressorOutput, SMPLParams
from model.regressor import build_regressor
from model.tto import SKIP_NO_KEYPOINTS, TTOInputs, adapted_parameter_names, fit
from model.tto_step import StepBatch, inner_step, step_loss

torch.set_num_threads(1)

TINY = RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64)
FAST = TTOConfig(sgd_lr=1e-4, adam_lr=3e-3, steps=10, early_stop=0.0)


@pytest.fixture(scope="module")
def body() -> object:
    return load_body_model()


@pytest.fixture(scope="module")
def nets() -> tuple[object, object]:
    return build_regressor(TINY, seed=0).eval(), build_regressor(TINY, seed=1).eval()


def synthetic_people(body: object, batch: int, seed: int = 0, noise_px: float = 2.0):
    """Known SMPL parameters and camera -> COCO-17 keypoints (+ noise) in a 640x480 image."""
    gen = torch.Generator().manual_seed(seed)
    aa = 0.25 * torch.randn(batch, 24, 3, generator=gen)
    aa[:, 0] += torch.tensor([torch.pi, 0.0, 0.0])
    rot = axis_angle_to_rotmat(aa)
    params = SMPLParams(rot[:, :1], rot[:, 1:], 0.5 * torch.randn(batch, 10, generator=gen))
    cam = torch.tensor([[0.8, 0.05, 0.1]]) + 0.05 * torch.randn(batch, 3, generator=gen)
    center = torch.tensor([[320.0, 240.0]]) + 20 * torch.randn(batch, 2, generator=gen)
    crop = CropInfo.from_boxes(
        center, torch.full((batch,), 300.0), torch.tensor([[480.0, 640.0]]).repeat(batch, 1)
    )
    with torch.no_grad():
        kp3d = body.keypoints_only(params).coco17
        px = project_points(kp3d, RegressorOutput(params, cam).translation(crop), crop)
    px = px + noise_px * torch.randn(px.shape, generator=gen)
    keypoints = torch.cat([px, torch.ones(batch, 17, 1)], -1)
    images = torch.randn(batch, 3, 256, 192, generator=gen)
    return TTOInputs(keypoints, crop, images=images), keypoints


def reprojection(body: object, pred: RegressorOutput, inputs: TTOInputs) -> torch.Tensor:
    kp3d = body.keypoints_only(pred.params).coco17
    px = project_points(kp3d, pred.translation(inputs.crop), inputs.crop)
    return reprojection_error_px(px, inputs.keypoints)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_tto_lowers_the_reprojection_error(body, nets, scope: str) -> None:
    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 2)
    with torch.no_grad():
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    result = fit(f_w, inputs, body, replace(FAST, scope=scope), aux)
    before = reprojection(body, result.initial, inputs)
    after = reprojection(body, result.final, inputs)
    assert result.scope == scope and result.steps_run == (11, 11)
    assert (after < 0.7 * before).all(), (before, after)
    for history, final in zip(result.loss_history, result.final_loss, strict=True):
        assert final < history[0]


@pytest.mark.parametrize("subset", ["all", "output"])
def test_batched_head_fit_equals_the_per_person_loop(body, nets, subset: str) -> None:
    f_w, f_u = nets
    inputs, keypoints = synthetic_people(body, 4, seed=1)
    keypoints[2, :, 2] = 0.0  # skipped
    keypoints[3, 5:, 2] = 0.3
    inputs = replace(inputs, keypoints=keypoints)
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    head_inputs = replace(inputs, images=None, features=features)
    config = replace(FAST, head_subset=subset, early_stop=1e-4)
    batched = fit(f_w, head_inputs, body, config, aux, runtime=TTORuntime(batched=True))
    looped = fit(f_w, head_inputs, body, config, aux, runtime=TTORuntime(batched=False))
    for a, b in [
        (batched.final.params.rotmats(), looped.final.params.rotmats()),
        (batched.final.params.betas, looped.final.params.betas),
        (batched.final.crop_cam, looped.final.crop_cam),
    ]:
        assert (a - b).abs().max() <= 1e-5
    assert batched.steps_run == looped.steps_run
    assert batched.skipped == looped.skipped == (None, None, SKIP_NO_KEYPOINTS, None)
    for ha, hb in zip(batched.loss_history, looped.loss_history, strict=True):
        assert ha == pytest.approx(hb, rel=1e-4, abs=1e-9)
    assert (batched.final.crop_cam - batched.initial.crop_cam).abs().max() > 1e-3  # it moved


def test_by_default_the_faster_of_batched_and_looped_runs(body, nets) -> None:
    """runtime.batched=None: one pass when only the output layers adapt or the steps run
    eagerly, one person at a time when compiled steps adapt every head weight (the faster
    of the two for each); the answers are the same either way."""
    from model.tto import default_batched

    compiled = TTORuntime(compile=True)
    assert default_batched(TTOConfig(head_subset="output"), compiled)
    assert not default_batched(TTOConfig(head_subset="all"), compiled)
    assert default_batched(TTOConfig(head_subset="all"), TTORuntime())  # eager
    assert default_batched(TTOConfig(head_subset="all"))
    f_w, _ = nets
    inputs, _ = synthetic_people(body, 2, seed=5)
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
    head_inputs = replace(inputs, images=None, features=features)
    for subset, batched in (("all", True), ("output", True)):  # eager: one pass for both
        config = replace(FAST, head_subset=subset, steps=3)
        auto = fit(f_w, head_inputs, body, config)
        forced = fit(f_w, head_inputs, body, config, runtime=TTORuntime(batched=batched))
        assert torch.equal(auto.final.crop_cam, forced.final.crop_cam), subset
        other = fit(f_w, head_inputs, body, config, runtime=TTORuntime(batched=not batched))
        assert (auto.final.crop_cam - other.final.crop_cam).abs().max() <= 1e-5


def reference_fit(
    f_w: object, body: object, features, crop, keypoints, aux, config: TTOConfig
) -> RegressorOutput:
    """The method written out plainly for one person, as the reference code would: a deep
    copy of the head, step 0 as one SGD step on L_test-u (2D only without f_u), then
    `torch.optim.Adam` (its plain per-tensor path) on the 2D loss for config.steps steps."""
    import copy

    from model.losses import loss_test_u

    head = copy.deepcopy(f_w.head)
    bbox = crop.bbox_info()

    def loss(objective: str) -> torch.Tensor:
        pred = head(features, bbox)
        if objective == "2d":
            return reprojected_keypoint_loss(
                pred, body.keypoints_only(pred.params), keypoints, crop, "coco17"
            )
        aux_body = body(aux.params)
        return loss_test_u(
            pred, body(pred.params), keypoints, crop, config.loss_weights, aux, aux_body,
            "coco17",
        ).total  # fmt: skip

    weights = list(head.parameters())
    grads = torch.autograd.grad(loss("test_u" if aux is not None else "2d"), weights)
    with torch.no_grad():
        for w, g in zip(weights, grads, strict=True):
            w -= config.sgd_lr * g
    adam = torch.optim.Adam(
        weights, lr=config.adam_lr, betas=config.adam_betas, eps=config.adam_eps,
        foreach=False, fused=False,
    )  # fmt: skip
    for _ in range(config.steps):
        adam.zero_grad()
        loss("2d").backward()
        adam.step()
    with torch.no_grad():
        return head(features, bbox)


@pytest.mark.parametrize("use_aux", [True, False])
def test_the_staged_fit_equals_the_method_written_out(body, nets, use_aux: bool) -> None:
    """`fit` (step 0, Adam steps, early stop, with copies per person and the precomputed
    feature term) gives what the plain reference loop gives, person by person."""
    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 2, seed=7)
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
        aux = f_u(inputs.images, inputs.crop.bbox_info()) if use_aux else None
    head_inputs = replace(inputs, images=None, features=features)
    config = replace(FAST, steps=6)
    for batched in (False, True):
        ours = fit(f_w, head_inputs, body, config, aux, runtime=TTORuntime(batched=batched))
        for i in range(2):
            one = torch.tensor([i])
            ref = reference_fit(
                f_w, body, features[one], inputs.crop.select(one), inputs.keypoints[one],
                None if aux is None else aux.select(one), config,
            )  # fmt: skip
            mine = ours.final.select(one)
            assert (mine.params.rotmats() - ref.params.rotmats()).abs().max() <= 1e-5
            assert (mine.params.betas - ref.params.betas).abs().max() <= 1e-5
            assert (mine.crop_cam - ref.crop_cam).abs().max() <= 1e-5
    assert (ours.final.crop_cam - ours.initial.crop_cam).abs().max() > 1e-3  # it moved


def test_early_stop_fires_and_keeps_the_last_step(body, nets) -> None:
    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 2, seed=2)
    stopped = fit(f_w, inputs, body, replace(FAST, early_stop=10.0))
    assert stopped.steps_run == (2, 2) and stopped.stopped_early == (True, True)
    assert all(len(h) == 2 for h in stopped.loss_history)
    two = fit(f_w, inputs, body, replace(FAST, steps=1, early_stop=0.0))
    assert torch.allclose(stopped.final.crop_cam, two.final.crop_cam, atol=1e-6)
    full = fit(f_w, inputs, body, FAST)
    assert full.steps_run == (11, 11) and full.stopped_early == (False, False)


def test_result_records_losses_of_the_initial_and_final_prediction(body, nets) -> None:
    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 1, seed=3)
    with torch.no_grad():
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    calls: list[tuple[int, int]] = []
    result = fit(f_w, inputs, body, FAST, aux, on_step=lambda s, t: calls.append((s, t)))
    assert calls == [(s, 11) for s in range(1, 12)]

    def loss_2d(pred: RegressorOutput) -> float:
        body_out = body.keypoints_only(pred.params)
        return float(reprojected_keypoint_loss(pred, body_out, inputs.keypoints, inputs.crop))

    assert result.loss_history[0][0] == pytest.approx(loss_2d(result.initial), rel=1e-4)
    assert result.final_loss[0] == pytest.approx(loss_2d(result.final), rel=1e-4)
    assert result.loss_start(0) == result.loss_history[0][0]
    # Step 0's L_test-u weighs the 2D term by 5 and adds agreement with f_u.
    assert result.test_u_loss[0] > 5 * result.loss_history[0][0]
    assert len(result.loss_history[0]) == result.steps_run[0] == 11


def test_tto_leaves_the_network_and_its_mode_alone(body, nets) -> None:
    f_w, _ = nets
    before = {k: v.clone() for k, v in f_w.state_dict().items()}
    f_w.train()
    inputs, _ = synthetic_people(body, 1, seed=4)
    try:
        fit(f_w, inputs, body, replace(FAST, scope="full", steps=2))
        assert f_w.training
    finally:
        f_w.eval()
    after = f_w.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in f_w.parameters())


def test_all_zero_confidences_skip_the_tto(body, nets) -> None:
    f_w, _ = nets
    inputs, keypoints = synthetic_people(body, 2, seed=5)
    keypoints[:, :, 2] = 0.0
    result = fit(f_w, replace(inputs, keypoints=keypoints), body, FAST)
    assert result.skipped == (SKIP_NO_KEYPOINTS, SKIP_NO_KEYPOINTS)
    assert result.steps_run == (0, 0) and result.test_u_loss == (None, None)
    assert torch.equal(result.final.crop_cam, result.initial.crop_cam)


def test_bad_input_is_rejected_with_a_clear_message(body, nets) -> None:
    f_w, _ = nets
    inputs, keypoints = synthetic_people(body, 2, seed=6)
    nan = keypoints.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        fit(f_w, replace(inputs, keypoints=nan), body, FAST)
    with pytest.raises(ValueError, match=r"\(B, 17, 3\)"):
        fit(f_w, replace(inputs, keypoints=keypoints[:, :16]), body, FAST)
    with pytest.raises(ValueError, match=r"\(B, 25, 3\)"):
        fit(f_w, replace(inputs, keypoint_format="openpose25"), body, FAST)
    with pytest.raises(ValueError, match="convert_keypoints"):
        fit(f_w, replace(inputs, keypoint_format="mediapipe33"), body, FAST)
    negative = keypoints.clone()
    negative[0, 0, 2] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        fit(f_w, replace(inputs, keypoints=negative), body, FAST)
    crop = inputs.crop
    degenerate = replace(crop, box_size=torch.tensor([300.0, 0.0]))
    with pytest.raises(ValueError, match="degenerate box"):
        fit(f_w, replace(inputs, crop=degenerate), body, FAST)
    with pytest.raises(ValueError, match="crop has 1 people"):
        fit(f_w, replace(inputs, crop=crop.select(0)), body, FAST)
    with pytest.raises(ValueError, match="TTOInputs.images"):
        fit(f_w, replace(inputs, images=None), body, replace(FAST, scope="full"))
    with pytest.raises(ValueError, match="valid scopes"):
        TTOConfig(scope="everything")


# --- the functional inner step (shared with meta-training) ---------------------------------


def _head_batch(body, f_w, f_u, batch: int, seed: int) -> StepBatch:
    inputs, keypoints = synthetic_people(body, batch, seed=seed)
    info = inputs.crop.bbox_info()
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
        aux = f_u(inputs.images, info)
        aux_body = body(aux.params)
    return StepBatch((features, info), keypoints, inputs.crop, "coco17", aux, aux_body)


def test_inner_step_first_and_second_order_gradients(body, nets) -> None:
    f_w, f_u = nets
    batch = _head_batch(body, f_w, f_u, 2, seed=7)
    head = f_w.head
    names = ["dec.weight", "dec.bias", "fc2.bias"]
    w = LossWeights()

    def outer_grads(first_order: bool) -> list[torch.Tensor]:
        live = dict(head.named_parameters())
        params = {n: live[n] for n in names}
        adapted, inner = inner_step(
            head, params, batch, body, lr=1e-2, weights=w, first_order=first_order
        )
        # first order: the gradient is a constant and so is the loss at w (from the tape)
        assert inner.loss.requires_grad == (not first_order)
        outer = step_loss(head, adapted, batch, body, objective="2d", weights=w).loss
        return list(torch.autograd.grad(outer, [live[n] for n in names]))

    first, second = outer_grads(True), outer_grads(False)
    assert all(torch.isfinite(g).all() for g in first + second)
    assert any((a - b).abs().max() > 1e-7 for a, b in zip(first, second, strict=True))
    # First order = the outer gradient evaluated at the adapted weights.
    live = dict(head.named_parameters())
    params = {n: live[n].detach().clone().requires_grad_(True) for n in names}
    adapted, _ = inner_step(head, params, batch, body, lr=1e-2, weights=w)
    at_adapted = {n: p.detach().requires_grad_(True) for n, p in adapted.items()}
    outer = step_loss(head, at_adapted, batch, body, objective="2d", weights=w).loss
    direct = torch.autograd.grad(outer, list(at_adapted.values()))
    for a, b in zip(first, direct, strict=True):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)


def test_per_sample_inner_step_equals_one_sample_at_a_time(body, nets) -> None:
    f_w, f_u = nets
    batch = _head_batch(body, f_w, f_u, 3, seed=8)
    head = f_w.head
    names = adapted_parameter_names(f_w, "head", "all")
    own = dict(head.named_parameters())
    stacked = {n: own[n].detach().expand(3, *own[n].shape).clone().requires_grad_() for n in names}
    w = LossWeights()
    together, loss = inner_step(head, stacked, batch, body, lr=1e-3, weights=w, per_sample=True)
    assert loss.per_sample.shape == (3,)
    for i in range(3):
        one = StepBatch(
            tuple(a[i : i + 1] for a in batch.args),
            batch.keypoints[i : i + 1],
            batch.crop.select(i),
            "coco17",
            batch.aux.select(i),
            replace(
                batch.aux_body,
                vertices=batch.aux_body.vertices[i : i + 1],
                joints=batch.aux_body.joints[i : i + 1],
                coco17=batch.aux_body.coco17[i : i + 1],
                openpose25=batch.aux_body.openpose25[i : i + 1],
            ),
        )
        single = {n: own[n].detach().clone().requires_grad_() for n in names}
        alone, loss_i = inner_step(head, single, one, body, lr=1e-3, weights=w)
        assert loss_i.loss.item() == pytest.approx(loss.per_sample[i].item(), rel=1e-5)
        for n in names:
            assert (together[n][i] - alone[n]).abs().max() < 1e-6


@pytest.fixture(scope="module")
def rendered_person(body):
    """A rendered synthetic person (test split), its crop and detector-like noisy keypoints."""
    import numpy as np

    from model.backbones import normalize_crops
    from model.crop import crop_image
    from training.keypoint_noise import detector_noise
    from training.synth.engine import SynthEngine
    from training.synth.splits import split_config

    engine = SynthEngine(split_config("test"), body=body)
    try:
        sample = engine.sample(seed=7, index=0)
    finally:
        engine.close()
    labels = sample.labels
    center = torch.tensor(labels["center"], dtype=torch.float32)[None]
    box_size = torch.tensor([float(labels["scale"]) * 200.0])
    img_hw = torch.tensor([[float(labels["img_h"]), float(labels["img_w"])]])
    crop = CropInfo.from_boxes(center, box_size, img_hw, torch.tensor([float(labels["focal_length"])]))
    pixels, _ = crop_image(sample.image, labels["center"], float(box_size))
    images = torch.from_numpy(normalize_crops(pixels[None]))
    clean = torch.tensor(labels["coco17"], dtype=torch.float32)[None]
    box = labels["bbox"]
    noisy = detector_noise(clean, torch.tensor([float(box[3] - box[1])]), torch.Generator().manual_seed(0))
    assert np.isfinite(noisy.numpy()).all() and (noisy[..., 2] > 0).sum() >= 8
    return TTOInputs(noisy, crop, images=images)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_tto_on_a_rendered_person_lowers_the_reprojection_error(body, nets, rendered_person, scope):
    f_w, f_u = nets
    inputs = rendered_person
    with torch.no_grad():
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    result = fit(f_w, inputs, body, replace(FAST, scope=scope), aux)
    before = reprojection(body, result.initial, inputs)
    after = reprojection(body, result.final, inputs)
    assert (after < 0.8 * before).all(), (before, after)


def test_recorded_steps_equal_separate_fits_of_that_many_steps(body, nets) -> None:
    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 3, seed=4)
    with torch.no_grad():
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    curve = fit(f_w, inputs, body, FAST, aux, record_steps=(0, 3, FAST.steps))
    assert sorted(curve.recorded) == [0, 3, FAST.steps]
    for k, pred in curve.recorded.items():
        alone = fit(f_w, inputs, body, replace(FAST, steps=k), aux).final
        torch.testing.assert_close(pred.params.rotmats(), alone.params.rotmats(), atol=1e-5, rtol=0)
        torch.testing.assert_close(pred.crop_cam, alone.crop_cam, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="record_steps must lie"):
        fit(f_w, inputs, body, FAST, aux, record_steps=(FAST.steps + 1,))
    with pytest.raises(ValueError, match="early_stop"):
        fit(f_w, inputs, body, replace(FAST, early_stop=1e-3), aux, record_steps=(1,))


@pytest.mark.parametrize("subset", ["all", "output"])
def test_compiled_steps_equal_the_eager_fit(body, nets, subset: str) -> None:
    """runtime.compile runs each step as compiled graphs (batched: the forward and loss,
    its backward compiled with it; one person at a time: forward, gradient and Adam's
    update as one graph, which writes the adapted copies in place): the same fit, with a
    skipped person and an early stop, and warm_up compiles first; the network's own weights
    stay as they were."""
    from model import tto

    f_w, f_u = nets
    before = {k: v.clone() for k, v in f_w.state_dict().items()}
    inputs, keypoints = synthetic_people(body, 3, seed=4)
    keypoints[1, :, 2] = 0.0  # skipped
    inputs = replace(inputs, keypoints=keypoints)
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    head_inputs = replace(inputs, images=None, features=features)
    config = replace(FAST, early_stop=1e-4, head_subset=subset)
    eager_rt, compiled_rt = TTORuntime(batched=True), TTORuntime(compile=True, batched=True)
    one_by_one = TTORuntime(compile=True, batched=False)  # one graph a step, per person
    assert tto.warm_up(f_w, body, config, eager_rt) == 0.0  # nothing to compile
    assert tto.warm_up(f_w, body, config, compiled_rt, people=(2,)) > 0.0
    eager = fit(f_w, head_inputs, body, config, aux, runtime=eager_rt)
    for runtime in (compiled_rt, one_by_one):
        compiled = fit(f_w, head_inputs, body, config, aux, runtime=runtime)
        assert tto.compile_failure() is None
        for a, b in [
            (eager.final.params.rotmats(), compiled.final.params.rotmats()),
            (eager.final.params.betas, compiled.final.params.betas),
            (eager.final.crop_cam, compiled.final.crop_cam),
            (eager.initial.crop_cam, compiled.initial.crop_cam),
        ]:
            assert (a - b).abs().max() <= 1e-5
        assert eager.steps_run == compiled.steps_run and eager.skipped == compiled.skipped
        for ha, hb in zip(eager.loss_history, compiled.loss_history, strict=True):
            assert ha == pytest.approx(hb, rel=1e-4, abs=1e-9)
    assert (compiled.final.crop_cam - compiled.initial.crop_cam).abs().max() > 1e-3
    after = f_w.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compiled_fits_of_people_with_other_zero_features_reuse_the_graphs(body, nets) -> None:
    """The feature term's row sums skip zero inputs, so their width differs from person to
    person: after the warm-up, fits with other widths compile nothing new."""
    from torch._dynamo.utils import counters

    from model import tto

    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 1, seed=5)
    with torch.no_grad():
        features = f_w.backbone(inputs.images).abs() + 0.1
        aux = f_u(inputs.images, inputs.crop.bbox_info())  # as a request has (and warm_up)
    runtime = TTORuntime(compile=True, batched=False)
    config = replace(FAST, steps=2)
    tto.warm_up(f_w, body, config, runtime, people=(1,))
    graphs = counters["stats"]["unique_graphs"]
    for keep in (0.5, 0.2, 0.05):
        mask = torch.rand(features.shape, generator=torch.Generator().manual_seed(1)) < keep
        fit(f_w, replace(inputs, images=None, features=features * mask), body, config, aux,
            runtime=runtime)  # fmt: skip
    assert tto.compile_failure() is None
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_fits_run_eagerly_after_a_compile_failure(body, nets, monkeypatch) -> None:
    """Once compiling failed in a process (no C++ compiler, say), compiled fits run the same
    steps eagerly: one person's one-graph step and, for several people in one pass, the
    feature term's own compiled update, each falling back to its eager maths."""
    from model import tto_step

    f_w, f_u = nets
    inputs, _ = synthetic_people(body, 3, seed=6)
    with torch.no_grad():
        features = f_w.backbone(inputs.images)
        aux = f_u(inputs.images, inputs.crop.bbox_info())
    head_inputs = replace(inputs, images=None, features=features)
    eager = fit(f_w, head_inputs, body, FAST, aux, runtime=TTORuntime(batched=True))
    monkeypatch.setattr(tto_step, "_COMPILE_FAILURE", "RuntimeError: no C++ compiler")
    for batched in (True, False):
        fell_back = fit(
            f_w, head_inputs, body, FAST, aux, runtime=TTORuntime(compile=True, batched=batched)
        )
        assert (eager.final.crop_cam - fell_back.final.crop_cam).abs().max() <= 1e-5
        assert (eager.final.params.betas - fell_back.final.params.betas).abs().max() <= 1e-5
    assert (eager.final.crop_cam - eager.initial.crop_cam).abs().max() > 1e-3


def test_checkpoints_that_saved_runtime_flags_with_the_schedule_still_load() -> None:
    """Threads, compiled steps and the retired fused head engine were once saved in
    TTOConfig; they are runtime now (TTORuntime), and old checkpoints drop them."""
    from model.config import from_dict, to_dict

    saved = to_dict(TTOConfig(steps=9)) | {"num_threads": 2, "compile": True, "fused_head": True}
    assert from_dict(TTOConfig, saved) == TTOConfig(steps=9)
    with pytest.raises(ValueError, match="unknown TTOConfig keys"):
        from_dict(TTOConfig, saved | {"from_the_future": 1})
