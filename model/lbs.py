"""Linear blend skinning of SMPL-format body models, as pure tensor functions.

The SMPL maths (Loper et al. 2015, "SMPL: A Skinned Multi-Person Linear Model"), written for
this project so that posing a body needs no third-party body-model package:

1. shape: the template plus a linear blend of shape directions (`blend_shapes`);
2. joints: a fixed linear regressor over the shaped vertices (`vertices2joints`);
3. pose correctives: a linear blend of pose directions driven by the joints' rotations
   away from the rest pose (`pose_blend`; zero for models that have none);
4. forward kinematics down the kinematic tree (`forward_kinematics`);
5. linear blend skinning of the points with the joints' rigid transforms (`skin`).

`lbs` composes the five steps. A model has P points (V for a whole mesh), J joints (SMPL: 24)
and S shape directions; batches have B bodies. Blend directions are passed as "bases",
(C, P * 3) matrices (`blend_basis`), so that a blend is a single matrix product.

The skinning transforms are a rotation R (B, J, 3, 3) and a translation t (B, J, 3), a rest
point x going to R x + t: skinning mixes 12 numbers per joint, not 16. Forward kinematics
composes them down the tree as 4x4 homogeneous matrices, one product per level (see
`forward_kinematics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def blend_basis(directions: Tensor) -> Tensor:
    """Blend directions (P, 3, C) as the (C, P * 3) matrix `blend_shapes`/`pose_blend` take."""
    if directions.ndim != 3 or directions.shape[1] != 3:
        raise ValueError(f"blend directions must be (P, 3, C), got {tuple(directions.shape)}")
    return directions.reshape(-1, directions.shape[-1]).T.contiguous()


def blend_shapes(betas: Tensor, basis: Tensor) -> Tensor:
    """Per-point shape offsets.

    betas: (B, S) shape coefficients. basis: (S, P * 3) shape directions (`blend_basis`).
    Returns (B, P, 3); add it to the template (P, 3).
    """
    return (betas @ basis).unflatten(-1, (-1, 3))


def pose_features(rot: Tensor) -> Tensor:
    """What drives the pose correctives: each non-root joint's rotation minus the identity,
    flattened, so that the rest pose gives zero. rot: (B, J, 3, 3) -> (B, 9 * (J - 1))."""
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    return (rot[:, 1:] - eye).flatten(1)


def pose_blend(rot: Tensor, basis: Tensor) -> Tensor:
    """Per-point pose-corrective offsets.

    rot: (B, J, 3, 3) local joint rotations. basis: (9 * (J - 1), P * 3) pose directions
    (`blend_basis` of SMPL's `posedirs` (P, 3, 207)). Returns (B, P, 3); add it to the shaped
    points before skinning.
    """
    return (pose_features(rot) @ basis).unflatten(-1, (-1, 3))


def vertices2joints(regressor: Tensor, vertices: Tensor) -> Tensor:
    """Joint locations regressed from a mesh.

    regressor: (J, V) weights (SMPL's `J_regressor`). vertices: (B, V, 3). Returns (B, J, 3).
    """
    return regressor @ vertices


@dataclass(frozen=True)
class KinematicTree:
    """A kinematic tree by depth, for `forward_kinematics`; build it with `kinematic_tree`.

    Joints are put in level order: level 0 is the root, the joints of level L have their
    parents in level L-1 (SMPL's tree has 9 levels). Forward kinematics is then one batched
    product per level instead of one per joint (9 instead of 23 for SMPL).

    parents: (J,) long, parents[0] = -1 and parents[j] < j otherwise.
    order: (J,) long, the joints in level order. inverse: (J,) long, where each joint sits
    in `order`. parent_slot: (J,) long, indexed in level order: where each joint's parent sits
    within the level before (0 for the root).
    levels: per non-root level, (start, end, parents): the level's joints are
    order[start:end]; `parents` is (a, b) when their parents are the run a:b of the level
    before (one joint broadcast when b = a + 1), None when they must be gathered with
    parent_slot[start:end].
    """

    parents: Tensor
    order: Tensor
    inverse: Tensor
    parent_slot: Tensor
    levels: tuple[tuple[int, int, tuple[int, int] | None], ...]

    @property
    def num_joints(self) -> int:
        return int(self.order.shape[0])

    def to(self, device: torch.device | str) -> KinematicTree:
        """The same tree with its index tensors on `device`."""
        return KinematicTree(
            self.parents.to(device), self.order.to(device), self.inverse.to(device),
            self.parent_slot.to(device), self.levels,
        )


def kinematic_tree(parents: Sequence[int]) -> KinematicTree:
    """The `KinematicTree` of a parent list (SMPL: `kintree_table[0]`, root first).

    Raises ValueError unless joint 0 is the only root and every parent comes before its child.
    """
    parents = [int(p) for p in parents]
    bad = [j for j in range(1, len(parents)) if not 0 <= parents[j] < j]
    if not parents or parents[0] != -1 or bad:
        raise ValueError(
            f"a kinematic tree needs joint 0 as its only root and each parent before its "
            f"child; joints {bad} break that (parents {parents})"
        )
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    by_level = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
    order = [j for joints in by_level for j in joints]
    slot = [0] * len(parents)
    levels: list[tuple[int, int, tuple[int, int] | None]] = []
    start = 1  # after the root
    for d in range(1, len(by_level)):
        joints = by_level[d]
        end = start + len(joints)
        where = [by_level[d - 1].index(parents[j]) for j in joints]
        slot[start:end] = where
        span: tuple[int, int] | None = None
        if len(set(where)) == 1:
            span = (where[0], where[0] + 1)
        elif where == list(range(where[0], where[0] + len(where))):
            span = (where[0], where[-1] + 1)
        levels.append((start, end, span))
        start = end
    return KinematicTree(
        parents=torch.tensor(parents),
        order=torch.tensor(order),
        inverse=torch.tensor([order.index(j) for j in range(len(parents))]),
        parent_slot=torch.tensor(slot),
        levels=tuple(levels),
    )


@dataclass(frozen=True)
class RigidTransforms:
    """The posed skeleton, in the tree's joint order.

    joints: (B, J, 3) posed joint locations. rotations (B, J, 3, 3) and translations (B, J, 3):
    each joint's skinning transform, a rest point x going to R x + t.
    """

    joints: Tensor
    rotations: Tensor
    translations: Tensor


def small_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for stacks of 3x3 (or 3x1) matrices; inside a `torch.compile`d graph as a
    broadcast product, which inductor fuses with the operations around it (a batched
    matrix product is a library call each, 33 of them in a compiled TTO step)."""
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def forward_kinematics(rot: Tensor, joints: Tensor, tree: KinematicTree) -> RigidTransforms:
    """Pose a skeleton: compose the local transforms down the tree, one product per level.

    rot: (B, J, 3, 3) local joint rotations (the root's is the global orientation).
    joints: (B, J, 3) rest joint locations.

    Each joint's local transform (its rotation, and its offset from its parent) is one 4x4
    homogeneous matrix, so that a level composes rotation and translation in one product
    instead of two: a step of the TTO is bound by the number of operations its forward and
    backward run, not by their arithmetic (a whole eager fit of the shipped model was about
    a tenth faster this way, measured here).
    """
    b, j = rot.shape[:2]
    rel = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, tree.parents[1:]]], dim=1)
    bottom = rot.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(b, j, 1, 4)
    local = torch.cat([torch.cat([rot, rel[..., None]], dim=-1), bottom], dim=-2)[:, tree.order]
    # One split, not a slice per level: its backward is one concatenation instead of a
    # zero-filled copy of `local` per level, summed.
    parts = local.split([1] + [end - start for start, end, _ in tree.levels], dim=1)
    levels: list[Tensor] = [parts[0]]  # level 0: the root alone
    for (start, end, span), part in zip(tree.levels, parts[1:], strict=True):
        if span is None:
            parent = levels[-1][:, tree.parent_slot[start:end]]
        else:  # a run of the level before; a single parent broadcasts in the product
            parent = levels[-1][:, span[0] : span[1]]
        levels.append(small_matmul(parent, part))
    world = torch.cat(levels, dim=1)[:, tree.inverse]
    world_r, posed = world[..., :3, :].split((3, 1), dim=-1)
    posed = posed[..., 0]
    # A rest point x goes to R (x - j_rest) + j_posed.
    skin_t = posed - small_matmul(world_r, joints[..., None])[..., 0]
    return RigidTransforms(joints=posed, rotations=world_r, translations=skin_t)


def skin(weights: Tensor, rotations: Tensor, translations: Tensor, points: Tensor) -> Tensor:
    """Linear blend skinning: each point moves by its weighted mix of the joint transforms.

    weights: (P, J) skinning weights (rows sum to 1). rotations: (B, J, 3, 3) and
    translations: (B, J, 3), the transforms (`RigidTransforms`). points: (B, P, 3) rest
    points. Returns (B, P, 3).
    """
    # Mixing the 9 + 3 transform numbers per point, then applying the mix, is J times cheaper
    # than transforming every point by every joint.
    mixed_r = (weights @ rotations.flatten(2)).unflatten(-1, (3, 3))
    return small_matmul(mixed_r, points[..., None])[..., 0] + weights @ translations


@dataclass(frozen=True)
class Posed:
    """lbs's result. vertices: (B, V, 3) posed mesh. joints: (B, J, 3) posed joints."""

    vertices: Tensor
    joints: Tensor


def lbs(
    betas: Tensor,
    rot: Tensor,
    template: Tensor,
    shape_basis: Tensor,
    pose_basis: Tensor,
    regressor: Tensor,
    tree: KinematicTree,
    weights: Tensor,
) -> Posed:
    """The full SMPL forward pass: shape, regress the joints, add the pose correctives, pose
    the skeleton, skin the mesh.

    betas: (B, S). rot: (B, J, 3, 3) local joint rotations. template: (V, 3) rest mesh.
    shape_basis: (S, V * 3) and pose_basis: (9 * (J - 1), V * 3), see `blend_basis`.
    regressor: (J, V). tree: the model's `KinematicTree`. weights: (V, J) skinning weights.
    """
    shaped = template + blend_shapes(betas, shape_basis)
    rest_joints = vertices2joints(regressor, shaped)
    corrected = shaped + pose_blend(rot, pose_basis)
    pose = forward_kinematics(rot, rest_joints, tree)
    vertices = skin(weights, pose.rotations, pose.translations, corrected)
    return Posed(vertices=vertices, joints=pose.joints)
