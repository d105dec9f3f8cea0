"""`metahmr bench tto`: what the test-time optimisation costs per person.

For each backbone (the paper's regressor: width 1.0, head hidden 1024, 256x192 crops):

- forward_ms: ONNX Runtime forward of f_w + f_u (backbone and head graphs), one person;
- head_tto_ms / full_tto_ms: `model.tto.fit`, step 0 + 14 Adam steps (early stop off), one
  person, "head" scope (features given, as the worker has them from ONNX) and "full";
- reference_ms: the same schedule written the way the reference evaluation does it: deep
  copy of the whole PyTorch network, every step a full forward with a full-mesh body model,
  SGD via a parameter dict then Adam over all parameters, eager;
- batch16_ms: "head" scope for 16 people at once;

with random weights (the cost does not depend on them). Timings are medians of `repeats`
runs after one warm-up, with explicit thread counts for torch and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shlex
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import STEPS, BenchSettings, median_ms, memory_note
from model.checkpoint import random_checkpoint
from model.config import BackboneConfig, RegressorConfig, TTOConfig, TTORuntime
from model.export import export_checkpoint
from model.losses import loss_test_u, reprojected_keypoint_loss
from model.outputs import CropInfo, RegressorOutput, SMPLParams
from model.regressor import Regressor
from model.tto import TTOInputs, compile_failure, fit, warm_up

log = logging.getLogger(__name__)

SECTION = "TTO"
DEFAULT_BACKBONES = "resnet18,resnet50"
def _scene(batch: int, body: Any, device: str) -> tuple[TTOInputs, torch.Tensor]:
    """B people in a 640x480 image with keypoints from a posed body, slightly perturbed."""
    gen = torch.Generator().manual_seed(0)
    center = torch.tensor([[320.0, 240.0]]).repeat(batch, 1)
    crop = CropInfo.from_boxes(
        center, torch.full((batch,), 360.0), torch.tensor([[480.0, 640.0]]).repeat(batch, 1)
    )
    rot = torch.eye(3).repeat(batch, 24, 1, 1)
    rot[:, 0] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.zeros(batch, 10))
    cam = torch.tensor([[0.9, 0.0, 0.2]]).repeat(batch, 1)
    with torch.no_grad():
        kp3d = body.keypoints_only(params).coco17
        px = _project(kp3d, RegressorOutput(params, cam), crop)
    noisy = px + 3.0 * torch.randn(px.shape, generator=gen)
    keypoints = torch.cat([noisy, torch.ones(batch, 17, 1)], -1)
    images = torch.randn(batch, 3, 256, 192, generator=gen)
    images = images.to(device)
    return TTOInputs(keypoints.to(device), crop.to(device), images=images), images


def _project(points: torch.Tensor, pred: RegressorOutput, crop: CropInfo) -> torch.Tensor:
    from model.losses import project_points

    return project_points(points, pred.translation(crop), crop)


def _onnx_forward_ms(
    ckpt: Any, settings: BenchSettings, image: np.ndarray, info: np.ndarray
) -> float:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        export_checkpoint(ckpt, tmp)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if settings.device == "cuda"
            else ["CPUExecutionProvider"]
        )
        sessions = {
            name: ort.InferenceSession(f"{tmp}/{name}.onnx", options, providers=providers)
            for name in ("f_w_backbone", "f_w_head", "f_u_backbone", "f_u_head")
        }

    def forward() -> None:
        for net in ("f_w", "f_u"):
            (features,) = sessions[f"{net}_backbone"].run(None, {"image": image})
            sessions[f"{net}_head"].run(None, {"features": features, "bbox_info": info})

    return median_ms(forward, settings.repeats)


def reference_style_fit(
    f_w: Regressor,
    f_u: Regressor,
    inputs: TTOInputs,
    body: Any,
    config: TTOConfig,
    steps: int = STEPS,
) -> float:
    """The reference evaluation's loop for one batch; returns the last 2D loss.

    Deep copy of f_w, a parameter dict for the SGD step 0 on L_test-u (full-mesh body for
    both nets), then Adam over every parameter on the 2D loss with a full-mesh body forward
    each step, all eager PyTorch.
    """
    assert inputs.images is not None
    model = copy.deepcopy(f_w)
    model.eval()
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.adam_lr, betas=config.adam_betas)
    bbox_info = inputs.crop.bbox_info()
    loss = torch.zeros(())
    for step in range(steps + 1):
        pred = model(inputs.images, bbox_info)
        pred_body = body.reference_forward(pred.params)  # the full mesh every step, as there
        if step == 0:
            with torch.no_grad():
                aux = f_u(inputs.images, bbox_info)
                aux_body = body.reference_forward(aux.params)
            terms = loss_test_u(
                pred, pred_body, inputs.keypoints, inputs.crop, config.loss_weights, aux, aux_body
            )
            grads = torch.autograd.grad(terms.total, list(params.values()), allow_unused=True)
            with torch.no_grad():
                for (name, p), g in zip(params.items(), grads, strict=True):
                    if g is not None:
                        params[name].copy_(p - config.sgd_lr * g)  # "write_params"
            continue
        loss = reprojected_keypoint_loss(pred, pred_body, inputs.keypoints, inputs.crop)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss)


def bench_backbone(name: str, settings: BenchSettings, body: Any) -> dict[str, Any]:
    config = RegressorConfig(BackboneConfig(name, 1.0), hidden=1024)
    ckpt = random_checkpoint(config, with_detector=False, body_model_id=body.id)
    device = settings.device
    f_w, f_u = ckpt.build_f_w(device), ckpt.build_f_u(device)
    assert f_u is not None
    one, image = _scene(1, body, device)
    many, images_many = _scene(settings.people, body, device)
    info = one.crop.bbox_info()
    with torch.no_grad():
        features = f_w.backbone(image)
        aux = f_u(image, info)
        features_many = f_w.backbone(images_many)
        aux_many = f_u(images_many, many.crop.bbox_info())
    base = TTOConfig(steps=STEPS, early_stop=0.0, head_subset=settings.head_subset)
    head_in = replace(one, images=None, features=features)
    many_in = replace(many, images=None, features=features_many)
    result: dict[str, Any] = {
        "backbone": name,
        "input": "1x3x256x192",
        "head_subset": settings.head_subset,
    }
    result["forward_ms"] = _onnx_forward_ms(ckpt, settings, image.cpu().numpy(), info.cpu().numpy())
    result["head_tto_ms"] = median_ms(lambda: fit(f_w, head_in, body, base, aux), settings.repeats)
    other = "all" if settings.head_subset == "output" else "output"
    result[f"head_tto_{other}_ms"] = median_ms(
        lambda: fit(f_w, head_in, body, replace(base, head_subset=other), aux), settings.repeats
    )
    full = replace(base, scope="full")
    result["full_tto_ms"] = median_ms(lambda: fit(f_w, one, body, full, aux), settings.repeats)
    result["reference_ms"] = median_ms(
        lambda: reference_style_fit(f_w, f_u, one, body, full), settings.repeats
    )
    batched = TTORuntime(batched=True)
    result["batch16_ms"] = median_ms(  # one pass, per-person weight copies
        lambda: fit(f_w, many_in, body, base, aux_many, runtime=batched), settings.repeats
    )
    # The same head fits as torch.compile'd steps (TTORuntime.compile, METAHMR_TTO_COMPILE):
    # compile first (1 person, then 2 for a dynamic batch size), then time.
    compiled = TTORuntime(compile=True)
    result["compile_s"] = warm_up(f_w, body, base, compiled)
    result["compile_fell_back"] = compile_failure()
    result["head_tto_compiled_ms"] = median_ms(
        lambda: fit(f_w, head_in, body, base, aux, runtime=compiled), settings.repeats
    )
    base_other = replace(base, head_subset=other)
    warm_up(f_w, body, base_other, compiled, people=(1,))
    result[f"head_tto_compiled_{other}_ms"] = median_ms(
        lambda: fit(f_w, head_in, body, base_other, aux, runtime=compiled), settings.repeats
    )
    compiled_batched = TTORuntime(compile=True, batched=True)
    result["batch16_compiled_ms"] = median_ms(
        lambda: fit(f_w, many_in, body, base, aux_many, runtime=compiled_batched),
        settings.repeats,
    )
    result[f"batch16_compiled_{other}_ms"] = median_ms(
        lambda: fit(f_w, many_in, body, base_other, aux_many, runtime=compiled_batched),
        settings.repeats,
    )
    result["head_tto_compiled_overhead"] = result["head_tto_compiled_ms"] / result["forward_ms"]
    result["speedup_vs_reference_compiled"] = result["reference_ms"] / (
        result["forward_ms"] + result["head_tto_compiled_ms"]
    )
    result["batch16_over_single_compiled"] = (
        result["batch16_compiled_ms"] / result["head_tto_compiled_ms"]
    )
    result["head_tto_overhead"] = result["head_tto_ms"] / result["forward_ms"]
    result["speedup_vs_reference"] = result["reference_ms"] / (
        result["forward_ms"] + result["head_tto_ms"]
    )
    result["batch16_over_single"] = result["batch16_ms"] / result["head_tto_ms"]
    result["people_per_s_batch1"] = 1000.0 / (result["forward_ms"] + result["head_tto_ms"])
    log.info(
        "%s: %s", name, {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
    )
    return result


def machine_info(settings: BenchSettings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": settings.threads,
        "device": settings.device,
        "malloc_keep_mb": settings.malloc_keep_mb,
        "note": "shared machine: other processes may have been running during the timings",
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if settings.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    from model.body import load_body_model

    torch.set_num_threads(settings.threads)
    machine = machine_info(settings)
    body = load_body_model().to(settings.device)
    results = [bench_backbone(name, settings, body) for name in settings.backbones]
    return {"results": results, "machine": machine, "body_model": body.id}


def render_markdown(report: dict[str, Any]) -> str:
    rows = [
        "| backbone | ONNX fwd f_w+f_u (ms) | head TTO (ms) | full TTO (ms) | reference-style (ms) "
        "| 16 people head TTO (ms) | head TTO / fwd | speed-up vs reference | 16 / 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        rows.append(
            f"| {r['backbone']} | {r['forward_ms']:.1f} | {r['head_tto_ms']:.1f} | "
            f"{r['full_tto_ms']:.0f} | {r['reference_ms']:.0f} | {r['batch16_ms']:.1f} | "
            f"{r['head_tto_overhead']:.2f} | {r['speedup_vs_reference']:.1f}x | "
            f"{r['batch16_over_single']:.2f} |"
        )
    compiled_rows = [
        "| backbone | compile (s) | head TTO, compiled (ms) | 16 people, compiled (ms) "
        "| head TTO / fwd | speed-up vs reference | 16 / 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "head_tto_compiled_ms" not in r:
            continue
        fell_back = f" (eager: {r['compile_fell_back']})" if r.get("compile_fell_back") else ""
        compiled_rows.append(
            f"| {r['backbone']} | {r['compile_s']:.0f}{fell_back} | "
            f"{r['head_tto_compiled_ms']:.1f} | {r['batch16_compiled_ms']:.1f} | "
            f"{r['head_tto_compiled_overhead']:.2f} | "
            f"{r['speedup_vs_reference_compiled']:.1f}x | "
            f"{r['batch16_over_single_compiled']:.2f} |"
        )
    m = report["machine"]
    subset = report["results"][0]["head_subset"] if report["results"] else "?"
    other = [
        f"{r['backbone']}: {v:.1f} ms"
        for r in report["results"]
        for k, v in r.items()
        if k.startswith("head_tto_") and k.endswith("_ms") and "compiled" not in k
        and k != "head_tto_ms"
    ]
    other_compiled = [
        f"{r['backbone']}: {v:.1f} ms"
        for r in report["results"]
        for k, v in r.items()
        if k.startswith("head_tto_compiled_") and k.endswith("_ms") and k != "head_tto_compiled_ms"
    ]
    other_batch16 = [
        f"{r['backbone']}: {v:.1f} ms"
        for r in report["results"]
        for k, v in r.items()
        if k.startswith("batch16_compiled_") and k.endswith("_ms") and k != "batch16_compiled_ms"
    ]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, "
        f"{m['threads']} threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f"; load average at start {m.get('load_average_at_start')}; {memory_note(m)}. "
        + f"{m['note'].capitalize()}.",
        "",
        f"Per person, 256x192 crop, step 0 + {STEPS} Adam steps (early stop off), head hidden "
        f"1024, body model `{report['body_model']}`. Head scope adapts the `{subset}` "
        "subset of the head (features from ONNX, fixed); other subset: "
        + ", ".join(other)
        + ". Reference-style = deep copy + all parameters + full-mesh body with pose blend shapes (`reference_forward`) every step. "
        "Every fit runs `model.tto.fit_group` (step 0, Adam steps of `model.tto_adam`: "
        "`torch.optim.Adam`'s fused kernel, fc1's feature half adapted as its output, eager "
        "weight gradients of one person's head layers one product a layer (`model.linear_tape`), "
        "early stop). 16 people: one fit of 16 per-person weight copies in one "
        "pass (`TTORuntime(batched=True)`, eager: the tape's products per layer; compiled: "
        "under vmap), what `fit` does by default except for compiled steps with every head "
        "weight adapting, where it loops over people instead (`model.tto.default_batched`: "
        "16 x the one-person time).",
        "",
        *rows,
        "",
        "With compiled TTO steps (`TTORuntime.compile`, the worker's `METAHMR_TTO_COMPILE=1`: "
        "one person: each Adam step's forward, gradient and update as one `torch.compile`d "
        "graph; several: the forward and loss as one graph, its backward compiled with it; "
        "the same fit); "
        "compile = the worker's start-up warm-up (1 person, then 2), with torch's on-disk "
        "cache as this machine had it:",
        "",
        *compiled_rows,
        "",
        "Compiled head TTO with the other subset: " + ", ".join(other_compiled)
        + "; 16 people in one pass: " + ", ".join(other_batch16) + ".",
        "",
        "Targets: head TTO / fwd <= 0.5; speed-up vs reference >= 10x; 16 / 1 <= 4.",
    ]
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (written next to its results)."""
    parts = ["metahmr", "bench", "tto", "--backbones", args.backbones, "--model", args.model]
    parts += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    parts += ["--device", args.device]
    if args.json:
        parts += ["--json", str(args.json)]
    return " ".join(shlex.quote(p) for p in parts)


def run_from_args(args: argparse.Namespace) -> int:
    from model.memory import keep_freed_blocks
    from model.settings import ModelSettings

    if args.backbones is None:
        args.backbones = DEFAULT_BACKBONES
    keep_mb = ModelSettings().malloc_keep_mb
    settings = BenchSettings(
        backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()),
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        malloc_keep_mb=keep_mb if keep_freed_blocks(keep_mb) else 0,
    )
    command = command_line(args)
    sections: list[tuple[str, str]] = []
    suffix = "" if settings.device == "cpu" else f" ({settings.device})"
    report: dict[str, Any] = {}
    if settings.backbones:
        report = run_benchmark(settings)
        report["command"] = command
        sections.append((SECTION + suffix, render_markdown(report)))
    if args.model:
        from bench.tto_model import SECTION as MODEL_SECTION
        from bench.tto_model import bench_model
        from bench.tto_model import render_markdown as render_model
        from model.body import load_body_model

        torch.set_num_threads(settings.threads)
        from worker.runtime import SHIPPED_CHECKPOINT

        path = SHIPPED_CHECKPOINT if args.model == "shipped" else Path(args.model)
        body = load_body_model().to(settings.device)
        report["model_result"] = bench_model(path, settings, body)
        report.setdefault("machine", machine_info(settings))
        sections.append((MODEL_SECTION + suffix, render_model(report, command)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_doc:
        from bench.docs import write_section

        for name, text in sections:
            write_section(Path(args.doc), name, text)
    return 0

