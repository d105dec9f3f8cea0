"""Typed configuration of the training stages: pre-training, meta-training, the keypoint
detector and the evaluation (ARCHITECTURE §3, §6).

Plain frozen dataclasses, built explicitly by the CLI (or a test) and passed in. They turn
into plain dicts with `model.config.to_dict` (what the training-state file and the
checkpoint's ``extra`` store) and back with `model.config.from_dict`.

Two named sizes ship with the code (`cpu_regressor`, `paper_regressor`): the CPU-sized model
that trains in hours on a laptop-class CPU, and the paper-sized resnet50 at 256x192.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import (
    TTO_SCOPES,
    BackboneConfig,
    DetectorConfig,
    LossWeights,
    RegressorConfig,
    TTOConfig,
)

SCHEDULES = ("cosine", "constant")
TASKS = ("sample", "batch")
METHODS = ("regression", "eft", "meta", "meta-dual")
KEYPOINT_SOURCES = ("noisy_gt", "detector")
EVAL_SPLITS = ("test", "shifted")
# The step counts the curve is recorded at by default (the reference evaluation uses 14).
DEFAULT_EVAL_STEPS = (0, 1, 2, 4, 7, 10, 14, 20, 30)


def cpu_regressor() -> RegressorConfig:
    """The CPU-sized model: a half-width resnet18 (a quarter of its compute), 256x192."""
    return RegressorConfig(BackboneConfig("resnet18", 0.5), hidden=512)


def paper_regressor() -> RegressorConfig:
    """The paper-sized model: resnet50 at 256x192 with the HMR/CLIFF 1024-wide head."""
    return RegressorConfig(BackboneConfig("resnet50", 1.0), hidden=1024)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up then a cosine decay (or a constant rate).

    lr: peak learning rate. min_lr_ratio: the cosine ends at lr * min_lr_ratio.
    grad_clip: max global gradient norm (None = no clipping).
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {SCHEDULES}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")


@dataclass(frozen=True)
class LoopConfig:
    """What every training loop shares.

    steps: optimizer steps in total (epochs, when given, overrides it: epochs * batches per
        epoch). batch_size: per process (DDP multiplies it by the world size).
    workers: DataLoader processes. device: "auto" (CUDA when available), "cpu", "cuda".
    amp: bfloat16 autocast of the networks on CUDA (ignored on CPU; the body model and the
        losses always run in float32).
    augment: training augmentation (training.augment.AugmentConfig defaults).
    log_every / checkpoint_every: in steps; a checkpoint is also written at the end.
    """

    steps: int = 100_000
    epochs: float | None = None
    batch_size: int = 64
    workers: int = 4
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    augment: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 and self.epochs is None:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised training of f_w and an initial f_u with L_train.

    data: data set folders / .npz files (synthetic or SPIN layout). tto: the TTO settings
    recorded in the checkpoint (its scope is what meta-training will use by default).
    train_aux: also train f_u (the dual-network methods need one).
    init_backbone: a checkpoint whose keypoint detector's backbone initialises the backbones
        of f_w and f_u (pose pre-training, as CLIFF starts from a pose-estimation HRNet;
        the architectures must match). None = random initialisation.
    """

    data: tuple[str, ...]
    out_dir: str
    regressor: RegressorConfig = field(default_factory=cpu_regressor)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    tto: TTOConfig = field(default_factory=TTOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    train_aux: bool = True
    init_backbone: str | None = None


@dataclass(frozen=True)
class MetaConfig:
    """Meta-training from a pre-trained checkpoint (ARCHITECTURE §3).

    inner_lr: alpha of the inner step w' = w - alpha grad L_test-u; it becomes the test-time
        step-0 SGD rate recorded in the checkpoint (the step the meta-parameters were
        trained for is the step they get at test time).
    first_order: treat the inner gradient as a constant (default); False differentiates
        through it (second-order MAML).
    task: "sample" (each sample its own inner step, under vmap) or "batch" (the batch is
        one task, one inner step).
    scope: which weights the inner step adapts ("head" | "full"); recorded in the
        checkpoint, and the test-time TTO must use the same.
    use_aux: L_test-u with agreement to f_u (the full method); False = 2D-only inner step
        and no f_u update (the "meta" ablation).
    aux_lr: learning rate of f_u (None = optim.lr).
    keypoint_noise: the inner step fits ground-truth 2D keypoints with the test-time
        detector-like noise (training.keypoint_noise) instead of clean ones.
    """

    init_checkpoint: str
    data: tuple[str, ...]
    out_dir: str
    inner_lr: float = 1e-5
    first_order: bool = True
    task: str = "sample"
    scope: str = "head"
    use_aux: bool = True
    aux_lr: float | None = None
    keypoint_noise: bool = False
    loss_weights: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=100))
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {TASKS}")
        if self.scope not in TTO_SCOPES:
            raise ValueError(f"unknown TTO scope {self.scope!r}; valid: {TTO_SCOPES}")


@dataclass(frozen=True)
class KeypointTrainConfig:
    """The built-in heatmap detector, trained on the same crops (COCO-17 targets).

    checkpoint: the model checkpoint whose detector slot receives the result; out: where
    the updated checkpoint goes (None = overwrite `checkpoint`). sigma: heatmap Gaussian,
    in heatmap cells.
    """

    checkpoint: str
    data: tuple[str, ...]
    out_dir: str
    out: str | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    sigma: float = 2.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=200))
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol (ARCHITECTURE §6).

    checkpoints: per method, the checkpoint to evaluate ("regression" and "eft" take the
        pre-trained one, "meta" the 2D-only meta-trained one, "meta-dual" the full method).
    splits: split name -> data set folder (never used for tuning anything).
    steps: Adam step counts after step 0 the curve is recorded at.
    scope: the TTO scope for every method (None = the meta-dual checkpoint's, else the
        first given checkpoint's), so all methods adapt the same weights; "head,full"
        runs every TTO method in both (the scope comparison; rows carry their scope).
    detector_checkpoint: where the keypoint detector comes from (None = the first
        checkpoint that has one).
    real: the real-photo folder (`training.realdata`), None = no real split; real_steps:
        the TTO steps every method runs there (the reference 14).
    """

    checkpoints: dict[str, str]
    splits: dict[str, str]
    out_dir: str = "docs"
    keypoints: tuple[str, ...] = KEYPOINT_SOURCES
    steps: tuple[int, ...] = DEFAULT_EVAL_STEPS
    table_steps: int = 14
    scope: str | None = None
    detector_checkpoint: str | None = None
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    limit: int | None = None
    progress: bool = True
    real: str | None = None
    real_steps: int = 14

    def __post_init__(self) -> None:
        unknown = set(self.checkpoints) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; valid: {METHODS}")
        bad = set(self.keypoints) - set(KEYPOINT_SOURCES)
        if bad:
            raise ValueError(f"unknown keypoint sources {sorted(bad)}; valid: {KEYPOINT_SOURCES}")
        if not self.steps or min(self.steps) < 0:
            raise ValueError(f"steps must be a non-empty list of counts >= 0, got {self.steps}")
        if self.scope is not None and (
            not self.scope or set(self.scope.split(",")) - set(TTO_SCOPES)
        ):
            raise ValueError(f"unknown TTO scope in {self.scope!r}; valid: {TTO_SCOPES}")
