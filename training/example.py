"""The documentation's example photo: one synthetic person and their COCO-17 keypoints.

`metahmr assets example --out docs/img` writes ``example.jpg`` (640x480) and
``example_keypoints.json`` (``{"format": "coco17", "points": [[x, y, conf], ...]}``, what
`metahmr recover --keypoints` sends). Reproducible: a fixed seed and a fixed search over the
engine's samples. The camera is a 53° diagonal lens, so the service's default focal length
``sqrt(W² + H²)`` is the true one and no `--focal-length` is needed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from training.synth.cameras import CameraConfig
from training.synth.degrade import DegradeConfig
from training.synth.engine import Sample, SynthEngine
from training.synth.occluders import OccluderConfig
from training.synth.splits import SplitConfig, split_config

log = logging.getLogger(__name__)

EXAMPLE_SEED = 2024
# The diagonal field of view whose focal length is the default sqrt(W² + H²).
DEFAULT_FOV_DEG = 2.0 * math.degrees(math.atan(0.5))
MIN_BOX_HEIGHT = 0.55  # of the image height: the person should be clearly visible
MIN_CONFIDENCE = 0.5  # every COCO keypoint visible or only self-occluded


def example_split() -> SplitConfig:
    """The test split with a 640x480 camera at the default lens, no occluders, light noise."""
    base = split_config("test", long_side=640)
    camera = CameraConfig(
        long_side=640,
        aspects=((4, 3),),
        fov_deg=(DEFAULT_FOV_DEG, DEFAULT_FOV_DEG),
        pitch_deg=(-10.0, 10.0),
        roll_deg=(-3.0, 3.0),
        depth_m=(3.0, 5.0),
        truncation_prob=0.0,
    )
    return replace(
        base,
        camera=camera,
        occluders=replace(OccluderConfig(), prob=0.0),
        degrade=DegradeConfig(
            blur_prob=0.0, motion_prob=0.0, noise_prob=0.0, jpeg_quality=(92, 92)
        ),
    )


def _usable(sample: Sample) -> bool:
    labels = sample.labels
    h = float(labels["img_h"])
    x0, y0, x1, y1 = (float(v) for v in labels["bbox"])
    inside = x0 > 0 and y0 > 0 and x1 < float(labels["img_w"]) and y1 < h
    return bool(
        inside
        and (y1 - y0) >= MIN_BOX_HEIGHT * h
        and (labels["coco17"][:, 2] >= MIN_CONFIDENCE).all()
    )


def example_person(seed: int = EXAMPLE_SEED, max_tries: int = 500) -> Sample:
    """The first sample of `example_split()` (from index 0) that passes `_usable`."""
    engine = SynthEngine(example_split())
    try:
        for index in range(max_tries):
            sample = engine.sample(seed, index)
            if _usable(sample):
                log.info("example: seed %d, sample %d", seed, index)
                return sample
    finally:
        engine.close()
    raise RuntimeError(f"no usable example person in {max_tries} samples of seed {seed}")


def write_example(out_dir: Path, seed: int = EXAMPLE_SEED) -> tuple[Path, Path]:
    """Write example.jpg and example_keypoints.json into out_dir; returns their paths."""
    sample = example_person(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path = out_dir / "example.jpg"
    Image.fromarray(sample.image).save(image_path, "JPEG", quality=sample.jpeg_quality)
    points = np.asarray(sample.labels["coco17"], dtype=np.float64)
    keypoints = {
        "format": "coco17",
        "points": [[round(x, 2), round(y, 2), round(c, 2)] for x, y, c in points.tolist()],
    }
    kp_path = out_dir / "example_keypoints.json"
    # One keypoint per line: readable, and diffs stay small if the example changes.
    rows = ",\n    ".join(json.dumps(p) for p in keypoints["points"])
    kp_path.write_text(f'{{"format": "coco17", "points": [\n    {rows}\n]}}\n')
    return image_path, kp_path
