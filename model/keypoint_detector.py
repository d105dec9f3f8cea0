"""The built-in 2D keypoint detector and a loader for external SimCC (RTMPose) ONNX models.

- `KeypointDetector`: a SimpleBaseline-style network (Xiao et al. 2018) — an in-house
  backbone, three stride-2 transposed convolutions, a 1x1 convolution to one heatmap per
  COCO-17 keypoint at a quarter of the crop resolution (64x48 for 256x192).
- `decode_heatmaps`: arg-max plus a quarter-pixel shift toward the higher neighbour;
  `flip_average` merges the heatmaps of a crop and its mirror image.
- `decode_simcc` / `SimCCOnnxDetector`: external models with the RTMPose layout (input
  ``1x3x256x192``, outputs ``simcc_x (1, K, 2*192)`` and ``simcc_y (1, K, 2*256)``).

All decoders return crop pixels ``[x, y, confidence]``; `crop_to_image` maps them back to the
full image. Pixel convention as in `model.crop`: pixel j covers [j, j+1), so heatmap cell j
of a stride-s map is centred on crop coordinate ``(j + 0.5) * s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from model.backbones import LandmarkEncoder, ResNet, TimmBackbone, build_backbone, normalize_crops
from model.config import DetectorConfig
from model.crop import apply_affine, invert_affine

# COCO-17 left/right swap (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO17_FLIP_PERM = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# RTMPose's input normalisation (mmpose data preprocessor), RGB 0-255.
RTMPOSE_MEAN = (123.675, 116.28, 103.53)
RTMPOSE_STD = (58.395, 57.12, 57.375)


class KeypointDetector(nn.Module):
    """Backbone -> deconvolutions -> heatmaps (B, K, H/4, W/4) for crops (B, 3, H, W)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        cfg = self.config
        backbone = build_backbone(cfg.backbone.name, cfg.backbone.width)
        if isinstance(backbone, LandmarkEncoder):
            raise ValueError(
                f"the keypoint detector reads images: {cfg.backbone.name!r} is not an image "
                "backbone (resnet18/34/50 or timm:...)"
            )
        self.backbone: ResNet | TimmBackbone = backbone
        layers: list[nn.Module] = []
        in_ch = int(self.backbone.out_channels)
        for out_ch in cfg.deconv_channels:
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(in_ch, cfg.num_keypoints, 1)
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        if self.final.bias is not None:
            nn.init.zeros_(self.final.bias)

    @property
    def stride(self) -> int:
        return 32 // 2 ** len(self.config.deconv_channels)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W) normalised crops -> heatmaps (B, K, H/stride, W/stride)."""
        return self.final(self.deconv(self.backbone.forward_features(images)))


def gaussian_heatmaps(
    points: np.ndarray, heatmap_hw: tuple[int, int], stride: int, sigma: float = 2.0
) -> np.ndarray:
    """Training targets: one Gaussian per keypoint, (K, h, w) float32.

    points: (K, 3) crop pixels + confidence (confidence 0 -> an all-zero map). sigma in
    heatmap cells. The peak sits at the keypoint's continuous position.
    """
    h, w = heatmap_hw
    ys = (np.arange(h, dtype=np.float32) + 0.5) * stride
    xs = (np.arange(w, dtype=np.float32) + 0.5) * stride
    d2x = (xs[None, :] - points[:, :1].astype(np.float32)) ** 2
    d2y = (ys[None, :] - points[:, 1:2].astype(np.float32)) ** 2
    s2 = 2 * (sigma * stride) ** 2
    maps = np.exp(-(d2y[:, :, None] + d2x[:, None, :]) / s2)
    return (maps * (points[:, 2:3, None] > 0)).astype(np.float32)


def flip_average(heatmaps: np.ndarray, flipped: np.ndarray, flip_perm: Sequence[int]) -> np.ndarray:
    """Average heatmaps (B, K, h, w) with those of the mirrored crops, mapped back.

    flipped: heatmaps of the horizontally mirrored crops. flip_perm: keypoint index of each
    keypoint's mirror (e.g. `COCO17_FLIP_PERM`). Cell j of a mirrored map is cell w-1-j of
    the original (cell centres map exactly under the pixel convention above).
    """
    back = flipped[:, list(flip_perm), :, ::-1]
    return 0.5 * (heatmaps + back)


def decode_heatmaps(heatmaps: np.ndarray, stride: int) -> np.ndarray:
    """Heatmaps (B, K, h, w) -> keypoints (B, K, 3) in crop pixels + confidence (peak value).

    Arg-max, then a quarter-cell shift toward the higher neighbour in x and in y (the
    SimpleBaseline refinement), then cell centres to crop pixels.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, h, w), got {heatmaps.shape}")
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    idx = flat.argmax(-1)
    conf = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    py, px = np.divmod(idx, w)
    x, y = px.astype(np.float64), py.astype(np.float64)
    bi, ki = np.meshgrid(np.arange(b), np.arange(k), indexing="ij")
    inner_x = (px > 0) & (px < w - 1)
    inner_y = (py > 0) & (py < h - 1)
    right = heatmaps[bi, ki, py, np.minimum(px + 1, w - 1)]
    left = heatmaps[bi, ki, py, np.maximum(px - 1, 0)]
    down = heatmaps[bi, ki, np.minimum(py + 1, h - 1), px]
    up = heatmaps[bi, ki, np.maximum(py - 1, 0), px]
    x += 0.25 * np.sign(right - left) * inner_x
    y += 0.25 * np.sign(down - up) * inner_y
    out = np.stack([(x + 0.5) * stride, (y + 0.5) * stride, conf], axis=-1)
    return out.astype(np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0) -> np.ndarray:
    """SimCC outputs -> keypoints (B, K, 3) in crop pixels + confidence.

    simcc_x: (B, K, Wx) with Wx = split_ratio * crop width; simcc_y: (B, K, Wy) likewise.
    Bin i covers crop coordinate i / split_ratio (RTMPose's convention). The confidence is
    the smaller of the two peak values; a keypoint with confidence <= 0 gets confidence 0.
    """
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(
            f"simcc_x (B, K, Wx) and simcc_y (B, K, Wy) must agree on B, K; got "
            f"{simcc_x.shape} and {simcc_y.shape}"
        )
    x = simcc_x.argmax(-1) / split_ratio
    y = simcc_y.argmax(-1) / split_ratio
    conf = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    conf = np.where(conf > 0, conf, 0.0)
    return np.stack([x, y, conf], axis=-1).astype(np.float32)


def crop_to_image(points: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Crop-pixel keypoints (B, K, 3) -> full-image pixels (B, K, 3), confidence kept.

    affines: (B, 2, 3) full image -> crop maps (`model.crop.crop_affine`), one per crop.
    """
    out = points.astype(np.float64).copy()
    for i, affine in enumerate(affines):
        out[i, :, :2] = apply_affine(points[i, :, :2], invert_affine(affine))
    return out.astype(np.float32)


class KeypointSource(Protocol):
    """Anything that turns uint8 RGB crops (B, H, W, 3) into crop-pixel keypoints (B, K, 3)."""

    def predict(self, crops: np.ndarray) -> np.ndarray: ...


def detect(model: KeypointDetector, crops: np.ndarray, flip: bool = True) -> np.ndarray:
    """Run the PyTorch detector on uint8 RGB crops (B, H, W, 3) -> (B, K, 3) crop pixels."""
    x = torch.from_numpy(normalize_crops(crops)).to(next(model.parameters()).device)
    with torch.no_grad():
        heat = model(torch.cat([x, x.flip(-1)]) if flip else x).cpu().numpy()
    b = len(crops)
    maps = flip_average(heat[:b], heat[b:], COCO17_FLIP_PERM) if flip else heat
    return decode_heatmaps(maps, model.stride)


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found at {path}; run `metahmr export` first")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=ort.get_available_providers())


class HeatmapOnnxDetector:
    """Our exported detector (`metahmr export`: detector.onnx, input "image", output
    "heatmaps"), flip-averaged."""

    def __init__(
        self,
        path: str | Path,
        stride: int = 4,
        flip: bool = True,
        flip_perm: Sequence[int] = COCO17_FLIP_PERM,
        threads: int | None = None,
    ) -> None:
        self.session = _session(Path(path), threads)
        self.stride, self.flip, self.flip_perm = stride, flip, tuple(flip_perm)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        x = normalize_crops(crops)
        if self.flip:
            x = np.concatenate([x, x[..., ::-1]])
        (heat,) = self.session.run(["heatmaps"], {"image": np.ascontiguousarray(x)})
        b = len(crops)
        maps = flip_average(heat[:b], heat[b:], self.flip_perm) if self.flip else heat
        return decode_heatmaps(maps, self.stride)


class SimCCOnnxDetector:
    """An external SimCC pose model in the RTMPose layout (one crop per run).

    Input ``1x3x256x192`` float32, RGB normalised with RTMPose's mean/std; outputs named
    ``simcc_x`` and ``simcc_y`` (or the first two outputs). split_ratio: SimCC bins per pixel.
    """

    def __init__(
        self, path: str | Path, split_ratio: float = 2.0, threads: int | None = None
    ) -> None:
        self.session = _session(Path(path), threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one NCHW image input, got {len(inputs)} inputs")
        self.input_name = inputs[0].name
        self.input_hw = tuple(int(d) for d in inputs[0].shape[2:])
        names = [o.name for o in self.session.get_outputs()]
        wanted = ["simcc_x", "simcc_y"]
        self.output_names = wanted if set(wanted) <= set(names) else names[:2]
        if len(self.output_names) != 2:
            raise ValueError(f"{path}: expected outputs simcc_x and simcc_y, got {names}")
        self.split_ratio = split_ratio

    def predict(self, crops: np.ndarray) -> np.ndarray:
        if crops.shape[1:3] != self.input_hw:
            raise ValueError(f"crops must be (B, {self.input_hw[0]}, {self.input_hw[1]}, 3)")
        x = (crops.astype(np.float32) - np.asarray(RTMPOSE_MEAN, np.float32)) / np.asarray(
            RTMPOSE_STD, np.float32
        )
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = []
        for i in range(len(x)):  # RTMPose exports usually have a fixed batch of 1
            sx, sy = self.session.run(self.output_names, {self.input_name: x[i : i + 1]})
            out.append(decode_simcc(sx, sy, self.split_ratio))
        return np.concatenate(out) if out else np.zeros((0, 17, 3), np.float32)


def build_detector(
    config: DetectorConfig | None = None, seed: int | None = None
) -> KeypointDetector:
    """A randomly initialised detector; `seed` makes the initialisation reproducible."""
    if seed is None:
        return KeypointDetector(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KeypointDetector(config)
