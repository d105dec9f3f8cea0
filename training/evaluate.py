"""The evaluation protocol (ARCHITECTURE §6) and the report `metahmr eval` writes.

Methods, side by side on the same data and keypoints:

- ``regression``: f_w of the pre-trained checkpoint, no TTO;
- ``eft``: TTO from the pre-trained weights, 2D loss only (no auxiliary net);
- ``meta``: TTO (2D only) from a meta-trained checkpoint without the auxiliary net;
- ``meta-dual``: the full method, step 0 on L_test-u with f_u, then the 2D Adam steps.

Every TTO method runs once per batch for the largest requested step count, early stop
disabled, and `fit(record_steps=...)` keeps the predictions after each requested count on the
way (equal to separate fits of that many steps: the fit is deterministic).
Test-time keypoints are the ground-truth projections with detector-like noise
(`training.keypoint_noise`, seeded, identical for every method) and, separately, the
built-in detector's output. Splits are only ever evaluated, never tuned on.

Written by `write_report`: ``results.json`` (``{"model", "methods", "samples", "rows"}``,
one row per split x keypoints x method x steps), ``results.md`` (tables at
`EvalConfig.table_steps` steps and the curve) and ``results_steps.png``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from model.body import BodyModel
from model.checkpoint import Checkpoint, load_checkpoint
from model.config import TTO_SCOPES
from model.keypoint_detector import KeypointDetector, crop_to_image, detect
from model.losses import project_points
from model.outputs import RegressorOutput
from model.regressor import Regressor
from model.tto import TTOInputs, fit
from training.batches import batch_crop, network_input
from training.config import KEYPOINT_SOURCES, METHODS, EvalConfig
from training.datasets import HMRBatch, collate_samples
from training.distributed import resolve_device
from training.eval_families import entry_label, family_report, split_families
from training.eval_families import markdown_section as family_section
from training.features import is_feature_cache
from training.keypoint_noise import detector_noise
from training.metrics import SampleErrors, mpjpe, pa_mpjpe, pck, pve

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results_steps.png"
METRICS = ("mpjpe", "pa_mpjpe", "pve", "pck")
METRIC_LABELS = {"mpjpe": "MPJPE (mm)", "pa_mpjpe": "PA-MPJPE (mm)", "pve": "PVE (mm)",
                 "pck": "PCK@0.05"}


@dataclass
class Method:
    """A method ready to run: f_w, f_u (meta-dual only), and its TTO settings."""

    name: str
    checkpoint: str
    f_w: Regressor
    f_u: Regressor | None
    ckpt: Checkpoint

    @property
    def uses_tto(self) -> bool:
        return self.name != "regression"


@dataclass(frozen=True)
class EvalResult:
    """rows: the results.json rows. model / methods / samples: its header fields."""

    rows: list[dict[str, Any]]
    model: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    samples: dict[str, int]
    real: dict[str, Any] | None = None  # per method, `RealScores.to_json()`; None: no split
    real_md: str = ""
    families: dict[str, Any] | None = None  # `training.eval_families.family_report`


# --- inputs ----------------------------------------------------------------------------------


def noisy_keypoints(batch: HMRBatch, generator: torch.Generator) -> Tensor:
    """(B, 17, 3) ground-truth keypoints with the protocol's noise (sigma 3% of the box)."""
    return detector_noise(batch.keypoints2d.cpu(), batch.box_size.cpu(), generator).to(
        batch.keypoints2d.device
    )


def detector_keypoints(detector: KeypointDetector, batch: HMRBatch) -> Tensor:
    """(B, 17, 3) full-image keypoints from the built-in detector on the batch's crops."""
    crop_hw = tuple(batch.image.shape[-2:])
    det_hw = detector.config.crop_hw
    images = batch.image
    if tuple(det_hw) != crop_hw:
        images = F.interpolate(images, size=det_hw, mode="bilinear", antialias=True)
    crops = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    points = detect(detector, crops).astype(np.float64)
    points[..., 0] *= crop_hw[1] / det_hw[1]
    points[..., 1] *= crop_hw[0] / det_hw[0]
    # Heatmap peaks of a weak detector can be slightly negative; the TTO needs conf >= 0.
    points[..., 2] = np.clip(points[..., 2], 0.0, None)
    full = crop_to_image(points, batch.crop_affine.cpu().numpy())
    return torch.from_numpy(full).to(batch.keypoints2d)


# --- predictions -----------------------------------------------------------------------------


def cached_keypoints(folder: str, batch: HMRBatch) -> Tensor:
    """(B, 17, 3) BlazePose's COCO-17 keypoints of the batch's people, from its feature cache
    (BlazePose is the built-in detector of a BlazePose model)."""
    from training.features import cached_blazepose_keypoints

    return torch.from_numpy(cached_blazepose_keypoints(folder)[batch.index.cpu().numpy()])


def regression(method: Method, images: Tensor, batch: HMRBatch) -> RegressorOutput:
    with torch.no_grad():
        return method.f_w(images, batch.bbox_info)


def tto_predictions(
    method: Method,
    images: Tensor,
    features: Tensor | None,
    aux: RegressorOutput | None,
    batch: HMRBatch,
    keypoints: Tensor,
    body: BodyModel,
    scope: str,
    steps: tuple[int, ...],
) -> dict[int, RegressorOutput]:
    """The fitted predictions after each step count in `steps` (early stop disabled), all
    from one fit of max(steps) steps that records the predictions on the way."""
    inputs = TTOInputs(keypoints, batch_crop(batch), "coco17", images=images, features=features)
    config = replace(method.ckpt.tto, scope=scope, steps=max(steps), early_stop=0.0,
                     use_aux=aux is not None)
    return dict(fit(method.f_w, inputs, body, config, aux=aux, record_steps=tuple(steps)).recorded)


def sample_errors(pred: RegressorOutput, batch: HMRBatch, body: BodyModel) -> SampleErrors:
    """Per-sample metrics of B predictions against the batch's ground truth."""
    with torch.no_grad():
        pred_body = body(pred.params)
        gt_body = body(batch.smpl_params())
        has_j3d = batch.has_joints3d[:, None, None]
        gt_joints = torch.where(has_j3d, batch.joints3d, gt_body.joints)
        crop = batch_crop(batch)
        pred_px = project_points(pred_body.coco17, pred.translation(crop), crop)
        return SampleErrors(
            mpjpe=mpjpe(pred_body.joints, gt_joints).cpu(),
            pa_mpjpe=pa_mpjpe(pred_body.joints, gt_joints).cpu(),
            pve=pve(pred_body.vertices, gt_body.vertices, pred_body.joints, gt_body.joints).cpu(),
            pck=pck(pred_px, batch.keypoints2d, batch.box_size).cpu(),
        )


# --- the protocol ----------------------------------------------------------------------------


def load_methods(config: EvalConfig, device: torch.device) -> list[Method]:
    methods = []
    for name, path in config.checkpoints.items():
        ckpt = load_checkpoint(path)
        f_u = ckpt.build_f_u(device) if name == "meta-dual" else None
        if name == "meta-dual" and f_u is None:
            raise ValueError(f"meta-dual needs a checkpoint with f_u; {path} has none")
        methods.append(Method(name, path, ckpt.build_f_w(device), f_u, ckpt))
    if not methods:
        raise ValueError("no checkpoint given: pass at least one of --pretrained/--meta/--meta-dual")
    return methods


def eval_scopes(config: EvalConfig, methods: list[Method]) -> tuple[str, ...]:
    """The scopes every TTO method runs in: asked for (one, or several to compare), else
    the meta-dual checkpoint's (it must match its meta-training), else the first method's."""
    if config.scope is not None:
        return tuple(config.scope.split(","))
    by_name = {m.name: m for m in methods}
    return ((by_name.get("meta-dual") or methods[0]).ckpt.tto.scope,)


def load_detector(
    config: EvalConfig, methods: list[Method], device: torch.device
) -> KeypointDetector | None:
    if config.detector_checkpoint is not None:
        det = load_checkpoint(config.detector_checkpoint).build_detector(device)
        if det is None:
            raise ValueError(f"{config.detector_checkpoint} has no keypoint detector")
        return det
    for m in methods:
        det = m.ckpt.build_detector(device)
        if det is not None:
            return det
    return None


def evaluate(
    config: EvalConfig, body: BodyModel | None = None, methods: list[Method] | None = None
) -> EvalResult:
    """Run every method on every split and keypoint source; returns the rows.

    methods: already built methods (`training.tune` passes ones with other TTO settings);
    None loads config.checkpoints.
    """
    from model.body import load_body_model

    device = resolve_device(config.device)
    body = (body if body is not None else load_body_model()).to(device)
    methods = methods if methods is not None else load_methods(config, device)
    scopes = eval_scopes(config, methods)
    detector = load_detector(config, methods, device) if "detector" in config.keypoints else None
    cached = all(is_feature_cache(f) for f in config.splits.values())
    sources = [s for s in config.keypoints if s != "detector" or detector is not None or cached]
    if len(sources) < len(config.keypoints):
        log.warning("no checkpoint has a keypoint detector: detector keypoints skipped")
    steps = tuple(sorted(set(config.steps)))
    errors: dict[tuple[str, str, str, str, int], list[SampleErrors]] = defaultdict(list)
    samples = {}
    timing: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    families: dict[str, list[np.ndarray]] = {}  # per split, each batch's pose families
    for split_index, (split, folder) in enumerate(config.splits.items()):
        gen = torch.Generator().manual_seed(config.seed * 1000 + split_index)
        loader = _loader(folder, config)
        samples[split] = 0
        split_fams = split_families(folder)
        for batch in _progress(loader, config, split):
            if batch.batch_size == 0:
                continue
            batch = batch.to(device)
            samples[split] += batch.batch_size
            keypoints = {"noisy_gt": noisy_keypoints(batch, gen)} if "noisy_gt" in sources else {}
            if detector is not None and "detector" in sources:
                keypoints["detector"] = detector_keypoints(detector, batch)
            elif "detector" in config.keypoints and is_feature_cache(folder):
                keypoints["detector"] = cached_keypoints(folder, batch).to(device)
            for key, err in _batch_errors(methods, batch, keypoints, body, scopes, steps, timing):
                errors[(split, *key)].append(err)
            if split_fams is not None:
                families.setdefault(split, []).append(split_fams[batch.index.cpu().numpy()])
    rows = _rows(errors, list(config.splits))
    model = _model_info(methods, body, scopes)
    info = _method_info(methods)
    for (name, scope), (seconds, people) in timing.items():
        per_scope = info[name].setdefault("tto_ms_per_person", {})
        per_scope[scope] = round(1000 * seconds / max(people, 1), 2)
        info[name]["tto_steps_timed"] = max(steps)
    real, real_md = _real_split(config, methods, body)
    shown = table_step(steps, config.table_steps)
    by_family = family_report(errors, families, shown) if families else None
    return EvalResult(rows, model, info, samples, real, real_md, by_family)


def _real_split(
    config: EvalConfig, methods: list[Method], body: BodyModel
) -> tuple[dict[str, Any] | None, str]:
    """The real-photo split (`training.evaluate_real`), when config.real is set."""
    if config.real is None:
        return None, ""
    from training.evaluate_real import evaluate_real
    from training.realdata_scores import markdown_section

    try:
        scores, timing = evaluate_real(config.real, methods, body.cpu(), steps=config.real_steps)
    except FileNotFoundError as exc:
        log.warning("real split skipped: %s", exc)
        return None, ""
    payload = {
        "folder": str(config.real), "tto_steps": config.real_steps,
        "methods": {k: v.to_json() for k, v in scores.items()}, "fit_ms_per_person": timing,
    }  # fmt: skip
    return payload, markdown_section(scores)


def _batch_errors(
    methods: list[Method],
    batch: HMRBatch,
    keypoints: dict[str, Tensor],
    body: BodyModel,
    scopes: tuple[str, ...],
    steps: tuple[int, ...],
    timing: dict[tuple[str, str], list[float]] | None = None,
) -> list[tuple[tuple[str, str, str, int], SampleErrors]]:
    """Per-sample errors of every method (in every scope) on one batch, keyed (keypoints,
    method, scope, steps). timing: (method, scope) -> [seconds of TTO (the backbone and
    auxiliary forwards excluded), people fitted], accumulated."""
    out = []
    for method in methods:
        images = network_input(batch.image, method.f_w.config.crop_hw)
        if not method.uses_tto:
            err = sample_errors(regression(method, images, batch), batch, body)
            out += [((source, method.name, "none", 0), err) for source in keypoints]
            continue
        features = None
        if "head" in scopes:  # backbone once per batch, not once per fit
            with torch.no_grad():
                features = method.f_w.backbone(images)
        aux = None
        if method.f_u is not None:
            with torch.no_grad():
                aux = method.f_u(images, batch.bbox_info)
        for scope, (source, kp) in ((sc, item) for sc in scopes for item in keypoints.items()):
            start = time.perf_counter()
            feats = features if scope == "head" else None
            preds = tto_predictions(method, images, feats, aux, batch, kp, body, scope, steps)
            if timing is not None:
                timing[(method.name, scope)][0] += time.perf_counter() - start
                timing[(method.name, scope)][1] += batch.batch_size
            out += [((source, method.name, scope, k), sample_errors(p, batch, body))
                    for k, p in preds.items()]
    return out


def _loader(folder: str, config: EvalConfig) -> DataLoader:
    from training.features import open_dataset

    dataset: Any = open_dataset(folder)  # no augmentation: deterministic crops
    if config.limit is not None:
        dataset = Subset(dataset, range(min(config.limit, len(dataset))))
    return DataLoader(
        dataset, batch_size=config.batch_size, num_workers=config.workers,
        collate_fn=collate_samples, shuffle=False,
    )


def _progress(loader: DataLoader, config: EvalConfig, split: str) -> Any:
    if not config.progress:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"eval {split}", dynamic_ncols=True)


def _rows(
    errors: dict[tuple[str, str, str, str, int], list[SampleErrors]], splits: list[str]
) -> list[dict[str, Any]]:
    """One row per (split, keypoints, method, scope, steps), in protocol order."""
    scope_order = ("none", *TTO_SCOPES)

    def order(key: tuple[str, str, str, str, int]) -> tuple[int, int, int, int, int]:
        split, source, method, scope, k = key
        return (splits.index(split), KEYPOINT_SOURCES.index(source), METHODS.index(method),
                scope_order.index(scope), k)

    rows = []
    for key, parts in sorted(errors.items(), key=lambda kv: order(kv[0])):
        split, source, method, scope, k = key
        means = SampleErrors.cat(parts).means()
        rows.append({"split": split, "keypoints": source, "method": method, "scope": scope,
                     "steps": k, **{m: round(v, 4) for m, v in means.items()}})
    return rows


def _model_info(methods: list[Method], body: BodyModel, scopes: tuple[str, ...]) -> dict[str, Any]:
    main = next((m for m in methods if m.name == "meta-dual"), methods[0])
    return {
        "name": main.ckpt.model_name,
        "version": main.ckpt.model_version,
        "body_model": str(getattr(body, "id", "unknown")),
        "regressor": main.f_w.config.backbone.name,
        "backbone_width": main.f_w.config.backbone.width,
        "crop_hw": list(main.f_w.config.crop_hw),
        "tto_scope": ",".join(scopes),
    }


def _method_info(methods: list[Method]) -> dict[str, dict[str, Any]]:
    return {
        m.name: {
            "checkpoint": m.checkpoint,
            "version": m.ckpt.model_version,
            "aux": m.f_u is not None,
            "tto": m.uses_tto,
            "sgd_lr": m.ckpt.tto.sgd_lr,
            "adam_lr": m.ckpt.tto.adam_lr,
        }
        for m in methods
    }


# --- the report ------------------------------------------------------------------------------


def write_report(result: EvalResult, out_dir: str | Path, table_steps: int = 14) -> list[Path]:
    """results.json, results.md and results_steps.png into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": result.model, "methods": result.methods, "samples": result.samples,
               "rows": result.rows}
    if result.real is not None:
        payload["real"] = result.real
    if result.families is not None:
        payload["families"] = result.families
    json_path = out / RESULTS_JSON
    motion = _kept_motion(json_path)  # the motion split (`eval --motion`) is written apart
    if motion is not None:
        payload["motion"] = motion
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    png_path = out / RESULTS_PNG
    plot_curves(result.rows, png_path)
    md_path = out / RESULTS_MD
    text = markdown_report(result, table_steps, png_path.name)
    if motion is not None:
        from training.evaluate_motion import SECTION, markdown_section

        text = text.rstrip("\n") + f"\n\n## {SECTION}\n\n{markdown_section(motion)}\n"
    md_path.write_text(text)
    return [json_path, md_path, png_path]


def _kept_motion(json_path: Path) -> dict[str, Any] | None:
    if not json_path.exists():
        return None
    try:
        motion = json.loads(json_path.read_text()).get("motion")
    except (ValueError, AttributeError):
        return None
    return motion if isinstance(motion, dict) else None


def _row_at(
    rows: list[dict[str, Any]], split: str, source: str, method: str, scope: str, steps: int
) -> dict[str, Any] | None:
    """The row at the largest recorded step count <= steps (regression: its one row)."""
    key = (split, source, method, scope)
    candidates = [r for r in rows if (r["split"], r["keypoints"], r["method"], r["scope"]) == key]
    below = [r for r in candidates if r["steps"] <= steps] or candidates
    return max(below, key=lambda r: r["steps"]) if below else None


def table_step(steps: Iterable[int], table_steps: int) -> int:
    """The TTO step count the tables show: the largest evaluated one <= table_steps."""
    return max([s for s in steps if s <= table_steps], default=0)


def markdown_report(result: EvalResult, table_steps: int, plot_name: str) -> str:
    rows = result.rows
    splits = list(dict.fromkeys(r["split"] for r in rows))
    sources = list(dict.fromkeys(r["keypoints"] for r in rows))
    entries = list(dict.fromkeys((r["method"], r["scope"]) for r in rows))
    several = len({scope for _, scope in entries if scope != "none"}) > 1
    shown = table_step([r["steps"] for r in rows if r["method"] != "regression"], table_steps)
    m = result.model
    lines = [
        "# Results",
        "",
        "Written by `metahmr eval`; do not edit by hand (ARCHITECTURE §6).",
        "",
        f"- model: {m['name']} {m['version']}, {m['regressor']} x{m['backbone_width']} at "
        f"{m['crop_hw'][0]}x{m['crop_hw'][1]}",
        f"- body model: `{m['body_model']}`",
        f"- TTO scope: {m['tto_scope']}; tables at {shown} Adam steps after step 0 "
        "(early stop disabled)",
        "- samples: " + ", ".join(f"{s} {n}" for s, n in result.samples.items()),
        "- checkpoints: " + ", ".join(
            f"{k} `{v['checkpoint']}`" for k, v in result.methods.items()),
        "- TTO learning rates (step-0 SGD / Adam): " + ", ".join(
            f"{k} {v['sgd_lr']:g} / {v['adam_lr']:g}" for k, v in result.methods.items()
            if v["tto"]),
        *_timing_lines(result.methods),
        "",
        "MPJPE / PA-MPJPE / PVE in mm (lower is better), PCK@0.05 of the box size in % "
        "(higher is better).",
    ]
    for source in sources:
        lines += ["", f"## Keypoints: {source}", ""]
        header = ["method"] + [f"{s} {METRIC_LABELS[k]}" for s in splits for k in METRICS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, scope in entries:
            cells = [entry_label(method, scope, several)]
            for split in splits:
                row = _row_at(rows, split, source, method, scope, shown)
                for k in METRICS:
                    cells.append("-" if row is None else _fmt_metric(k, row[k]))
            lines.append("| " + " | ".join(cells) + " |")
    if result.real is not None:
        lines += [
            "", "## Real photographs", "",
            f"`{result.real['folder']}`: every method at {result.real['tto_steps']} TTO steps "
            "(early stop as the checkpoint's), BlazePose landmarks for every person; errors "
            "on the 12 limb joints as a fraction of the box height (median over people), "
            "PA-MPJPE of the limb joints on the Human3.6M frames.", "",
            result.real_md,
        ]  # fmt: skip
    if result.families is not None:
        lines += ["", "## Pose families", "", family_section(result.families)]
    lines += ["", "## Error against TTO steps", "", f"![steps vs error]({plot_name})", ""]
    return "\n".join(lines)


def _timing_lines(methods: dict[str, dict[str, Any]]) -> list[str]:
    timed = {k: v for k, v in methods.items() if "tto_ms_per_person" in v}
    if not timed:
        return []
    steps = next(iter(timed.values()))["tto_steps_timed"]
    return ["- TTO wall time per person, step 0 + " + f"{steps} Adam steps, batched as "
            "evaluated (this machine): " + ", ".join(
                f"{k} ({scope}) {ms:.1f} ms" for k, v in timed.items()
                for scope, ms in v["tto_ms_per_person"].items())]


def card_metrics(result: EvalResult, table_steps: int) -> str:
    """The report's tables for a model card's "Metrics" section (its headings one level
    down, so the section's own `## Metrics` heading contains them)."""
    text = markdown_report(result, table_steps, RESULTS_PNG)
    tables = text.split("\n## Error against TTO steps")[0].split("\n", 1)[1]  # no "# Results"
    return tables.replace("\n## ", "\n### ").strip() + (
        "\n\nThe error-against-steps curves are in `docs/results.md`."
    )


def _fmt_metric(name: str, value: float) -> str:
    return f"{100 * value:.1f}" if name == "pck" else f"{value:.1f}"


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """MPJPE and PA-MPJPE against steps, one column per split (regression: a flat line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r["split"] for r in rows)) or ["-"]
    fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 7), squeeze=False)
    styles = {"noisy_gt": "-", "detector": "--"}
    max_steps = max([r["steps"] for r in rows], default=1) or 1
    for col, split in enumerate(splits):
        for row_i, metric in enumerate(("mpjpe", "pa_mpjpe")):
            ax = axes[row_i][col]
            groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                if r["split"] == split:
                    groups[(r["method"], r["keypoints"], r["scope"])].append(r)
            first_source = next(iter(groups), ("", "", ""))[1]
            several = len({k[2] for k in groups if k[2] != "none"}) > 1
            for (method, source, scope), rs in sorted(groups.items()):
                if method == "regression" and source != first_source:
                    continue  # regression ignores the keypoints: one line is enough
                rs = sorted(rs, key=lambda r: r["steps"])
                xs = [r["steps"] for r in rs]
                ys = [r[metric] for r in rs]
                if method == "regression":
                    xs, ys = [0, max_steps], [ys[0], ys[0]]
                    label = "regression"
                else:
                    label = f"{method} ({source}{', ' + scope if several else ''})"
                ax.plot(xs, ys, styles.get(source, ":"), marker="o", ms=3, label=label)
            ax.set_title(f"{split}: {METRIC_LABELS[metric]}")
            ax.set_xlabel("Adam steps after step 0")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            if row_i == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
