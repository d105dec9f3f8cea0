"""Contact sheet of a data set: each tile is the person's crop with the ground-truth mesh
(when the file has SMPL and a camera) blended in and the COCO-17 keypoints drawn on top.

Keypoint colours: green visible, yellow self-occluded, orange behind an occluder (by the
confidence the synthetic labels give them), red dropped/outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.crop import apply_affine, crop_image

TILE_HW = (256, 192)
_EDGES = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("nose", "left_eye"),
    ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)


def _conf_color(conf: float) -> tuple[int, int, int]:
    if conf >= 0.99:
        return (40, 230, 60)
    if conf >= 0.45:
        return (250, 230, 40)
    if conf > 0:
        return (255, 140, 20)
    return (230, 30, 30)


def _side_color(name: str) -> tuple[int, int, int]:
    return (60, 160, 255) if name.startswith("left") else (255, 80, 200) if name.startswith("right") else (255, 255, 255)


def draw_keypoints(tile: Image.Image, points: np.ndarray, names: Sequence[str]) -> None:
    """Draw (K, 3) keypoints in tile pixels: limbs coloured by side (left blue, right
    pink), joints by confidence."""
    draw = ImageDraw.Draw(tile)
    index = {n: i for i, n in enumerate(names)}
    for a, b in _EDGES:
        pa, pb = points[index[a]], points[index[b]]
        draw.line([tuple(pa[:2]), tuple(pb[:2])], fill=_side_color(a), width=2)
    for point in points:
        x, y, c = (float(v) for v in point)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_conf_color(c), outline=(0, 0, 0))


def _mesh_overlay(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, focal: float, renderer) -> np.ndarray:
    from model.render import MeshSpec

    out = renderer.render(
        [MeshSpec(vertices=vertices.astype(np.float32), faces=faces, color=(0.6, 0.75, 0.95))],
        image=image, focal_length=(focal, focal),
    )
    alpha = 0.55 * out.alpha[..., None]
    blended = image * (1 - alpha) + out.rgb * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def make_contact_sheet(
    sources: Sequence[str | Path], num: int = 12, cols: int = 4, mesh: bool = True, seed: int = 0
) -> Image.Image:
    """A grid image of `num` people drawn evenly from the data sets in `sources`."""
    import torch

    from model.keypoints import get_format
    from training.datasets import HMRDataset

    names = get_format("coco17").names
    datasets = [HMRDataset(s) for s in sources]
    per = [num // len(datasets) + (i < num % len(datasets)) for i in range(len(datasets))]
    body = renderer = None
    if mesh:
        from model.body import load_body_model
        from model.render import Renderer

        body = load_body_model().eval()
        renderer = Renderer(640, 480)
    tiles = []
    rng = np.random.default_rng(seed)
    for ds, count in zip(datasets, per, strict=True):
        picks = np.sort(rng.choice(len(ds), size=min(count, len(ds)), replace=False))
        for i in picks:
            try:
                p = ds.person(int(i))
            except (OSError, ValueError, SyntaxError):
                continue
            image = p.image
            if body is not None and p.has_smpl and p.has_cam_t:
                from model.geometry import axis_angle_to_rotmat
                from model.outputs import SMPLParams

                rots = axis_angle_to_rotmat(torch.tensor(p.pose, dtype=torch.float32).reshape(1, 24, 3))
                params = SMPLParams(rots[:, :1], rots[:, 1:], torch.tensor(p.betas, dtype=torch.float32)[None])
                with torch.no_grad():
                    out = body(params, transl=torch.tensor(p.cam_t, dtype=torch.float32)[None])
                image = _mesh_overlay(image, out.vertices[0].numpy(), np.asarray(body.faces), p.focal, renderer)
            crop, affine = crop_image(image, p.center, p.box_size, TILE_HW)
            tile = Image.fromarray(crop)
            kp = p.keypoints.copy()
            kp[:, :2] = apply_affine(kp[:, :2], affine)
            draw_keypoints(tile, kp, names)
            tiles.append(tile)
    if renderer is not None:
        renderer.close()
    if not tiles:
        raise ValueError(f"no readable samples in {list(map(str, sources))}")
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * TILE_HW[1], rows * TILE_HW[0]), (20, 20, 20))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * TILE_HW[1], (k // cols) * TILE_HW[0]))
    return sheet
