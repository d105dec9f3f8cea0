"""Image backbones, written in-house (no torchvision): ResNet-18/34/50 with a width multiplier.

Every backbone maps a normalised crop (B, 3, H, W) to a stride-32 feature map
(`forward_features`) and, pooled, to a feature vector (`forward`). `build_backbone` is the
only factory; "timm:<name>" models are available when the optional `timm` extra is installed
(the paper's HRNet-W48 is "timm:hrnet_w48").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

# ImageNet statistics on RGB in [0, 1]: what ResNet-style backbones are conventionally fed.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESNET_LAYERS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# The frozen BlazePose landmark network as the backbone: it runs outside PyTorch (LiteRT, in
# the worker and in `training.features`); the regressor's "backbone" is an encoder over its
# output vector (`LandmarkEncoder`).
LANDMARK_BACKBONES = ("blazepose-lite", "blazepose-full", "blazepose-heavy")
BACKBONE_NAMES = (*_RESNET_LAYERS, *LANDMARK_BACKBONES, "timm:<model name>")


def is_landmark_backbone(name: str) -> bool:
    """Whether `name` is a BlazePose backbone (features computed outside PyTorch)."""
    return name in LANDMARK_BACKBONES


def landmark_variant(name: str) -> str:
    """"blazepose-full" -> "full"."""
    if not is_landmark_backbone(name):
        raise ValueError(f"{name!r} is not a BlazePose backbone; valid: {LANDMARK_BACKBONES}")
    return name.split("-", 1)[1]


def normalize_crops(crops: np.ndarray) -> np.ndarray:
    """uint8 RGB crops (B, H, W, 3) -> float32 network input (B, 3, H, W), ImageNet-normalised."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be (B, H, W, 3) RGB, got {crops.shape}")
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    x = (crops.astype(np.float32) / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _channels(base: int, width: float) -> int:
    # Multiples of 8 keep convolutions on the vectorised kernels' fast paths.
    return max(8, int(round(base * width / 8)) * 8)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 (the "ResNet v1.5" placement), as torchvision and CLIFF do.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """A ResNet trunk without the classifier; stride 32.

    block: "basic" or "bottleneck". layers: blocks per stage. width: channel multiplier.
    """

    stride = 32

    def __init__(self, block: str, layers: tuple[int, ...], width: float = 1.0) -> None:
        super().__init__()
        block_cls: type[BasicBlock] | type[Bottleneck] = (
            BasicBlock if block == "basic" else Bottleneck
        )
        stem = _channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = stem
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = _channels(64 * 2**i, width)
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(in_ch, planes, stride))
                in_ch = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which makes training from scratch (no pretrained weights exist here) stable.
        for m in self.modules():
            if isinstance(m, BasicBlock | Bottleneck):
                nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) globally average-pooled features."""
        return self.forward_features(x).mean(dim=(2, 3))


class TimmBackbone(nn.Module):
    """A timm model as a stride-32 trunk (optional extra: `pip install metahmr[timm]`)."""

    stride = 32

    def __init__(self, model_name: str) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise ValueError(
                f"backbone 'timm:{model_name}' needs the timm package; "
                "install it with `pip install timm` or use one of the in-house ResNets"
            ) from exc
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        self.out_channels = int(self.model.num_features)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


class LandmarkEncoder(nn.Module):
    """The trainable "backbone" of a BlazePose regressor: an MLP over BlazePose's per-person
    output vector (`model.blazepose.head_features`, (B, FEATURE_DIM)) -> (B, width) features.

    HMR's head is linear from its features to the pose (no nonlinearity between its fc
    layers: an image backbone supplies that), so landmarks need an encoder of their own. It
    runs once per person like an image backbone (ONNX in the worker); the TTO's "head" scope
    adapts the head over its output. While training, Gaussian noise of std `noise` is added
    to the input: BlazePose misses by a few percent of the box on real photos.

    blocks = 0 is the two-layer MLP of the first BlazePose models (their state dicts load
    as they are); blocks > 0 is a 2D-to-3D lifting network in the manner of Martinez et al.
    (2017): a first layer, then `blocks` residual blocks of two layers each, which lifts
    far better than two layers (see the model card).
    """

    stride = 1

    def __init__(self, dim_in: int, width: int = 512, noise: float = 0.0, blocks: int = 0) -> None:
        super().__init__()
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        self.out_channels = width
        self.noise = noise
        layers: list[nn.Module] = [nn.Linear(dim_in, width), nn.ReLU(inplace=True)]
        if blocks == 0:  # the first models' second layer (saved as `net.2`)
            layers += [nn.Linear(width, width), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.blocks = nn.ModuleList(_ResidualBlock(width) for _ in range(blocks))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, dim_in) -> (B, width)."""
        if self.training and self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        x = self.net(x)
        for block in self.blocks:
            x = block(x)
        return x


class _ResidualBlock(nn.Module):
    """x + MLP(x): two layers with LayerNorm and ReLU (both export to ONNX as plain ops)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(inplace=True),
            nn.Linear(width, width),
        )  # fmt: skip
        self.out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, width) -> (B, width)."""
        return self.out(x + self.mlp(x))


def build_backbone(
    name: str, width: float = 1.0, input_noise: float = 0.0, blocks: int = 0
) -> ResNet | TimmBackbone | LandmarkEncoder:
    """The backbone called `name` (see BACKBONE_NAMES), randomly initialised.

    width: channel multiplier for the in-house ResNets (must be 1.0 for timm models).
    input_noise: training-time noise std of a BlazePose encoder's input vector; width
        scales its 512 channels; blocks: its residual blocks (see `LandmarkEncoder`).
    """
    if is_landmark_backbone(name):
        from model.blazepose import FEATURE_DIM

        return LandmarkEncoder(FEATURE_DIM, _channels(512, width), input_noise, blocks)
    if name in _RESNET_LAYERS:
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width must be a positive number, got {width}")
        block, layers = _RESNET_LAYERS[name]
        return ResNet(block, layers, width)
    if name.startswith("timm:") and len(name) > len("timm:"):
        if width != 1.0:
            raise ValueError("width multipliers apply only to the in-house ResNets")
        return TimmBackbone(name[len("timm:") :])
    raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def feature_shape(backbone: nn.Module, crop_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(C, H/32, W/32) that `forward_features` returns for one crop of `crop_hw`."""
    stride = int(getattr(backbone, "stride", 32))
    out_channels = int(backbone.out_channels)  # type: ignore[arg-type]
    return out_channels, math.ceil(crop_hw[0] / stride), math.ceil(crop_hw[1] / stride)
