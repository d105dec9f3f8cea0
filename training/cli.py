"""`metahmr` sub-commands owned by this package (parsers only; imports are lazy).

- `metahmr data synth`: render a synthetic split into a folder (sharded, resumable).
- `metahmr data preview`: contact sheet of a data set with keypoints and the GT mesh.
- `metahmr train pretrain|meta|keypoints`: the training stages (DDP under torchrun).
- `metahmr eval`: the evaluation protocol; writes results.json/.md and the steps plot.
- `metahmr tune`: a checkpoint's test-time learning rates, chosen on a validation split.

Training writes no docs: `eval --model-card` and `tune` return the markdown sections they
made (`DocSection`), and the top-level CLI (`cli.py`) writes them.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SPLITS = ("train", "test", "shifted")


@dataclass(frozen=True)
class DocSection:
    """A section `## {name}` with `body` for the markdown file at `path`, which starts with
    `header` when it does not exist yet (None: the writer's default). A handler returns a
    list of these instead of an exit status; the top-level CLI writes them and exits 0."""

    path: Path
    name: str
    body: str
    header: str | None = None


def register(sub: Any, groups: dict[str, Any]) -> None:
    del groups  # `metahmr bench synth` is registered by bench/
    data = sub.add_parser("data", help="synthetic data: render splits, preview data sets")
    data_sub = data.add_subparsers(dest="data", metavar="WHAT", required=True)

    synth = data_sub.add_parser("synth", help="render a synthetic split (SPIN/CLIFF .npz + JPEG)")
    synth.add_argument("--split", choices=SPLITS, required=True)
    synth.add_argument("--num", type=int, required=True, help="number of images")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=2, help="processes (0 = in-process)")
    synth.add_argument("--shard-size", type=int, default=500, help="images per annotation file")
    synth.add_argument("--long-side", type=int, default=640, help="image long side in pixels")
    synth.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    synth.set_defaults(func=_synth)

    feats = data_sub.add_parser(
        "features", help="cache BlazePose's outputs for a data set (the heads train on them)"
    )
    feats.add_argument("--data", nargs="+", required=True, type=Path, help="data set folders")
    feats.add_argument("--out", required=True, type=Path, help="cache folder")
    feats.add_argument("--views", type=int, default=1, help="augmented views per person")
    feats.add_argument("--no-augment", action="store_true", help="view 0 as labelled (eval)")
    feats.add_argument("--variant", choices=("lite", "full", "heavy"), default="full")
    feats.add_argument("--seed", type=int, default=0)
    feats.add_argument("--workers", type=int, default=2, help="processes")
    feats.add_argument("--limit", type=int, help="the first N people only")
    feats.set_defaults(func=_features)

    preview = data_sub.add_parser("preview", help="contact sheet with keypoints and GT mesh")
    preview.add_argument("sources", nargs="+", type=Path, help="data set folders or .npz files")
    preview.add_argument("--out", type=Path, required=True, help="output PNG")
    preview.add_argument("--num", type=int, default=12, help="tiles in total")
    preview.add_argument("--cols", type=int, default=4)
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--no-mesh", action="store_true", help="keypoints only")
    preview.set_defaults(func=_preview)

    _register_train(sub)
    _register_eval(sub)
    _register_tune(sub)


def _synth(args: argparse.Namespace) -> int:
    import logging

    from training.synth.writer import SynthJob, synthesize

    job = SynthJob(
        split=args.split, num=args.num, out=args.out, seed=args.seed, workers=args.workers,
        shard_size=args.shard_size, long_side=args.long_side,
    )
    summary = synthesize(job, progress=not args.no_progress)
    logging.getLogger("metahmr.data").info(
        "%s: %d images written, %d already there, %.1f images/s -> %s",
        args.split, summary.written, summary.skipped, summary.images_per_second, args.out,
    )
    return 0


def _features(args: argparse.Namespace) -> int:
    from training.features import cache_features

    out = cache_features(
        [str(d) for d in args.data], args.out, views=args.views, variant=args.variant,
        seed=args.seed, augment=not args.no_augment, workers=args.workers, limit=args.limit,
    )  # fmt: skip
    logging.getLogger("metahmr.data").info("feature cache: %s", out)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from training.synth.preview import make_contact_sheet

    sheet = make_contact_sheet(args.sources, num=args.num, cols=args.cols, mesh=not args.no_mesh, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    return 0


# --- training and evaluation ----------------------------------------------------------------

SIZES = ("tiny", "cpu", "paper")
METHOD_FLAGS = (("pretrained", ("regression", "eft")), ("meta", ("meta",)), ("meta_dual", ("meta-dual",)))


def _register_train(sub: Any) -> None:
    train = sub.add_parser("train", help="training stages: pretrain, meta, keypoints")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)

    pre = stages.add_parser(
        "pretrain", help="supervised pre-training of f_w and f_u (L_train)",
        description="Pre-train f_w and an initial f_u with L_train. Multi-GPU: "
        "torchrun --nproc_per_node N -m cli train pretrain ...",
    )
    _data_args(pre)
    pre.add_argument("--size", choices=SIZES, default="cpu",
                     help="model size preset: tiny (tests), cpu (resnet18 x0.5), paper (resnet50)")
    pre.add_argument("--backbone", help="override the preset's backbone (e.g. resnet34)")
    pre.add_argument("--width", type=float, help="override the backbone width multiplier")
    pre.add_argument("--input-noise", type=float,
                     help="blazepose-* backbones: std of the noise added to BlazePose's outputs "
                     "while training")
    pre.add_argument("--encoder-blocks", type=int, default=0,
                     help="blazepose-* backbones: residual blocks of the encoder over BlazePose's "
                     "outputs (0: a two-layer MLP)")
    pre.add_argument("--hidden", type=int, help="override the head width")
    pre.add_argument("--crop", type=_hw, help="network crop HxW, e.g. 128x96 (default 256x192)")
    pre.add_argument("--scope", choices=("head", "full"), default="head",
                     help="TTO scope recorded in the checkpoint (meta-training's default)")
    pre.add_argument("--no-aux", action="store_true", help="do not train the auxiliary net f_u")
    pre.add_argument("--dropout", type=float, help="override the head's dropout (default 0.5)")
    pre.add_argument("--init-backbone", type=Path,
                     help="checkpoint whose keypoint detector's backbone initialises f_w and f_u "
                     "(pose pre-training; same backbone name and width)")
    _loop_args(pre, lr=1e-4, warmup=500, batch_size=64)
    pre.set_defaults(func=_pretrain)

    meta = stages.add_parser(
        "meta", help="meta-training from a pre-trained checkpoint (inner TTO step, dual nets)",
    )
    meta.add_argument("--init", required=True, type=Path, help="pre-trained checkpoint (.pt)")
    _data_args(meta)
    meta.add_argument("--inner-lr", type=float, default=1e-5, help="alpha of the inner step")
    meta.add_argument("--second-order", action="store_true",
                      help="differentiate through the inner gradient (default: first order)")
    meta.add_argument("--task", choices=("sample", "batch"), default="sample",
                      help="inner step per sample (vmap) or the batch as one task")
    meta.add_argument("--scope", choices=("head", "full"), default="head")
    meta.add_argument("--no-aux", action="store_true",
                      help="2D-only inner step, no f_u (the 'meta' ablation)")
    meta.add_argument("--aux-lr", type=float, help="learning rate of f_u (default: --lr)")
    meta.add_argument("--keypoint-noise", action="store_true",
                      help="inner step on ground-truth keypoints with test-time noise")
    _loop_args(meta, lr=1e-5, warmup=100, batch_size=32)
    meta.set_defaults(func=_meta)

    kp = stages.add_parser("keypoints", help="train the built-in heatmap keypoint detector")
    kp.add_argument("--checkpoint", required=True, type=Path,
                    help="model checkpoint whose detector slot receives the detector")
    _data_args(kp)
    kp.add_argument("--save-to", type=Path, help="updated checkpoint (default: --checkpoint)")
    kp.add_argument("--backbone", default="resnet18")
    kp.add_argument("--width", type=float, default=1.0)
    kp.add_argument("--deconv", type=int, default=256, help="channels of the deconvolutions")
    kp.add_argument("--crop", type=_hw, help="detector crop HxW (default 256x192)")
    kp.add_argument("--sigma", type=float, default=2.0, help="heatmap Gaussian, in cells")
    _loop_args(kp, lr=1e-3, warmup=200, batch_size=64)
    kp.set_defaults(func=_keypoints)


def _data_args(p: Any) -> None:
    p.add_argument("--data", nargs="+", required=True, type=Path,
                   help="data set folders or .npz files (synthetic or SPIN/CLIFF layout)")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log)")


def _loop_args(p: Any, lr: float, warmup: int, batch_size: int) -> None:
    g = p.add_argument_group("optimisation and loop")
    g.add_argument("--vertex-weight", type=float,
                   help="weight of the vertex (L1) terms (default 0.5); 0 poses only the "
                   "joints and keypoints, about 15x faster a step on a CPU")
    g.add_argument("--betas-weight", type=float,
                   help="weight of the betas (MSE) term (default 0.001, the reference's, which "
                   "leans on the vertex term to teach the shape: raise it with --vertex-weight 0)")
    g.add_argument("--steps", type=int, default=100_000)
    g.add_argument("--epochs", type=float, help="overrides --steps")
    g.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup", type=int, default=warmup, help="linear warm-up steps")
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    g.add_argument("--grad-clip", type=float, default=1.0, help="0 = off")
    g.add_argument("--workers", type=int, default=4, help="DataLoader processes")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--checkpoint-every", type=int, default=1000)
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x192, got {text!r}") from exc
    return h, w


def _optim(args: argparse.Namespace) -> Any:
    from training.config import OptimConfig

    return OptimConfig(
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
        schedule=args.schedule, grad_clip=args.grad_clip or None,
    )


def _loop(args: argparse.Namespace) -> Any:
    import torch

    from training.config import LoopConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    return LoopConfig(
        steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=not args.no_amp, seed=args.seed, augment=not args.no_augment,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )


def _regressor(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from model.config import BackboneConfig, RegressorConfig
    from training.config import cpu_regressor, paper_regressor

    presets = {"tiny": RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64),
               "cpu": cpu_regressor(), "paper": paper_regressor()}
    cfg = presets[args.size]
    backbone = BackboneConfig(
        args.backbone or cfg.backbone.name, args.width or cfg.backbone.width,
        getattr(args, "input_noise", None) or 0.0, getattr(args, "encoder_blocks", 0) or 0,
    )  # fmt: skip
    cfg = replace(cfg, backbone=backbone, hidden=args.hidden or cfg.hidden)
    if getattr(args, "dropout", None) is not None:
        cfg = replace(cfg, dropout=args.dropout)
    return replace(cfg, crop_hw=args.crop) if args.crop else cfg


def _loss_weights(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from model.config import LossWeights

    weights = LossWeights()
    if args.vertex_weight is not None:
        weights = replace(weights, vertices=args.vertex_weight)
    if args.betas_weight is not None:
        weights = replace(weights, betas=args.betas_weight)
    return weights


def _pretrain(args: argparse.Namespace) -> int:
    from model.config import TTOConfig
    from training.config import PretrainConfig
    from training.pretrain import run_pretrain

    config = PretrainConfig(
        data=tuple(str(d) for d in args.data), out_dir=str(args.out), regressor=_regressor(args),
        tto=TTOConfig(scope=args.scope), optim=_optim(args), loop=_loop(args),
        loss_weights=_loss_weights(args),
        train_aux=not args.no_aux,
        init_backbone=None if args.init_backbone is None else str(args.init_backbone),
    )
    result = run_pretrain(config, resume=args.resume)
    logging.getLogger("metahmr.train").info("pre-trained model: %s", result.checkpoint)
    return 0


def _meta(args: argparse.Namespace) -> int:
    from training.config import MetaConfig
    from training.meta import run_meta

    config = MetaConfig(
        init_checkpoint=str(args.init), data=tuple(str(d) for d in args.data),
        out_dir=str(args.out), inner_lr=args.inner_lr, first_order=not args.second_order,
        task=args.task, scope=args.scope, use_aux=not args.no_aux, aux_lr=args.aux_lr,
        keypoint_noise=args.keypoint_noise, optim=_optim(args), loop=_loop(args),
        loss_weights=_loss_weights(args),
    )
    result = run_meta(config, resume=args.resume)
    logging.getLogger("metahmr.train").info("meta-trained model: %s", result.checkpoint)
    return 0


def _keypoints(args: argparse.Namespace) -> int:
    from model.config import CROP_HW, BackboneConfig, DetectorConfig
    from training.config import KeypointTrainConfig
    from training.keypoints_train import run_keypoints

    detector = DetectorConfig(
        backbone=BackboneConfig(args.backbone, args.width),
        deconv_channels=(args.deconv,) * 3, crop_hw=args.crop or CROP_HW,
    )
    config = KeypointTrainConfig(
        checkpoint=str(args.checkpoint), data=tuple(str(d) for d in args.data),
        out_dir=str(args.out), out=None if args.save_to is None else str(args.save_to),
        detector=detector, sigma=args.sigma, optim=_optim(args), loop=_loop(args),
    )
    run_keypoints(config, resume=args.resume)
    return 0


def _register_eval(sub: Any) -> None:
    ev = sub.add_parser(
        "eval", help="evaluate methods x splits x keypoints; writes docs/results.{json,md}",
        description="The evaluation protocol (ARCHITECTURE section 6): regression, eft, meta "
        "and meta-dual on the test and shifted splits, against TTO steps.",
    )
    ev.add_argument("--pretrained", type=Path, help="pre-trained checkpoint (regression, eft)")
    ev.add_argument("--meta", type=Path, help="meta-trained checkpoint without f_u (meta)")
    ev.add_argument("--meta-dual", type=Path, help="meta-trained checkpoint with f_u (meta-dual)")
    ev.add_argument("--test", type=Path, help="in-domain test split folder")
    ev.add_argument("--shifted", type=Path, help="domain-shifted split folder")
    ev.add_argument("--out-dir", type=Path, default=Path("docs"), help="where results go")
    ev.add_argument("--steps", default=",".join(str(k) for k in range(31)),
                    help="comma-separated Adam step counts for the curve (default 0..30)")
    ev.add_argument("--table-steps", type=int, default=14)
    ev.add_argument("--keypoints", default="noisy_gt,detector", help="comma-separated sources")
    ev.add_argument("--scope", choices=("head", "full", "head,full"),
                    help="TTO scope of every method (default: the meta-dual checkpoint's); "
                    "head,full compares both")
    ev.add_argument("--detector-checkpoint", type=Path, help="default: first with a detector")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, help="at most this many samples per split")
    ev.add_argument("--real", type=Path,
                    help="real-photo folder (default: $METAHMR_REALDATA, else ../shared/realdata; "
                    "skipped with a note when absent)")
    ev.add_argument("--no-real", action="store_true", help="skip the real-photo split")
    ev.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--model-card", type=Path,
                    help="also write the tables into this model card's 'Metrics' section")
    ev.add_argument("--motion", action="store_true",
                    help="only the motion split (training.evaluate_motion): independent vs "
                    "smoothed fits on synthetic clips, into the 'motion' part of results.json "
                    "and its results.md section (checkpoint: --meta-dual, default the shipped one)")
    ev.add_argument("--motion-clips", type=int, default=4, help="motion split: clips")
    ev.add_argument("--motion-frames", type=int, default=90, help="motion split: frames per clip")
    ev.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int | list[DocSection]:
    import torch

    from training.config import EvalConfig
    from training.evaluate import evaluate, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.motion:
        return _eval_motion(args)
    checkpoints = {m: str(getattr(args, flag)) for flag, methods in METHOD_FLAGS
                   for m in methods if getattr(args, flag) is not None}
    splits = {s: str(getattr(args, s)) for s in ("test", "shifted") if getattr(args, s) is not None}
    if not checkpoints or not splits:
        logging.getLogger("metahmr.eval").error(
            "give at least one checkpoint (--pretrained/--meta/--meta-dual) and one split "
            "(--test/--shifted)"
        )
        return 2
    config = EvalConfig(
        checkpoints=checkpoints, splits=splits, out_dir=str(args.out_dir),
        keypoints=tuple(k for k in args.keypoints.split(",") if k),
        steps=tuple(int(s) for s in args.steps.split(",") if s), table_steps=args.table_steps,
        scope=args.scope,
        detector_checkpoint=None if args.detector_checkpoint is None else str(args.detector_checkpoint),
        batch_size=args.batch_size, workers=args.workers, device=args.device, seed=args.seed,
        limit=args.limit, progress=not args.no_progress, real=_real_folder(args),
    )
    result = evaluate(config)
    for path in write_report(result, config.out_dir, config.table_steps):
        logging.getLogger("metahmr.eval").info("wrote %s", path)
    if args.model_card is not None:
        from training.evaluate import card_metrics

        return [DocSection(args.model_card, "Metrics", card_metrics(result, config.table_steps))]
    return 0


def _eval_motion(args: argparse.Namespace) -> list[DocSection]:
    import json

    from training.evaluate import RESULTS_JSON, RESULTS_MD
    from training.evaluate_motion import (
        SECTION,
        MotionEvalConfig,
        evaluate_motion,
        markdown_section,
    )

    config = MotionEvalConfig(clips=args.motion_clips, frames=args.motion_frames, seed=args.seed)
    if args.meta_dual is not None:
        config = replace(config, checkpoint=str(args.meta_dual))
    payload = evaluate_motion(config)
    path = args.out_dir / RESULTS_JSON
    results = json.loads(path.read_text()) if path.exists() else {}
    results["motion"] = payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    logging.getLogger("metahmr.eval").info("wrote the motion split into %s", path)
    return [DocSection(args.out_dir / RESULTS_MD, SECTION, markdown_section(payload))]


def _real_folder(args: argparse.Namespace) -> str | None:
    from training.realdata import default_realdata_path, find_realdata

    if args.no_real:
        return None
    found = find_realdata(args.real)
    if found is None:
        where = args.real or default_realdata_path()
        logging.getLogger("metahmr.eval").warning(
            "real-photo split skipped: no annotations.json under %s (pass --real DIR or set "
            "METAHMR_REALDATA)", where)  # fmt: skip
        return None
    return str(found)


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (ValueError names the bad one)."""
    return tuple(float(v) for v in text.split(",") if v)


def _register_tune(sub: Any) -> None:
    from training.tune import DEFAULT_BETA1S, DEFAULT_LRS, TUNABLE

    tune = sub.add_parser(
        "tune", help="choose a checkpoint's TTO learning rates on a validation split",
        description="Run one method's TTO on a validation split for each candidate learning "
        "rate and Adam beta1, keep the pair with the lowest PA-MPJPE, write it into the "
        "checkpoint and a section of the tuning report.",
    )
    tune.add_argument("--checkpoint", required=True, type=Path)
    tune.add_argument("--method", required=True, choices=TUNABLE,
                      help="how the checkpoint is used (eft: a pre-trained one)")
    tune.add_argument("--val", required=True, type=Path, help="validation split folder")
    tune.add_argument("--lrs", default=",".join(f"{v:g}" for v in DEFAULT_LRS),
                      help="comma-separated candidate learning rates")
    tune.add_argument("--beta1s", default=",".join(f"{v:g}" for v in DEFAULT_BETA1S),
                      help="comma-separated candidate Adam momenta (beta1), each tried with "
                      "each rate")
    tune.add_argument("--steps", type=int, default=14, help="Adam steps the error is taken at")
    tune.add_argument("--limit", type=int, default=256, help="validation samples (0 = all)")
    tune.add_argument("--out", type=Path, help="tuned checkpoint (default: in place)")
    tune.add_argument("--head-subset", choices=("all", "output"),
                      help="head weights the TTO adapts (default: the checkpoint's own)")
    tune.add_argument("--report", type=Path, default=Path("docs/tuning.md"))
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument("--workers", type=int, default=2)
    tune.add_argument("--device", default="auto")
    tune.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    tune.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int | list[DocSection]:
    import torch

    from training.tune import REPORT_HEADER, TuneConfig, report_name, report_section, run_tune

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TuneConfig(
            checkpoint=str(args.checkpoint), method=args.method, val=str(args.val),
            lrs=_floats(args.lrs), beta1s=_floats(args.beta1s), steps=args.steps,
            limit=args.limit or None, batch_size=args.batch_size, workers=args.workers,
            device=args.device, head_subset=args.head_subset,
        )
    except ValueError as exc:
        logging.getLogger("metahmr.tune").error("%s", exc)
        return 2
    result = run_tune(config, None if args.out is None else str(args.out))
    return [DocSection(args.report, report_name(config), report_section(config, result), REPORT_HEADER)]
