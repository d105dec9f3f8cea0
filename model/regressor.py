"""The CLIFF-style regressor: backbone features + bbox info -> SMPL parameters + crop camera.

The module is split into `backbone` (image -> pooled features) and `head` (features, bbox
info -> parameters) so the worker can run the backbone once in ONNX Runtime and the TTO in
the "head" scope can adapt the head alone. f_w and f_u are two instances of `Regressor`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.backbones import build_backbone
from model.config import RegressorConfig
from model.geometry import rot6d_to_rotmat, rotmat_to_rot6d
from model.linear_tape import active_tape
from model.outputs import RegressorOutput, SMPLParams

NUM_JOINTS = 24
NUM_BETAS = 10
POSE_DIM = NUM_JOINTS * 6
CAM_DIM = 3
BBOX_INFO_DIM = 3
STATE_DIM = POSE_DIM + NUM_BETAS + CAM_DIM
# The decoder layer that emits pose, shape and camera: the "output" subset of the head.
OUTPUT_LAYERS = ("dec",)
# fc1's half over [features, bbox_info]: a linear map of an input that is fixed during a fit.
FEATURE_LAYER = "fc1_feat"
# HMR's three decoders (pose, shape, camera), as earlier checkpoints store them; loading
# one concatenates them into `dec` (the same linear map, row blocks in this order).
LEGACY_DECODERS = ("decpose", "decshape", "deccam")

# Mean crop camera (s, tx, ty): a ~1.7 m person filling ~80% of the box height, centred.
MEAN_CROP_CAM = (0.9, 0.0, 0.0)


def mean_rotations() -> Tensor:
    """The mean pose as rotations (24, 3, 3): an upright person facing the camera.

    The body frame has y up and faces +z, the camera frame y down and z forward, so the
    root turns by pi about x (diag(1, -1, -1)); every other joint is at rest (identity).
    """
    rot = torch.eye(3).repeat(NUM_JOINTS, 1, 1)
    rot[0] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    return rot


class RegressorHead(nn.Module):
    """HMR/CLIFF iterative regressor over pooled features.

    feature_dim: size of the backbone's pooled features. hidden: fc width. n_iter: refinement
    iterations. dropout: after each fc layer (training only).
    Starts from mean parameters (buffers) and adds a residual each iteration.
    """

    init_pose: Tensor  # (1, 144) mean pose, 6D
    init_betas: Tensor  # (1, 10)
    init_cam: Tensor  # (1, 3) mean crop camera

    def __init__(
        self, feature_dim: int, hidden: int = 1024, n_iter: int = 3, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.feature_dim = feature_dim
        self.n_iter = n_iter
        state_dim = STATE_DIM
        # HMR's fc1 over [features, bbox_info, pose, betas, cam], split in two layers (the sum
        # of the two is exactly the one layer over the concatenation): the feature part is
        # constant while only the decoders adapt (TTO "output" subset), so it is computed
        # once per fit (`feature_term`) instead of in every iteration of every step.
        self.fc1_feat = nn.Linear(feature_dim + BBOX_INFO_DIM, hidden)
        self.fc1_state = nn.Linear(state_dim, hidden, bias=False)
        _init_split_linear(self.fc1_feat, self.fc1_state)
        # HMR's two fc layers have no nonlinearity between them; kept as in the reference.
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(dropout)
        # HMR's pose, shape and camera decoders as one layer: the state (pose, betas, cam)
        # gets one residual per iteration from one matrix product instead of three (every
        # row is the same function of x; Adam, elementwise, takes the same steps).
        self.dec = nn.Linear(hidden, state_dim)
        # Small decoder weights (per block, as three layers would have): the first
        # prediction stays close to the mean parameters.
        start = 0
        for size in (POSE_DIM, NUM_BETAS, CAM_DIM):
            nn.init.xavier_uniform_(self.dec.weight[start : start + size], gain=0.01)
            start += size
        nn.init.zeros_(self.dec.bias)
        self.register_buffer("init_pose", rotmat_to_rot6d(mean_rotations()).reshape(1, POSE_DIM))
        self.register_buffer("init_betas", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.tensor([MEAN_CROP_CAM]))
        self._register_load_state_dict_pre_hook(_fuse_legacy_decoders)

    def forward(
        self, features: Tensor, bbox_info: Tensor, feature_term: Tensor | None = None
    ) -> RegressorOutput:
        """features: (B, F) pooled backbone features. bbox_info: (B, 3) CLIFF bbox info.

        feature_term: (B, hidden) `self.feature_term(features, bbox_info)` when already
        computed (the TTO caches it while fc1_feat is frozen); None computes it.
        """
        pose6d, betas, cam = self.forward_raw(features, bbox_info, feature_term)
        return raw_to_output(pose6d, betas, cam)

    def feature_input(self, features: Tensor, bbox_info: Tensor) -> Tensor:
        """What fc1's feature half reads: [features, bbox_info] (B, F + 3)."""
        return torch.cat([features, bbox_info], dim=1)

    def feature_term(self, features: Tensor, bbox_info: Tensor) -> Tensor:
        """fc1's contribution from (features (B, F), bbox_info (B, 3)), bias included: (B, hidden)."""
        return linear(self.fc1_feat, self.feature_input(features, bbox_info))

    def forward_raw(
        self, features: Tensor, bbox_info: Tensor, feature_term: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (pose6d (B, 144), betas (B, 10), crop_cam (B, 3))."""
        base = self.feature_term(features, bbox_info) if feature_term is None else feature_term
        init = torch.cat([self.init_pose, self.init_betas, self.init_cam], dim=1)
        state = init.expand(base.shape[0], -1)
        for _ in range(self.n_iter):
            x = self.drop2(linear(self.fc2, self.drop1(base + linear(self.fc1_state, state))))
            state = linear(self.dec, x) + state
        pose, betas, cam = state.split((POSE_DIM, NUM_BETAS, CAM_DIM), dim=1)
        return pose, betas, cam

    def output_parameter_names(self) -> tuple[str, ...]:
        """Names (relative to the head) of the decoder layer's parameters."""
        return tuple(n for n, _ in self.named_parameters() if n.split(".")[0] in OUTPUT_LAYERS)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``; inside a `torch.compile`d graph with one row of x, as a broadcast product.

    The TTO compiles each step of one person (`model.tto_adam`). A one-row product there is
    a matrix-vector library call per layer and iteration, and its weight gradient one outer
    product per iteration written out before the optimizer reads it. As a broadcast product
    inductor fuses the forward into its neighbouring loops and the gradient (the iterations'
    outer products) into the update's own loop over the weight, one pass instead of several
    (a compiled Adam step of the shipped head, measured alone here: 1.0 ms before, 0.5-0.8
    after). The same maths, float rounding apart; eager, and for more rows, the layer itself,
    recorded when a `model.linear_tape.LinearTape` is recording (an eager TTO step's weight
    gradients, one product per layer).
    """
    if torch.compiler.is_compiling():
        if x.shape[0] == 1:
            y = (x.unsqueeze(1) * layer.weight).sum(-1)
            return y if layer.bias is None else y + layer.bias
        return layer(x)
    tape = active_tape()
    taped = None if tape is None else tape.apply(layer, x)
    return layer(x) if taped is None else taped


def _fuse_legacy_decoders(state_dict: dict[str, Tensor], prefix: str, *_args: object) -> None:
    """Load hook: a state dict with HMR's three decoders gets them as the one `dec` layer."""
    keys = [f"{prefix}{name}.weight" for name in LEGACY_DECODERS]
    if not all(k in state_dict for k in keys):
        return
    for part in ("weight", "bias"):
        blocks = [state_dict.pop(f"{prefix}{name}.{part}") for name in LEGACY_DECODERS]
        state_dict[f"{prefix}dec.{part}"] = torch.cat(blocks, dim=0)


def _init_split_linear(feat: nn.Linear, state: nn.Linear) -> None:
    """nn.Linear's default init for the one layer the two halves stand for (fan-in of both)."""
    bound = 1.0 / math.sqrt(feat.in_features + state.in_features)
    for w in (feat.weight, state.weight):
        nn.init.uniform_(w, -bound, bound)
    if feat.bias is not None:
        nn.init.uniform_(feat.bias, -bound, bound)


def raw_to_output(pose6d: Tensor, betas: Tensor, crop_cam: Tensor) -> RegressorOutput:
    """(B, 144) 6D pose, (B, 10) betas, (B, 3) camera -> typed output with rotation matrices."""
    rotmat = rot6d_to_rotmat(pose6d.reshape(-1, NUM_JOINTS, 6))
    return RegressorOutput(SMPLParams(rotmat[:, :1], rotmat[:, 1:], betas), crop_cam)


class Regressor(nn.Module):
    """f_w / f_u: `backbone` (image -> features) followed by `head`."""

    def __init__(self, config: RegressorConfig | None = None) -> None:
        super().__init__()
        self.config = config or RegressorConfig()
        cfg = self.config
        b = cfg.backbone
        self.backbone = build_backbone(b.name, b.width, b.input_noise, b.blocks)
        feature_dim = int(self.backbone.out_channels)
        self.head = RegressorHead(feature_dim, cfg.hidden, cfg.n_iter, cfg.dropout)

    @property
    def feature_dim(self) -> int:
        return self.head.feature_dim

    def forward(self, images: Tensor, bbox_info: Tensor) -> RegressorOutput:
        """images: (B, 3, H, W) normalised crops. bbox_info: (B, 3)."""
        return self.head(self.backbone(images), bbox_info)


def build_regressor(config: RegressorConfig | None = None, seed: int | None = None) -> Regressor:
    """A randomly initialised regressor; `seed` makes the initialisation reproducible."""
    if seed is None:
        return Regressor(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Regressor(config)
