"""The body-model figure (`metahmr bodymodel figure`): the model in T-pose, arms raised,
walking and squatting, and with beta_1 = -2 / +2, rendered side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (label, {SMPL joint index: axis-angle (3,)}, beta_1). SMPL frame: y up, facing +z, left +x.
POSES: tuple[tuple[str, dict[int, tuple[float, float, float]], float], ...] = (
    ("T-pose", {}, 0.0),
    ("arms raised", {16: (0, 0, 1.3), 17: (0, 0, -1.3), 18: (0, 0, 0.3), 19: (0, 0, -0.3)}, 0.0),
    ("walking", {1: (-0.5, 0, 0), 2: (0.35, 0, 0), 4: (0.3, 0, 0), 5: (0.6, 0, 0),
                 16: (0.3, 0, -1.2), 17: (-0.3, 0, 1.2), 18: (0, -0.4, 0), 19: (0, 0.4, 0)}, 0.0),
    ("squat", {1: (-1.7, 0, -0.15), 2: (-1.7, 0, 0.15), 4: (2.1, 0, 0), 5: (2.1, 0, 0),
               7: (-0.4, 0, 0), 8: (-0.4, 0, 0), 3: (0.3, 0, 0), 16: (0, -1.4, 0),
               17: (0, 1.4, 0)}, 0.0),
    ("beta_1 = -2", {}, -2.0),
    ("beta_1 = +2", {}, 2.0),
)
PANEL_HW = (520, 340)


def pose_params(joints: dict[int, tuple[float, float, float]], beta1: float):
    """SMPLParams of one figure pose."""
    import torch

    from model.geometry import axis_angle_to_rotmat
    from model.outputs import SMPLParams

    aa = torch.zeros(1, 24, 3)
    for j, value in joints.items():
        aa[0, j] = torch.tensor(value)
    rot = axis_angle_to_rotmat(aa)
    betas = torch.zeros(1, 10)
    betas[0, 0] = beta1
    return SMPLParams(rot[:, :1], rot[:, 1:], betas)


def render_figure(out: Path, model_path: Path | None = None) -> Path:
    """Render every `POSES` entry into one PNG at `out`."""
    import torch
    from PIL import Image, ImageDraw

    from model.body import BodyModel
    from model.render import MeshSpec, Renderer

    body = BodyModel(model_path).eval()
    to_camera = np.diag([1.0, -1.0, -1.0])  # face the camera: y down, z away from it
    h, w = PANEL_HW
    sheet = Image.new("RGB", (w * len(POSES), h), (245, 245, 245))
    with Renderer(w, h) as renderer:
        for k, (label, joints, beta1) in enumerate(POSES):
            with torch.no_grad():
                verts = body(pose_params(joints, beta1)).vertices[0].double().numpy()
            verts = verts @ to_camera.T
            centre = (verts.max(axis=0) + verts.min(axis=0)) / 2
            verts = verts - centre + np.array([0.0, 0.0, 5.5])
            result = renderer.render(
                [MeshSpec(verts.astype(np.float32), body.faces, color=(0.62, 0.72, 0.9))],
                image_hw=(h, w), focal_length=1000.0, background=(245, 245, 245),
            )
            panel = Image.fromarray(result.rgb)
            ImageDraw.Draw(panel).text((10, 10), label, fill=(20, 20, 20))
            sheet.paste(panel, (k * w, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
