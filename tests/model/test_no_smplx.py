"""The default pipeline needs no smplx: in a fresh interpreter where importing smplx fails
(and every attempt is recorded), load the body model, pose it, run a short TTO fit from
random weights and export the meshes, then check the values and that smplx never loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in the child. The import hook goes in first, before anything of ours is imported.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    attempts = []

    class NoSmplx(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("smplx", "chumpy"):
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoSmplx())

    import numpy as np
    import torch

    import model.export, training.evaluate, training.meta, training.pretrain  # noqa: F401
    from model.body import load_body_model
    from model.config import BackboneConfig, RegressorConfig, TTOConfig
    from model.geometry import axis_angle_to_rotmat
    from model.losses import project_points
    from model.outputs import CropInfo, RegressorOutput, SMPLParams
    from model.regressor import build_regressor
    from model.tto import TTOInputs, fit
    from worker.inference import mesh_files

    torch.manual_seed(0)
    torch.set_num_threads(1)
    body = load_body_model().eval()
    aa = 0.3 * torch.randn(2, 24, 3)
    aa[:, 0] += torch.tensor([torch.pi, 0.0, 0.0])
    rot = axis_angle_to_rotmat(aa)
    params = SMPLParams(rot[:, :1], rot[:, 1:], 0.5 * torch.randn(2, 10))
    with torch.no_grad():
        posed = body(params, torch.tensor([[0.0, 0.0, 3.0]] * 2))
        fast = body.keypoints_only(params)
    crop = CropInfo.from_boxes(
        torch.tensor([[320.0, 240.0]] * 2), torch.full((2,), 300.0),
        torch.tensor([[480.0, 640.0]] * 2),
    )
    cam = torch.tensor([[0.8, 0.0, 0.1]] * 2)
    px = project_points(fast.coco17, RegressorOutput(params, cam).translation(crop), crop)
    inputs = TTOInputs(torch.cat([px, torch.ones(2, 17, 1)], -1), crop,
                       images=torch.randn(2, 3, 256, 192))
    f_w = build_regressor(RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64), seed=0)
    result = fit(f_w.eval(), inputs, body, TTOConfig(adam_lr=3e-3, steps=3, early_stop=0.0))
    with torch.no_grad():
        fitted = body(result.final.params, result.final.translation(crop)).vertices
    files = mesh_files(fitted.numpy(), body.faces)
    print(json.dumps({
        "attempts": attempts,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("smplx", "chumpy")),
        "vertices": list(posed.vertices.shape),
        "coco17": list(fast.coco17.shape),
        "finite": bool(torch.isfinite(posed.vertices).all() and torch.isfinite(fitted).all()),
        "mean_depth": float(posed.vertices[..., 2].mean()),
        "steps_run": list(result.steps_run),
        "losses": [list(h) for h in result.loss_history],
        "obj_vertices": files["mesh.obj"].decode().count("\\nv "),
        "glb_magic": files["mesh.glb"][:4].decode(),
        "num_vertices": body.num_vertices,
    }))
    """
)


def test_the_default_pipeline_runs_without_smplx():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [] and out["loaded"] == []
    v = out["num_vertices"]
    assert out["vertices"] == [2, v, 3] and out["coco17"] == [2, 17, 3]
    assert out["finite"] and 2.5 < out["mean_depth"] < 3.5
    assert out["steps_run"] == [4, 4]
    for history in out["losses"]:
        assert len(history) == 4 and all(loss == loss and loss >= 0 for loss in history)
    assert out["obj_vertices"] == 2 * v  # both people, one mesh
    assert out["glb_magic"] == "glTF"
