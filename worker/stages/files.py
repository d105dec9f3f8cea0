"""Stage "render" (on request): the final bodies as mesh.obj / mesh.glb (camera frame, y up)
and overlay.png (meshes drawn over the image); and the motion exports (`model.motion_export`):
animation.glb, animation.bvh and smpl.npz, each person a one-frame track."""

from __future__ import annotations

import io

import numpy as np
import torch

from model.body import BodyModel
from model.motion import MotionTrack
from model.outputs import CropInfo, RegressorOutput
from service.contract import EXPORT_FILES

# One colour per person, in result order; the demo page's viewer uses the same list
# (service/static/demo/viewer.js, a test holds the two equal).
PERSON_COLORS = (
    "#a6bddb", "#f4a261", "#8fd18f", "#e88a9a", "#c3a6e0", "#f1d36b", "#7fd1c9", "#c9a27e",
)  # fmt: skip


def person_color(index: int) -> tuple[float, float, float]:
    """RGB in [0, 1] of person `index`'s colour (the list repeats past its end)."""
    code = PERSON_COLORS[index % len(PERSON_COLORS)]
    return (int(code[1:3], 16) / 255, int(code[3:5], 16) / 255, int(code[5:7], 16) / 255)


MESH_COLOR = person_color(0)


def render_files(
    body: BodyModel,
    device: torch.device,
    image: np.ndarray,
    final: RegressorOutput,
    crop: CropInfo,
    focal: float,
    wanted: set[str],
) -> dict[str, bytes]:
    """mesh.obj + mesh.glb and/or overlay.png of the final bodies (camera frame)."""
    vertices = camera_vertices(body, device, final, crop)
    faces = np.asarray(body.faces)
    files: dict[str, bytes] = {}
    if "mesh" in wanted:
        files.update(mesh_files(vertices, faces))
    if "overlay" in wanted:
        files["overlay.png"] = overlay_png(image, vertices, faces, focal)
    return files


def export_files(body: BodyModel, tracks: list[MotionTrack], wanted: set[str]) -> dict[str, bytes]:
    """The motion exports `wanted` names (keys of `EXPORT_FILES`) of `tracks`: an image
    job's people (`model.motion.tracks_from_output`) or a video job's tracks (none: no
    files)."""
    if not tracks:
        return {}
    from model.motion_export import animation_bvh, animation_glb, smpl_npz

    makers = {
        "animation": lambda: animation_glb(body, tracks),
        "bvh": lambda: animation_bvh(body, tracks),
        "smpl_npz": lambda: smpl_npz(tracks, body.id),
    }
    return {EXPORT_FILES[kind]: makers[kind]() for kind in EXPORT_FILES if kind in wanted}


def camera_vertices(
    body: BodyModel, device: torch.device, pred: RegressorOutput, crop: CropInfo
) -> np.ndarray:
    """(B, V, 3) float32 camera-frame vertices of `pred`, metres."""
    with torch.no_grad():
        out = body(pred.to(device).params, pred.translation(crop).to(device))
    return out.vertices.float().cpu().numpy()


def mesh_files(vertices: np.ndarray, faces: np.ndarray) -> dict[str, bytes]:
    """mesh.obj (one mesh, people concatenated) and mesh.glb (one node per person).

    vertices: (B, V, 3) camera frame (x right, y down, z forward), metres. faces: (F, 3).
    The files use the glTF/OpenGL camera frame (x right, y up, the camera looking down -z):
    viewers assume y up, and the camera frame's y points down. The change is a 180° turn
    about x, so the faces keep their winding.
    """
    import trimesh
    from trimesh.exchange.obj import export_obj

    to_gl = np.array([1.0, -1.0, -1.0])
    meshes = [trimesh.Trimesh(v * to_gl, faces, process=False) for v in vertices]
    # 6 decimals: micrometres, and a third less text than trimesh's default 8.
    obj = export_obj(trimesh.util.concatenate(meshes), include_normals=False, digits=6)
    scene = trimesh.Scene()
    for i, mesh in enumerate(meshes):
        scene.add_geometry(mesh, node_name=f"person_{i}", geom_name=f"person_{i}")
    glb = scene.export(file_type="glb")
    return {"mesh.obj": obj.encode() if isinstance(obj, str) else obj, "mesh.glb": glb}


def overlay_png(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, focal: float) -> bytes:
    """The meshes (B, V, 3) drawn over `image` (H, W, 3) through the full-image camera."""
    from PIL import Image

    from model.render import MeshSpec, render_meshes

    meshes = [MeshSpec(v, faces, color=person_color(i)) for i, v in enumerate(vertices)]
    try:
        rendered = render_meshes(meshes, image=image, focal_length=focal)
    except Exception as exc:  # no usable OpenGL on this worker: a deployment problem
        raise RuntimeError(
            f"overlay rendering failed ({type(exc).__name__}: {exc}); the worker needs "
            'OSMesa or EGL (`make install` installs libosmesa6), or leave out "overlay"'
        ) from exc
    buf = io.BytesIO()
    Image.fromarray(rendered.rgb).save(buf, "PNG")
    return buf.getvalue()
