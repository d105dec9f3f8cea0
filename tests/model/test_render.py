"""Specification of model/render.py: real offscreen renders (OSMesa in CI, see conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import ConvexHull
from skimage.draw import polygon

from model.geometry import perspective_projection
from model.render import LightSpec, MeshSpec, Renderer, render_meshes

H, W = 240, 320


@pytest.fixture(scope="module")
def renderer():
    with Renderer(W, H) as r:
        yield r


def sphere(center, radius=0.5, subdivisions=3):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices) + np.asarray(center), np.asarray(mesh.faces)


def project(points: np.ndarray, focal, center) -> np.ndarray:
    """Pixels of camera-frame points through model.geometry (the reference camera)."""
    px = perspective_projection(
        torch.from_numpy(points)[None],
        torch.zeros(1, 3, dtype=torch.float64),
        torch.tensor([focal], dtype=torch.float64),
        torch.tensor([center], dtype=torch.float64),
    )
    return px[0].numpy()


def hull_mask(points_px: np.ndarray, hw) -> np.ndarray:
    """Pixels whose centre (j + 0.5, i + 0.5) is inside the convex hull of the points."""
    hull = points_px[ConvexHull(points_px).vertices]
    rows, cols = polygon(hull[:, 1] - 0.5, hull[:, 0] - 0.5, shape=hw)
    mask = np.zeros(hw, bool)
    mask[rows, cols] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    "focal,center",
    [((300.0, 300.0), (W / 2, H / 2)), ((280.0, 330.0), (W / 2 + 17.0, H / 2 - 9.0))],
)
def test_silhouette_is_where_the_vertices_project(renderer, focal, center):
    vertices, faces = sphere((0.6, -0.3, 4.0))
    result = renderer.render(
        [MeshSpec(vertices, faces)], image_hw=(H, W), focal_length=focal, camera_center=center
    )
    # A convex mesh's silhouette is the convex hull of its projected vertices.
    expected = hull_mask(project(vertices, focal, center), (H, W))
    assert iou(result.mask, expected) > 0.97
    # A sign or principal-point error moves it by many pixels: the check can fail.
    shifted = hull_mask(project(vertices, focal, center) + [2.0, 0.0], (H, W))
    assert iou(result.mask, shifted) < iou(result.mask, expected) - 0.02


def stick_figure() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An articulated body of capsules between 11 joints (metres, camera frame, 5 m away,
    arms raised asymmetrically). Returns (vertices, faces, joints (11, 3))."""
    joints = np.array(
        [
            [0.0, 0.0, 0.0],  # pelvis
            [0.0, -0.5, 0.0],  # neck
            [0.0, -0.75, 0.0],  # head
            [-0.2, -0.45, 0.0],  # left shoulder
            [-0.55, -0.7, 0.05],  # left hand, raised
            [0.2, -0.45, 0.0],  # right shoulder
            [0.45, -0.1, -0.1],  # right hand, down and forward
            [-0.1, 0.05, 0.0],  # left hip
            [-0.15, 0.85, 0.0],  # left foot
            [0.1, 0.05, 0.0],  # right hip
            [0.3, 0.8, 0.1],  # right foot
        ]
    ) + [0.3, 0.1, 5.0]
    bones = [(0, 1), (1, 2), (1, 3), (3, 4), (1, 5), (5, 6), (0, 7), (7, 8), (0, 9), (9, 10)]
    parts = []
    for a, b in bones:
        start, end = joints[a], joints[b]
        length = np.linalg.norm(end - start)
        capsule = trimesh.creation.capsule(height=length, radius=0.05, count=[12, 12])
        # trimesh's capsule is centred on the origin along z: align it with the bone.
        capsule.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], (end - start) / length))
        capsule.apply_translation((start + end) / 2)
        parts.append(capsule)
    body = trimesh.util.concatenate(parts)
    return np.asarray(body.vertices), np.asarray(body.faces), joints


def test_articulated_silhouette_contains_projected_joints(renderer):
    vertices, faces, joints = stick_figure()
    focal, center = (600.0, 600.0), (W / 2, H / 2)
    result = renderer.render([MeshSpec(vertices, faces)], image_hw=(H, W), focal_length=focal)
    joints_px = project(joints, focal, center)
    cols, rows = np.floor(joints_px).astype(int).T
    assert result.mask[rows, cols].all()
    # ...and the silhouette is no bigger than the projected mesh.
    vertices_px = project(vertices, focal, center)
    ys, xs = np.nonzero(result.mask)
    assert (
        xs.min() + 0.5 >= vertices_px[:, 0].min() - 1
        and xs.max() + 0.5 <= vertices_px[:, 0].max() + 1
    )
    assert (
        ys.min() + 0.5 >= vertices_px[:, 1].min() - 1
        and ys.max() + 0.5 <= vertices_px[:, 1].max() + 1
    )
    # Thin limbs leave holes around the body: not just a filled bounding box.
    box = result.mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.mean() < 0.5


def test_instance_map_depth_and_occlusion(renderer):
    far_v, far_f = sphere((0.25, 0.0, 5.0), radius=0.6)
    near_v, near_f = sphere((-0.25, 0.0, 3.5), radius=0.4)
    focal = 300.0
    result = renderer.render(
        [MeshSpec(far_v, far_f), MeshSpec(near_v, near_f, color=(0.9, 0.2, 0.2))],
        image_hw=(H, W),
        focal_length=focal,
    )
    assert result.instance.dtype == np.int16 and result.depth.dtype == np.float32
    near_alone = hull_mask(project(near_v, (focal, focal), (W / 2, H / 2)), (H, W))
    far_alone = hull_mask(project(far_v, (focal, focal), (W / 2, H / 2)), (H, W))
    overlap = near_alone & far_alone
    assert overlap.sum() > 200
    # The nearer mesh wins where both project; each wins alone elsewhere.
    assert (result.instance[overlap] == 1).mean() > 0.97
    assert (result.instance[far_alone & ~near_alone] == 0).mean() > 0.97
    np.testing.assert_array_equal(result.mask, result.instance >= 0)
    np.testing.assert_array_equal(result.depth > 0, result.mask)
    # Depth is camera z in metres: the near sphere's front at its centre pixel.
    u, v = project(np.array([[-0.25, 0.0, 3.5]]), (focal, focal), (W / 2, H / 2))[0]
    assert result.depth[int(v), int(u)] == pytest.approx(3.5 - 0.4, abs=0.01)
    assert result.depth[result.instance == 0].min() > 4.3


def test_composites_over_the_image_and_keeps_the_rest(renderer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    vertices, faces = sphere((0.0, 0.0, 3.0))
    red = np.tile([[255, 0, 0]], (len(vertices), 1)).astype(np.uint8)
    result = renderer.render(
        [MeshSpec(vertices, faces, vertex_colors=red)], image=image, focal_length=300.0
    )
    assert result.rgb.shape == (H, W, 3) and result.rgb.dtype == np.uint8
    empty = result.alpha == 0
    assert empty.mean() > 0.5
    np.testing.assert_array_equal(result.rgb[empty], image[empty])
    solid = result.alpha == 1
    assert solid.sum() > 1000
    body = result.rgb[solid].astype(int)
    assert (body[:, 0] > 3 * body[:, 1] + 20).mean() > 0.95  # red, lit
    # Anti-aliased edges blend: some pixels are partly covered.
    assert ((result.alpha > 0) & (result.alpha < 1)).sum() > 20
    assert (
        image.sum()
        == np.random.default_rng(0).integers(0, 255, size=(H, W, 3), dtype=np.uint8).sum()
    )


def test_edges_blend_between_mesh_and_image(renderer):
    """Edge pixels lie between the image and the mesh colour, never darker than both
    (the resolved colour is premultiplied by coverage: blending it again would be)."""
    image = np.full((H, W, 3), 255, np.uint8)
    vertices, faces = sphere((0.0, 0.0, 3.0))
    bright = LightSpec(ambient=3.0)  # saturates the mesh to white everywhere
    result = renderer.render(
        [MeshSpec(vertices, faces, color=(1.0, 1.0, 1.0))],
        image=image,
        focal_length=300.0,
        light=bright,
    )
    edges = (result.alpha > 0) & (result.alpha < 1)
    assert edges.sum() > 20
    assert (result.rgb >= 254).all()
    grey = renderer.render(
        [MeshSpec(vertices, faces, color=(0.2, 0.2, 0.2))], image=image, focal_length=300.0
    )
    inside = grey.rgb[grey.alpha == 1].min()
    assert (grey.rgb[edges] >= inside - 1).all()


def test_light_direction_matters(renderer):
    vertices, faces = sphere((0.0, 0.0, 3.0))
    mesh = [MeshSpec(vertices, faces)]
    front = renderer.render(mesh, image_hw=(H, W), focal_length=300.0, light=LightSpec((0, 0, 1)))
    back = renderer.render(
        mesh, image_hw=(H, W), focal_length=300.0, light=LightSpec((0, 0, -1), ambient=0.1)
    )
    from_left = renderer.render(
        mesh, image_hw=(H, W), focal_length=300.0, light=LightSpec((1, 0, 0), ambient=0.0)
    )
    assert front.rgb[front.mask].mean() > 2 * back.rgb[back.mask].mean()
    # Light travelling +x (rightwards) lights the sphere's left half.
    left = from_left.rgb[:, : W // 2][from_left.mask[:, : W // 2]].mean()
    right = from_left.rgb[:, W // 2 :][from_left.mask[:, W // 2 :]].mean()
    assert left > 3 * right + 10


def test_renderer_follows_the_image_size(renderer):
    vertices, faces = sphere((0.0, 0.0, 3.0))
    small = renderer.render([MeshSpec(vertices, faces)], image_hw=(100, 150), focal_length=100.0)
    assert small.rgb.shape == (100, 150, 3) and small.mask.shape == (100, 150)
    ys, xs = np.nonzero(small.mask)
    assert abs(xs.mean() + 0.5 - 75) < 1 and abs(ys.mean() + 0.5 - 50) < 1
    big = renderer.render([MeshSpec(vertices, faces)], image_hw=(H, W), focal_length=100.0)
    assert big.mask.shape == (H, W) and big.mask.sum() == pytest.approx(small.mask.sum(), rel=0.05)


def test_render_meshes_and_input_errors():
    vertices, faces = sphere((0.0, 0.0, 3.0))
    result = render_meshes(
        [MeshSpec(vertices, faces)], image_hw=(60, 80), focal_length=60.0, background=(0, 0, 255)
    )
    assert tuple(result.rgb[0, 0]) == (0, 0, 255)
    assert result.mask.any() and not result.mask[0, 0]
    with pytest.raises(ValueError, match="image_hw"):
        render_meshes([MeshSpec(vertices, faces)], focal_length=60.0)
    with pytest.raises(ValueError, match=r"faces must be integer \(F, 3\)"):
        render_meshes([MeshSpec(vertices, faces.astype(float))], image_hw=(8, 8), focal_length=5.0)
    with pytest.raises(ValueError, match="vertex_colors"):
        render_meshes(
            [MeshSpec(vertices, faces, vertex_colors=np.ones((3, 3)))],
            image_hw=(8, 8),
            focal_length=5.0,
        )


def test_shading_is_lambert_in_pyrender_light_units(renderer):
    """Facing the light: (base * (ambient + 0.96 / π * intensity))^(1 / 2.2), as pyrender's
    diffuse term for a dielectric; colours are linear, the output gamma-encoded."""
    vertices, faces = sphere((0.0, 0.0, 3.0), subdivisions=4)
    base = np.array([0.5, 0.3, 0.1])
    light = LightSpec((0, 0, 1), intensity=2.0, color=(1.0, 0.8, 0.6), ambient=0.2)
    result = renderer.render(
        [MeshSpec(vertices, faces, color=tuple(base))],
        image_hw=(H, W),
        focal_length=300.0,
        light=light,
    )
    light_color = np.asarray(light.color)
    linear = base * (0.2 * light_color + 0.96 / np.pi * 2.0 * light_color)
    expected = 255 * np.clip(linear, 0, 1) ** (1 / 2.2)
    centre = result.rgb[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1].reshape(-1, 3)
    np.testing.assert_allclose(centre.mean(0), expected, atol=2.0)


def posed_body_in_camera(transl=(0.15, -0.1, 5.0)):
    """The bundled body model, arms and one knee bent, upright and facing the camera.

    Returns (vertices (V, 3), faces (F, 3), joints (24, 3), coco17 (17, 3)) in metres in
    the camera frame.
    """
    from model import body
    from model.geometry import axis_angle_to_rotmat
    from model.outputs import SMPLParams

    model = body.BodyModel()
    pose = torch.zeros(1, 23, 3)
    pose[0, 15] = torch.tensor([0.0, 0.0, -1.0])  # left shoulder (SMPL 16): arm down
    pose[0, 17] = torch.tensor([0.0, -1.2, 0.0])  # left elbow (SMPL 18): bent
    pose[0, 3] = torch.tensor([1.0, 0.0, 0.0])  # left knee (SMPL 4): bent
    # Body frame is y up, facing +z; the camera's is y down, z forward: turn π about x.
    params = SMPLParams(
        global_orient=axis_angle_to_rotmat(torch.tensor([[[np.pi, 0.0, 0.0]]])),
        body_pose=axis_angle_to_rotmat(pose),
        betas=torch.zeros(1, 10),
    )
    with torch.no_grad():
        out = model(params, transl=torch.tensor([transl]))
    return (
        out.vertices[0].double().numpy(),
        np.asarray(model.faces),
        out.joints[0].double().numpy(),
        out.coco17[0].double().numpy(),
    )


def test_body_render_puts_the_silhouette_on_the_projected_joints(renderer):
    vertices, faces, joints, coco = posed_body_in_camera()
    focal, center = (500.0, 500.0), (W / 2, H / 2)
    result = renderer.render([MeshSpec(vertices, faces)], image_hw=(H, W), focal_length=focal)
    # Joints are inside the body, so they project inside its silhouette.
    cols, rows = np.floor(project(joints, focal, center)).astype(int).T
    assert result.mask[rows, cols].all()
    # Surface keypoints (nose, eyes, ears, ...) land on it too, up to a pixel at the edge.
    grown = result.mask.copy()
    grown[1:] |= result.mask[:-1]
    grown[:-1] |= result.mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    cols, rows = np.floor(project(coco, focal, center)).astype(int).T
    assert grown[rows, cols].all()
    # And the silhouette is where the mesh projects: the hull of the projected vertices
    # bounds it (the body is not convex, so only this direction is exact).
    hull = hull_mask(project(vertices, focal, center), (H, W))
    assert (result.mask & ~hull).sum() <= 0.01 * result.mask.sum()
    assert result.mask.sum() > 0.3 * hull.sum()
