"""Specification of model/lbs.py: the shapes each function states, forward kinematics
against the textbook one-joint-at-a-time chain, skinning's rigid cases, and finite gradients.
(The whole body model against smplx is in test_body_smplx.py.)"""

from __future__ import annotations

import pytest
import torch

from model import lbs
from model.geometry import axis_angle_to_rotmat

# SMPL's kinematic tree (kintree_table[0], the root's parent as -1).
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
B, P, J, S = 2, 50, 24, 10


def random_rot(b: int, j: int, scale: float = 0.7) -> torch.Tensor:
    return axis_angle_to_rotmat(torch.randn(b, j, 3) * scale)


def chain_forward_kinematics(rot: torch.Tensor, joints: torch.Tensor, parents) -> tuple:
    """The textbook chain: world transform of joint j = world(parent) ∘ local(j), one by one."""
    world_r, world_t = [rot[:, 0]], [joints[:, 0]]
    for j in range(1, len(parents)):
        p = parents[j]
        world_r.append(world_r[p] @ rot[:, j])
        world_t.append((world_r[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0] + world_t[p])
    r, t = torch.stack(world_r, 1), torch.stack(world_t, 1)
    return t, r, t - (r @ joints[..., None])[..., 0]


def test_blend_functions_have_their_stated_shapes():
    torch.manual_seed(0)
    shape_basis = lbs.blend_basis(torch.randn(P, 3, S))
    pose_basis = lbs.blend_basis(torch.randn(P, 3, 9 * (J - 1)))
    assert shape_basis.shape == (S, P * 3) and pose_basis.shape == (9 * (J - 1), P * 3)
    assert lbs.blend_shapes(torch.randn(B, S), shape_basis).shape == (B, P, 3)
    rot = random_rot(B, J)
    assert lbs.pose_features(rot).shape == (B, 9 * (J - 1))
    assert lbs.pose_blend(rot, pose_basis).shape == (B, P, 3)
    assert lbs.vertices2joints(torch.rand(J, P), torch.randn(B, P, 3)).shape == (B, J, 3)
    with pytest.raises(ValueError, match=r"\(P, 3, C\)"):
        lbs.blend_basis(torch.randn(P * 3, S))


def test_blend_shapes_is_the_per_point_sum_of_directions():
    torch.manual_seed(1)
    dirs, betas = torch.randn(P, 3, S), torch.randn(B, S)
    expected = torch.einsum("bs,pcs->bpc", betas, dirs)
    torch.testing.assert_close(lbs.blend_shapes(betas, lbs.blend_basis(dirs)), expected)


def test_pose_blend_is_zero_in_the_rest_pose():
    basis = lbs.blend_basis(torch.randn(P, 3, 9 * (J - 1)))
    rest = torch.eye(3).expand(B, J, 3, 3)
    assert float(lbs.pose_blend(rest, basis).abs().max()) == 0.0
    assert float(lbs.pose_blend(random_rot(B, J), basis).abs().max()) > 0.0


def test_smpl_tree_has_nine_levels_and_a_root_first_order():
    tree = lbs.kinematic_tree(SMPL_PARENTS)
    assert tree.num_joints == J and len(tree.levels) == 8  # + the root's level: nine
    order = tree.order.tolist()
    assert sorted(order) == list(range(J)) and order[0] == 0
    assert tree.order[tree.inverse].tolist() == list(range(J))
    assert any(span is None for _, _, span in tree.levels)  # spine3's three children


@pytest.mark.parametrize("parents", [(0, 0), (-1, 2, 0), (-1, 0, -1)])
def test_a_tree_without_one_root_first_is_refused(parents):
    with pytest.raises(ValueError, match="only root"):
        lbs.kinematic_tree(parents)


@pytest.mark.parametrize("parents", [SMPL_PARENTS, (-1, 0, 1, 1, 0, 4, 2, 2)])
def test_level_wise_forward_kinematics_equals_the_joint_by_joint_chain(parents):
    torch.manual_seed(2)
    j = len(parents)
    rot, joints = random_rot(3, j), torch.randn(3, j, 3)
    out = lbs.forward_kinematics(rot, joints, lbs.kinematic_tree(parents))
    assert out.joints.shape == (3, j, 3) and out.rotations.shape == (3, j, 3, 3)
    assert out.translations.shape == (3, j, 3)
    posed, world_r, skin_t = chain_forward_kinematics(rot, joints, parents)
    torch.testing.assert_close(out.joints, posed, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rotations, world_r, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.translations, skin_t, atol=1e-6, rtol=0)


def test_skinning_with_one_joint_per_point_is_that_joints_rigid_motion():
    torch.manual_seed(3)
    rot, trans, points = random_rot(B, J), torch.randn(B, J, 3), torch.randn(B, P, 3)
    owner = torch.randint(0, J, (P,))
    weights = torch.nn.functional.one_hot(owner, J).float()
    out = lbs.skin(weights, rot, trans, points)
    assert out.shape == (B, P, 3)
    expected = (rot[:, owner] @ points[..., None])[..., 0] + trans[:, owner]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    identity = lbs.skin(torch.softmax(torch.randn(P, J), -1), torch.eye(3).expand(B, J, 3, 3),
                        torch.zeros(B, J, 3), points)
    torch.testing.assert_close(identity, points)


def smpl_like_model() -> dict[str, object]:
    template = torch.randn(P, 3)
    return {
        "template": template,
        "shape_basis": lbs.blend_basis(torch.randn(P, 3, S) * 0.01),
        "pose_basis": lbs.blend_basis(torch.randn(P, 3, 9 * (J - 1)) * 0.01),
        "regressor": torch.softmax(torch.randn(J, P), -1),
        "tree": lbs.kinematic_tree(SMPL_PARENTS),
        "weights": torch.softmax(torch.randn(P, J) * 3, -1),
    }


def test_lbs_in_the_rest_pose_gives_the_shaped_template_and_its_joints():
    torch.manual_seed(4)
    m = smpl_like_model()
    out = lbs.lbs(torch.zeros(B, S), torch.eye(3).expand(B, J, 3, 3), **m)
    assert out.vertices.shape == (B, P, 3) and out.joints.shape == (B, J, 3)
    torch.testing.assert_close(out.vertices, m["template"].expand(B, P, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.joints, (m["regressor"] @ m["template"]).expand(B, J, 3))


def test_lbs_has_finite_gradients_and_takes_an_empty_batch():
    torch.manual_seed(5)
    m = smpl_like_model()
    aa = (torch.randn(B, J, 3) * 0.5).requires_grad_()
    betas = torch.randn(B, S, requires_grad=True)
    out = lbs.lbs(betas, axis_angle_to_rotmat(aa), **m)
    (out.vertices.sum() + out.joints.sum()).backward()
    for grad in (aa.grad, betas.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    empty = lbs.lbs(torch.zeros(0, S), torch.zeros(0, J, 3, 3), **m)
    assert empty.vertices.shape == (0, P, 3) and empty.joints.shape == (0, J, 3)


def test_small_matmul_compiled_equals_matmul() -> None:
    """lbs.small_matmul: a broadcast product inside a compiled graph, `@` outside."""
    a, b, v = random_rot(3, 5), random_rot(3, 5), torch.randn(3, 5, 3, 1)
    assert torch.equal(lbs.small_matmul(a, b), a @ b)
    compiled = torch.compile(lambda x, y, z: (lbs.small_matmul(x, y), lbs.small_matmul(x, z)))
    rr, rv = compiled(a, b, v)
    assert rr.shape == (3, 5, 3, 3) and rv.shape == (3, 5, 3, 1)
    assert torch.allclose(rr, a @ b, atol=1e-6) and torch.allclose(rv, a @ v, atol=1e-6)
    # Captured, the compiled graph holds broadcast products, no matrix product.
    names: set[str] = set()

    def backend(gm, _inputs):  # type: ignore[no-untyped-def]
        names.update(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(lambda x, y: lbs.small_matmul(x, y), backend=backend)(a, b)
    assert "mul" in names and not names & {"matmul", "bmm", "__matmul__"}
