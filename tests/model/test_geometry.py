"""Specification of model/geometry.py: rotations, projection, CLIFF camera, Procrustes."""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model import geometry as g

torch.set_num_threads(1)


def random_axis_angle(n: int, seed: int = 0, max_angle: float = math.pi) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    angle = torch.rand(n, 1, generator=gen, dtype=torch.float64) * max_angle
    return axis * angle


def edge_axis_angles() -> torch.Tensor:
    """Angles at and near 0 and π, where naive formulas break."""
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64), dim=0)
    angles = [0.0, 1e-9, 1e-6, 1e-4, 9e-4, 1.1e-3, 1e-2, math.pi - 1e-2]
    angles += [math.pi - 1e-4, math.pi - 1e-6, math.pi]
    return torch.stack([axis * a for a in angles])


def scipy_matrix(aa: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(Rotation.from_rotvec(aa.numpy()).as_matrix())


# --- rotations ---------------------------------------------------------------------------


def test_axis_angle_to_rotmat_matches_scipy_including_edges():
    aa = torch.cat([random_axis_angle(200), edge_axis_angles()])
    torch.testing.assert_close(g.axis_angle_to_rotmat(aa), scipy_matrix(aa), atol=1e-12, rtol=0)


def test_axis_angle_round_trip():
    aa = random_axis_angle(500, max_angle=math.pi - 1e-3)
    torch.testing.assert_close(g.rotmat_to_axis_angle(g.axis_angle_to_rotmat(aa)), aa)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_rotmat_to_axis_angle_is_accurate_near_zero_and_pi(dtype, atol):
    aa = edge_axis_angles()
    rotmat = scipy_matrix(aa).to(dtype)
    recovered = g.rotmat_to_axis_angle(rotmat)
    angles = recovered.norm(dim=-1).double()
    torch.testing.assert_close(angles, aa.norm(dim=-1), atol=atol * 10, rtol=0)
    # At π the axis sign is arbitrary; the rotation it describes is what must match.
    back = scipy_matrix(recovered.double())
    torch.testing.assert_close(back, rotmat.double(), atol=atol * 10, rtol=0)
    assert (angles <= math.pi + 1e-6).all()


def test_rot6d_round_trip():
    rotmat = g.axis_angle_to_rotmat(random_axis_angle(300, seed=1))
    x = g.rotmat_to_rot6d(rotmat)
    torch.testing.assert_close(g.rot6d_to_rotmat(x), rotmat)


def test_rot6d_layout_is_first_two_columns_row_major():
    rotmat = g.axis_angle_to_rotmat(random_axis_angle(4, seed=2))
    expected = torch.stack([rotmat[:, r, c] for r in range(3) for c in range(2)], dim=-1)
    torch.testing.assert_close(g.rotmat_to_rot6d(rotmat), expected)
    # SPIN/CLIFF read the 6 numbers as a (3, 2) matrix.
    torch.testing.assert_close(g.rotmat_to_rot6d(rotmat).reshape(-1, 3, 2), rotmat[:, :, :2])


def test_rot6d_to_rotmat_orthonormalises_arbitrary_input():
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotmat = g.rot6d_to_rotmat(x)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    torch.testing.assert_close(rotmat.transpose(-1, -2) @ rotmat, eye)
    torch.testing.assert_close(torch.linalg.det(rotmat), torch.ones(100, dtype=torch.float64))
    # Gram–Schmidt keeps the direction of the first column.
    first = torch.nn.functional.normalize(x.reshape(-1, 3, 2)[..., 0], dim=-1)
    torch.testing.assert_close(rotmat[..., 0], first)


def test_quaternion_is_unit_with_nonnegative_w():
    rotmat = g.axis_angle_to_rotmat(torch.cat([random_axis_angle(50), edge_axis_angles()]))
    quat = g.rotmat_to_quaternion(rotmat)
    torch.testing.assert_close(quat.norm(dim=-1), torch.ones(len(quat), dtype=torch.float64))
    assert (quat[:, 0] >= 0).all()
    expected = Rotation.from_matrix(rotmat.numpy()).as_quat(scalar_first=True)
    expected = expected * np.sign(expected[:, :1] + 1e-300)
    np.testing.assert_allclose(quat.numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_gradients_are_finite_at_edges(dtype):
    aa = edge_axis_angles().to(dtype).requires_grad_(True)
    weights = torch.randn(len(aa), 3, 3, dtype=dtype)
    (g.axis_angle_to_rotmat(aa) * weights).sum().backward()
    assert torch.isfinite(aa.grad).all()

    rotmat = scipy_matrix(edge_axis_angles()).to(dtype).requires_grad_(True)
    (g.rotmat_to_axis_angle(rotmat) * torch.randn(len(aa), 3, dtype=dtype)).sum().backward()
    assert torch.isfinite(rotmat.grad).all()

    x = torch.randn(8, 6, dtype=dtype, requires_grad=True)
    g.rot6d_to_rotmat(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_rotation_gradients_are_correct():
    # Generic angles, one inside the small-angle Taylor branch, one near π.
    aa = torch.tensor(
        [[0.3, -0.2, 0.5], [2e-4, -1e-4, 3e-4], [0.0, 3.1, 0.2]], dtype=torch.float64
    ).requires_grad_(True)
    assert torch.autograd.gradcheck(g.axis_angle_to_rotmat, (aa,))
    rotmat = g.axis_angle_to_rotmat(aa.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(g.rotmat_to_axis_angle, (rotmat,))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(g.rot6d_to_rotmat, (x,))


def test_rotation_functions_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        g.rot6d_to_rotmat(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        g.axis_angle_to_rotmat(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        g.rotmat_to_axis_angle(torch.zeros(2, 9))


# --- projection and the CLIFF camera -----------------------------------------------------


def test_perspective_projection_values():
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -0.5, 1.0]]])
    translation = torch.tensor([[0.0, 0.0, 4.0]])
    center = torch.tensor([[320.0, 240.0]])
    px = g.perspective_projection(points, translation, torch.tensor([800.0]), center)
    torch.testing.assert_close(px, torch.tensor([[[320.0, 240.0], [480.0, 160.0]]]))
    px2 = g.perspective_projection(points, translation, torch.tensor([[800.0, 400.0]]), center)
    torch.testing.assert_close(px2, torch.tensor([[[320.0, 240.0], [480.0, 200.0]]]))


def distant_body(n: int = 200, seed: int = 0, depth: float = 0.15) -> torch.Tensor:
    """A person-sized point cloud (0.5 x 1.7 x 2*depth m) around its root, (1, n, 3)."""
    gen = torch.Generator().manual_seed(seed)
    pts = (torch.rand(1, n, 3, generator=gen, dtype=torch.float64) - 0.5) * 2
    return pts * torch.tensor([0.25, 0.85, depth], dtype=torch.float64)


@pytest.mark.parametrize(
    "center,box_size,crop_cam",
    [
        ((640.0, 360.0), 400.0, (0.9, 0.05, -0.1)),  # box at the image centre
        ((1100.0, 200.0), 250.0, (0.7, -0.1, 0.2)),  # box near a corner: CLIFF's case
        ((150.0, 600.0), 600.0, (1.1, 0.0, 0.0)),
    ],
)
def test_cam_crop2full_matches_full_perspective_projection(center, box_size, crop_cam):
    f64 = torch.float64
    img_hw = torch.tensor([[720.0, 1280.0]], dtype=f64)
    focal = g.default_focal_length(img_hw)
    center_t = torch.tensor([center], dtype=f64)
    size_t = torch.tensor([box_size], dtype=f64)
    cam = torch.tensor([crop_cam], dtype=f64)
    translation = g.cam_crop2full(cam, center_t, size_t, img_hw, focal)

    def crop_vs_full(points: torch.Tensor) -> torch.Tensor:
        px = g.perspective_projection(points, translation, focal, img_hw.flip(-1) / 2)
        full_in_box = g.pixels_to_box(px, center_t, size_t)
        return (full_in_box - g.weak_perspective_projection(points, cam)).abs().max()

    # A flat body (all at the root depth) is exact. A real one is off to first order by
    # depth / Tz times its normalised distance from the optical axis (the box offset counts:
    # an off-centre body is seen from the side, which the weak-perspective crop camera ignores).
    flat = distant_body(depth=0.0)
    assert crop_vs_full(flat) < 1e-9
    body = distant_body()
    tz = float(translation[0, 2])
    offset = (center_t - img_hw.flip(-1) / 2).abs().max() * 2 / size_t
    err = float(crop_vs_full(body))
    assert err < 1.2 * (1 + float(offset)) * 0.15 / tz
    # ...and the comparison can fail: a 2% wrong scale or a shifted tx is caught.
    for wrong in (cam * torch.tensor([1.02, 1, 1], dtype=f64), cam + torch.tensor([0, 0.02, 0])):
        other = g.cam_crop2full(wrong, center_t, size_t, img_hw, focal)
        px = g.perspective_projection(flat, other, focal, img_hw.flip(-1) / 2)
        diff = g.pixels_to_box(px, center_t, size_t) - g.weak_perspective_projection(flat, cam)
        assert diff.abs().max() > 5e-3


def test_cam_crop2full_matches_projecting_a_posed_body():
    """The same check on the bundled body model, posed, at a typical crop scale."""
    from model import body
    from model.outputs import SMPLParams

    f64 = torch.float64
    model = body.BodyModel()
    pose = torch.zeros(1, 23, 3)
    pose[0, 15] = torch.tensor([0.0, 0.0, -1.0])  # left arm down
    pose[0, 16] = torch.tensor([0.0, 0.0, 0.6])  # right arm up
    pose[0, 3] = torch.tensor([1.2, 0.0, 0.0])  # left knee bent
    params = SMPLParams(
        global_orient=g.axis_angle_to_rotmat(torch.tensor([[[math.pi, 0.4, 0.0]]])),
        body_pose=g.axis_angle_to_rotmat(pose),
        betas=torch.zeros(1, 10),
    )
    with torch.no_grad():
        joints = model(params).joints.to(f64)
    joints = joints - joints[:, :1]  # about the pelvis, as the regressor's body is
    img_hw = torch.tensor([[1080.0, 1920.0]], dtype=f64)
    focal = g.default_focal_length(img_hw)
    center = torch.tensor([[1500.0, 400.0]], dtype=f64)  # far off the optical axis
    size = torch.tensor([500.0], dtype=f64)
    cam = torch.tensor([[0.95, 0.02, -0.05]], dtype=f64)
    translation = g.cam_crop2full(cam, center, size, img_hw, focal)
    px = g.perspective_projection(joints, translation, focal, img_hw.flip(-1) / 2)
    err = (g.pixels_to_box(px, center, size) - g.weak_perspective_projection(joints, cam)).abs()
    depth = float(joints[..., 2].abs().max())
    offset = float((center - img_hw.flip(-1) / 2).abs().max() * 2 / size)
    tz = float(translation[0, 2])
    assert float(err.max()) < 1.2 * (1 + offset) * depth / tz
    # In crop pixels (128 per normalised unit), the pelvis-relative body agrees closely.
    assert float(err.mean()) * 128 < 3.0


def test_cam_full2crop_inverts_cam_crop2full():
    gen = torch.Generator().manual_seed(4)
    cam = torch.rand(16, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.4, 0.4])
    cam = cam + torch.tensor([0.5, -0.2, -0.2])
    center = torch.rand(16, 2, generator=gen, dtype=torch.float64) * 500
    size = 100 + torch.rand(16, generator=gen, dtype=torch.float64) * 400
    img_hw = torch.tensor([[480.0, 640.0]], dtype=torch.float64).expand(16, 2)
    focal = torch.full((16,), 900.0, dtype=torch.float64)
    full = g.cam_crop2full(cam, center, size, img_hw, focal)
    torch.testing.assert_close(g.cam_full2crop(full, center, size, img_hw, focal), cam)


def test_cliff_bbox_info_raw_and_normalised():
    center = torch.tensor([[400.0, 100.0]])
    size = torch.tensor([300.0])
    img_hw = torch.tensor([[480.0, 640.0]])
    focal = torch.tensor([1000.0])
    raw = g.cliff_bbox_info(center, size, img_hw, focal, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[0.08, -0.14, 0.3]]))
    norm = g.cliff_bbox_info(center, size, img_hw, focal)
    torch.testing.assert_close(norm, torch.tensor([[0.08 * 2.8, -0.14 * 2.8, (0.3 - 0.24) / 0.06]]))


def test_box_coordinates_round_trip():
    pts = torch.randn(2, 5, 2, dtype=torch.float64) * 100 + 300
    center = torch.tensor([[320.0, 240.0], [100.0, 50.0]], dtype=torch.float64)
    size = torch.tensor([256.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(
        g.box_to_pixels(g.pixels_to_box(pts, center, size), center, size), pts
    )
    top = g.pixels_to_box(
        torch.tensor([[[320.0, 112.0]]], dtype=torch.float64), center[:1], size[:1]
    )
    torch.testing.assert_close(top, torch.tensor([[[0.0, -1.0]]], dtype=torch.float64))


def test_default_focal_length_is_image_diagonal():
    focal = g.default_focal_length(torch.tensor([[480, 640], [1080, 1920]]))
    torch.testing.assert_close(focal, torch.tensor([800.0, math.hypot(1080, 1920)]))


# --- Procrustes --------------------------------------------------------------------------


def test_similarity_procrustes_recovers_known_transform():
    gen = torch.Generator().manual_seed(5)
    source = torch.randn(3, 24, 3, generator=gen, dtype=torch.float64)
    rotation = g.axis_angle_to_rotmat(random_axis_angle(3, seed=6))
    scale = torch.tensor([0.5, 1.0, 2.3], dtype=torch.float64)
    translation = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    target = g.SimilarityTransform(scale, rotation, translation).apply(source)
    aligned, found = g.similarity_procrustes(source, target)
    torch.testing.assert_close(aligned, target)
    torch.testing.assert_close(found.scale, scale)
    torch.testing.assert_close(found.rotation, rotation)
    torch.testing.assert_close(found.translation, translation)


def test_similarity_procrustes_never_returns_a_reflection():
    source = torch.randn(1, 30, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    mirrored = source * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    aligned, found = g.similarity_procrustes(source, mirrored)
    torch.testing.assert_close(torch.linalg.det(found.rotation), torch.ones(1, dtype=torch.float64))
    # The best proper rotation cannot reproduce a mirror image exactly.
    assert (aligned - mirrored).norm(dim=-1).mean() > 0.1


def test_similarity_procrustes_reduces_error_under_noise():
    gen = torch.Generator().manual_seed(8)
    source = torch.randn(4, 17, 3, generator=gen)
    rotation = g.axis_angle_to_rotmat(random_axis_angle(4, seed=9).float())
    target = 1.3 * source @ rotation.transpose(-1, -2) + 0.5
    target = target + 0.01 * torch.randn(target.shape, generator=gen)
    aligned, _ = g.similarity_procrustes(source, target)
    assert (aligned - target).norm(dim=-1).mean() < 0.02


# --- every public function holds to the shapes its docstring states ----------------------

# Sizes substituted for the docstrings' symbols; "..." stands for two leading dims.
SIZES = {"B": 2, "N": 5}
ELLIPSIS = (2, 7)
SHAPE = re.compile(r"\(((?:\.\.\.|[A-Z]|\d+)(?:,\s*(?:\.\.\.|[A-Z]|\d+))*,?)\)")
DOCUMENTED = [
    "rot6d_to_rotmat",
    "rotmat_to_rot6d",
    "axis_angle_to_rotmat",
    "rotmat_to_axis_angle",
    "rotmat_to_quaternion",
    "quaternion_to_axis_angle",
    "perspective_projection",
    "weak_perspective_projection",
    "pixels_to_box",
    "box_to_pixels",
    "default_focal_length",
    "cliff_bbox_info",
    "cam_crop2full",
    "cam_full2crop",
    "similarity_procrustes",
]


def shape_of(spec: str) -> tuple[int, ...]:
    dims: list[int] = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        dims.extend(ELLIPSIS if token == "..." else [SIZES.get(token) or int(token)])
    return tuple(dims)


def documented_shape(doc: str, name: str) -> tuple[int, ...]:
    match = re.search(rf"\b{name}: " + SHAPE.pattern, doc)
    assert match, f"docstring does not state the shape of {name!r}"
    return shape_of(match.group(1))


@pytest.mark.parametrize("name", DOCUMENTED)
def test_shapes_match_docstrings(name):
    """Inputs are built from the shapes the docstring states; the output must have the
    shape stated after "Returns"."""
    func = getattr(g, name)
    doc = func.__doc__ or ""
    gen = torch.Generator().manual_seed(0)
    args = []
    for param in inspect.signature(func).parameters.values():
        if param.default is not inspect.Parameter.empty:
            continue
        shape = documented_shape(doc, param.name)
        args.append(torch.rand(shape, generator=gen) + 0.5)
    out = func(*args)
    returns = SHAPE.search(doc[doc.index("Returns") :])
    assert returns, f"{name}: no 'Returns (shape)' in the docstring"
    if isinstance(out, tuple):  # similarity_procrustes: (aligned, transform)
        out, transform = out
        fields_doc = g.SimilarityTransform.__doc__ or ""
        for field in ("scale", "rotation", "translation"):
            assert getattr(transform, field).shape == documented_shape(fields_doc, field)
    assert tuple(out.shape) == shape_of(returns.group(1))
    assert out.dtype == torch.float32
