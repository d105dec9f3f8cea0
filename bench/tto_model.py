"""`metahmr bench tto --model CKPT`: a trained model's request path, per person.

The paper-sized rows of `bench.tto` time random ResNet regressors; this times what the
worker runs for a BlazePose model (the shipped default unless `--model` says otherwise), on
a real photograph-sized image:

- forward_ms: the worker's own stages up to the TTO (`worker.stages`: BlazePose's person
  detector on the image and its landmark network on everyone found, the crops, the ONNX
  graphs of f_w and f_u, encoder + head);
- of which detector_ms, landmarks_ms and heads_ms;
- head_tto_ms / head_tto_compiled_ms: `model.tto.fit` with the checkpoint's TTO schedule,
  step 0 + 14 Adam steps (early stop off), eager and with compiled steps.

Timings are medians of `repeats` runs after one warm-up, with explicit thread counts; the
forward and the fits are timed in turn (`bench.timing.medians_in_turn_ms`), so the TTO / forward
ratios hold on a machine whose speed drifts.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.timing import STEPS, BenchSettings, median_ms, medians_in_turn_ms, memory_note

log = logging.getLogger(__name__)

SECTION = "TTO (shipped model)"
EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "img" / "example.jpg"


def bench_model(
    checkpoint: str | Path,
    settings: BenchSettings,
    body: Any,
    image_path: Path = EXAMPLE_IMAGE,
    compiled: bool = True,
) -> dict[str, Any]:
    """Forward (BlazePose + heads) and head TTO of one person of `image_path` (see module);
    compiled=False skips the compiled TTO (its first compile takes minutes on a cold cache)."""
    from model.backbones import is_landmark_backbone, landmark_variant
    from model.blazepose import BlazePose
    from model.checkpoint import load_checkpoint
    from model.config import TTORuntime
    from model.export import export_checkpoint
    from model.tto import TTOInputs, compile_failure, fit, warm_up
    from worker.config import WorkerSettings
    from worker.runtime import load_model
    from worker.stages.keypoints import fit_keypoints
    from worker.stages.people import find_people, make_crops
    from worker.stages.regress import regress

    ckpt = load_checkpoint(checkpoint)
    name = ckpt.regressor_config.backbone.name
    if not is_landmark_backbone(name):
        raise ValueError(f"{checkpoint} is not a BlazePose model; time image backbones with --backbones")
    variant = landmark_variant(name)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    height, width = image.shape[:2]
    focal = float(np.hypot(width, height))
    blazepose = BlazePose(variant, threads=settings.threads)
    with tempfile.TemporaryDirectory() as tmp:
        export_checkpoint(ckpt, tmp)
        model = load_model(Path(tmp), WorkerSettings(onnx_threads=settings.threads))

    def forward() -> tuple[Any, ...]:
        """The worker's stages up to the TTO's inputs (`worker.inference.OnnxPipeline`)."""
        people, landmarks = find_people(image, [], blazepose)
        crops = make_crops(image, people, focal, model.crop_hw)
        features, _, aux = regress(model, crops, [landmarks])
        return people, crops, landmarks, features, aux

    people, crops, landmarks, features, aux = forward()
    if landmarks is None or len(people) != 1:  # per-person figures need exactly one
        found = 0 if landmarks is None else len(people)
        raise RuntimeError(f"BlazePose found {found} people in {image_path}; the bench needs one")
    shown = Path(checkpoint).resolve()
    with contextlib.suppress(ValueError):  # inside the repository: say where, not whose disk
        shown = shown.relative_to(EXAMPLE_IMAGE.parents[2])
    result: dict[str, Any] = {"model": str(shown), "version": ckpt.model_version, "variant": variant}
    result["image"] = f"{image_path.name} {width}x{height}"
    result["detector_ms"] = median_ms(lambda: blazepose.detect_people(image), settings.repeats)
    result["landmarks_ms"] = median_ms(lambda: blazepose.landmarks(image, landmarks.roi), settings.repeats)
    result["heads_ms"] = median_ms(lambda: regress(model, crops, [landmarks]), settings.repeats)

    keypoints, _ = fit_keypoints(image, people, crops, model, landmarks)
    inputs = TTOInputs(torch.from_numpy(keypoints), crops.crop, features=torch.from_numpy(features))
    f_w = ckpt.build_f_w("cpu")
    base = replace(ckpt.tto, steps=STEPS, early_stop=0.0)
    result["tto"] = {"subset": base.head_subset, "sgd_lr": base.sgd_lr, "adam_lr": base.adam_lr}
    timed = {
        "forward_ms": forward,
        "head_tto_ms": lambda: fit(f_w, inputs, body, base, aux),
    }
    if compiled:
        runtime = TTORuntime(compile=True)
        result["compile_s"] = warm_up(f_w, body, base, runtime)
        result["compile_fell_back"] = compile_failure()
        timed["head_tto_compiled_ms"] = lambda: fit(f_w, inputs, body, base, aux, runtime=runtime)
    # The forward and the fits in turn, so their ratios come from the same moments.
    result.update(medians_in_turn_ms(timed, settings.repeats))
    result["head_tto_overhead"] = result["head_tto_ms"] / result["forward_ms"]
    if compiled:
        result["head_tto_compiled_overhead"] = result["head_tto_compiled_ms"] / result["forward_ms"]
    log.info("%s: %s", checkpoint, {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})
    return result


def render_markdown(report: dict[str, Any], command: str) -> str:
    r = report["model_result"]
    m = report["machine"]
    fell_back = f" (fell back to eager: {r['compile_fell_back']})" if r.get("compile_fell_back") else ""
    compiled = "head_tto_compiled_ms" in r
    tto_c = f"{r['head_tto_compiled_ms']:.1f}" if compiled else "–"
    ratio_c = f"{r['head_tto_compiled_overhead']:.2f}" if compiled else "–"
    compile_note = f"compile {r['compile_s']:.0f} s{fell_back}" if compiled else "not timed"
    rows = [
        "| model | forward (ms) | detector | landmarks | f_w + f_u graphs | head TTO eager (ms) "
        "| head TTO compiled (ms) | eager / fwd | compiled / fwd |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['version']} (BlazePose {r['variant']}) | {r['forward_ms']:.1f} | {r['detector_ms']:.1f} | "
        f"{r['landmarks_ms']:.1f} | {r['heads_ms']:.2f} | {r['head_tto_ms']:.1f} | {tto_c} | "
        f"{r['head_tto_overhead']:.2f} | {ratio_c} |",
    ]
    t = r["tto"]
    return "\n".join([
        f"Command: `{command}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, {m['threads']} "
        f"threads, device cpu; load average at start {m.get('load_average_at_start')}; "
        f"{memory_note(m)}. {m['note'].capitalize()}.",
        "",
        f"The request path of `{r['model']}` on `{r['image']}`, one person: forward = "
        "the worker's own stages up to the TTO (`worker.stages`: BlazePose's person detector "
        "on the image, its landmark network on the person, the crop, the ONNX graphs of f_w "
        "and f_u, encoder over BlazePose's outputs + head); the detector, landmark and graph "
        "columns time each part alone. Head TTO = "
        f"`model.tto.fit` with the checkpoint's schedule (`{t['subset']}` head weights, "
        f"step-0 SGD {t['sgd_lr']:g}, Adam {t['adam_lr']:g}), step 0 + {STEPS} Adam steps, "
        f"early stop off; compiled = `TTO_COMPILE=1`, {compile_note}. The forward and the "
        "fits are timed in turn, round by round, so each ratio compares the same moments.",
        "",
        *rows,
        "",
        "Target: head TTO / fwd <= 0.5.",
    ])  # fmt: skip
