"""One synthetic sample: pose, shape, camera, appearance -> rendered image and its labels.

Every sample depends only on (seed, split, index) through its own generator, so the data
set is the same whatever the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from training.synth import labels as L
from training.synth.appearance import BodyTemplate, Lighting, sample_lighting, sample_vertex_colors
from training.synth.backgrounds import sample_background
from training.synth.cameras import place_person, project, sample_camera
from training.synth.degrade import degrade
from training.synth.occluders import draw_occluders
from training.synth.poses import sample_pose
from training.synth.shapes import sample_betas
from training.synth.splits import SplitConfig


def sample_rng(seed: int, split_id: int, index: int) -> np.random.Generator:
    """The generator of one sample: independent streams per (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_id, index]))


@dataclass(frozen=True)
class Sample:
    """A rendered sample. image: (H, W, 3) uint8; labels: one row of the annotation file
    (field name -> array, see `writer.ANNOTATION_FIELDS`)."""

    image: np.ndarray
    jpeg_quality: int
    labels: dict[str, Any]


def body_template(body) -> BodyTemplate:  # body: model.body.BodyModel
    """Rest mesh, rest joints and per-vertex part labels of a body model."""
    import torch

    from model.outputs import SMPLParams

    weights = _lbs_weights(body)
    eye = torch.eye(3).expand(1, 24, 3, 3)
    params = SMPLParams(eye[:, :1].clone(), eye[:, 1:].clone(), torch.zeros(1, 10))
    with torch.no_grad():
        out = body(params)
    return BodyTemplate(
        rest_vertices=out.vertices[0].double().numpy(),
        rest_joints=out.joints[0].double().numpy(),
        vertex_part=weights.argmax(axis=1),
    )


def _lbs_weights(body) -> np.ndarray:
    for name, buf in body.named_buffers():
        if name.split(".")[-1] in ("lbs_weights", "weights") and buf.ndim == 2 and buf.shape[1] == 24:
            return buf.detach().double().numpy()
    raise RuntimeError(
        f"body model {getattr(body, 'id', body)} exposes no (V, 24) skinning weights buffer "
        "named 'lbs_weights'; the synthetic engine needs it to dress the mesh"
    )


class SynthEngine:
    """Renders samples of one split. Holds the body model and one renderer per image size;
    create one per process (OpenGL contexts do not cross processes)."""

    def __init__(self, split: SplitConfig, body=None) -> None:
        import torch

        from model.body import load_body_model

        torch.set_num_threads(1)  # determinism and no oversubscription across workers
        self.split = split
        self.body = body if body is not None else load_body_model()
        self.body.eval()
        self.faces = np.asarray(self.body.faces)
        self.template = body_template(self.body)
        self._renderer: Any = None  # created on first use, in the thread that renders

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _pose_body(self, pose: np.ndarray, betas: np.ndarray):
        import torch

        from model.outputs import SMPLParams

        rots = torch.from_numpy(Rotation.from_rotvec(pose.reshape(24, 3)).as_matrix()).float()
        params = SMPLParams(rots[None, :1], rots[None, 1:], torch.from_numpy(betas).float()[None])
        with torch.no_grad():
            out = self.body(params)
        return {k: getattr(out, k)[0].double().numpy() for k in ("vertices", "joints", "coco17", "openpose25")}

    def sample(self, seed: int, index: int) -> Sample:
        cfg = self.split
        rng = sample_rng(seed, cfg.split_id, index)
        drawn = sample_pose(rng, cfg.pose_families)
        betas = sample_betas(rng, cfg.betas_sigma)
        camera = sample_camera(rng, cfg.camera)
        pose = drawn.pose.copy()
        root = camera.view @ Rotation.from_rotvec(pose[:3]).as_matrix()
        pose[:3] = Rotation.from_matrix(root).as_rotvec()
        body = self._pose_body(pose, betas)
        transl = place_person(rng, np.concatenate([body["joints"], body["coco17"]]), camera, cfg.camera)
        for key in body:
            body[key] = body[key] + transl
        hw = camera.image_hw
        background = sample_background(rng, hw, cfg.background)
        colors = sample_vertex_colors(rng, self.template)
        lighting = sample_lighting(rng)
        rendered = self._render(body["vertices"], colors, background, camera.focal, lighting)
        image = np.array(rendered.rgb, copy=True)
        box = L.box_from_mask(rendered.mask)
        center = camera.center
        if box is None:  # fully outside the frame: fall back to the projected joints' box
            pts = project(body["joints"], camera.focal, center)
            box = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
        occluders = draw_occluders(rng, image, box, cfg.occluders)
        image, quality = degrade(rng, image, cfg.degrade)
        vertex_px = project(body["vertices"], camera.focal, center)

        # One visibility pass over all keypoint sets (the costly part is the vertex search).
        sets = {"part": body["joints"], "coco17": body["coco17"], "openpose": body["openpose25"]}
        points = np.concatenate(list(sets.values()))
        px = project(points, camera.focal, center)
        codes = L.visibility_codes(points, px, body["vertices"], vertex_px, rendered.depth, occluders, camera.focal)
        split_at = np.cumsum([len(v) for v in sets.values()])[:-1]
        (part, coco, openpose) = np.split(L.with_confidence(px, codes), split_at)
        (part_vis, coco_vis, openpose_vis) = np.split(codes, split_at)
        labels = _label_row(
            index=index, family=drawn.family, pose=pose, betas=betas, transl=transl,
            joints=body["joints"], focal=camera.focal, hw=hw, box=box,
            part=part, part_vis=part_vis, coco=coco, coco_vis=coco_vis,
            openpose=openpose, openpose_vis=openpose_vis,
        )
        return Sample(image=image, jpeg_quality=quality, labels=labels)

    def _render(self, vertices: np.ndarray, colors: np.ndarray, background: np.ndarray,
                focal: float, lighting: Lighting):
        from model.render import LightSpec, MeshSpec

        hw = background.shape[:2]
        mesh = MeshSpec(vertices=vertices.astype(np.float32), faces=self.faces, vertex_colors=colors)
        light = LightSpec(
            direction=np.asarray(lighting.direction, dtype=np.float64),
            intensity=lighting.intensity,
            color=np.asarray(lighting.color, dtype=np.float64),
            ambient=lighting.ambient,
        )
        if self._renderer is None:
            from model.render import Renderer

            self._renderer = Renderer(hw[1], hw[0])  # the viewport follows each image
        return self._renderer.render([mesh], image=background, focal_length=(focal, focal), light=light)


def _label_row(*, index: int, family: str, pose: np.ndarray, betas: np.ndarray,
               transl: np.ndarray, joints: np.ndarray, focal: float, hw: tuple[int, int],
               box: np.ndarray, part: np.ndarray, part_vis: np.ndarray, coco: np.ndarray,
               coco_vis: np.ndarray, openpose: np.ndarray, openpose_vis: np.ndarray,
               ) -> dict[str, Any]:
    from model.crop import box_from_xyxy

    center, box_size = box_from_xyxy(np.asarray(box, dtype=np.float64), rescale=1.2)
    s = np.concatenate([joints, np.ones((24, 1))], axis=1)
    return {
        "center": np.asarray(center, dtype=np.float32),
        "scale": np.float32(float(box_size) / 200.0),
        "part": part,
        "S": s.astype(np.float32),
        "pose": pose.astype(np.float32),
        "shape": betas.astype(np.float32),
        "has_smpl": np.int64(1),
        "openpose": openpose,
        "focal_length": np.float32(focal),
        "cam_t": transl.astype(np.float32),
        "img_h": np.int32(hw[0]),
        "img_w": np.int32(hw[1]),
        "coco17": coco,
        "bbox": np.asarray(box, dtype=np.float32),
        "part_vis": part_vis,
        "coco17_vis": coco_vis,
        "openpose_vis": openpose_vis,
        "family": np.str_(family),
        "index": np.int64(index),
    }
