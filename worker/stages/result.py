"""Stage "result": the typed §5 result (`service.contract.RecoverResult`) of one job.

Keypoints in the result (`keypoints_2d`) are the COCO-17 points the fit used, in full-image
pixels. `fit.skipped` says why a person got no TTO (else null).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.body import BodyModel
from model.config import TTOConfig
from model.outputs import CropInfo, FitResult, RegressorOutput
from model.tto import SKIP_NO_KEYPOINTS
from service.contract import (
    CameraOut,
    FitOut,
    ImageInfo,
    InitialOut,
    KeypointSource,
    ModelInfo,
    PersonOut,
    RecoverResult,
    SMPLOut,
)
from worker.stages.people import Person

NO_KEYPOINTS = "no keypoints: none given for this person and the model has no detector"
ZERO_STEPS = "tto.steps is 0: regression only"


def recover_result(
    checkpoint: Any,
    body: BodyModel,
    image_hw: tuple[int, int],
    focal: float,
    people: list[PersonOut],
    timings: dict[str, float],
) -> RecoverResult:
    height, width = image_hw
    return RecoverResult(
        model=ModelInfo(
            name=checkpoint.model_name,
            version=checkpoint.model_version,
            body_model=body.id,
            tto_scope=checkpoint.tto_scope,
        ),
        image=ImageInfo(width=width, height=height, focal_length=focal),
        people=people,
        timings_ms={k: round(v, 3) for k, v in timings.items()},
    )


def people_out(
    body: BodyModel,
    device: torch.device,
    people: Sequence[Person],
    crop: CropInfo,
    keypoints: np.ndarray,
    sources: Sequence[KeypointSource | None],
    initial: RegressorOutput,
    fit: FitResult | None,
    config: TTOConfig,
    wanted: set[str],
) -> list[PersonOut]:
    """Each person's entry. keypoints: (B, 17, 3) the fit's COCO-17 points."""
    final = fit.final if fit is not None else initial
    errors = reprojection_px(body, device, final, crop, torch.from_numpy(keypoints))
    joints = camera_joints(body, device, final, crop) if "joints3d" in wanted else None
    # The batch's axis-angles and translations once, not once per person.
    smpl, smpl0 = smpl_outs(final), smpl_outs(initial)
    trans, trans0 = final.translation(crop), initial.translation(crop)
    out = []
    for i, person in enumerate(people):
        extra = {"joints3d": joints[i].tolist()} if joints is not None else {}
        out.append(
            PersonOut(
                bbox=[float(v) for v in person.bbox],
                smpl=smpl[i],
                camera=CameraOut(translation=_floats(trans[i])),
                keypoints_2d=keypoints[i].tolist() if sources[i] else None,
                keypoint_source=sources[i],
                fit=fit_out(fit, i, config, sources[i], errors[i]),
                initial=InitialOut(smpl=smpl0[i], camera=CameraOut(translation=_floats(trans0[i]))),
                **extra,
            )
        )
    return out


def fit_out(
    fit: FitResult | None, i: int, config: TTOConfig, source: str | None, error: float | None
) -> FitOut:
    """Person i's fit report; `skipped` says why no TTO ran."""
    if fit is None or fit.skipped[i] is not None:
        if config.steps == 0:
            reason = ZERO_STEPS
        elif source is None:
            reason = NO_KEYPOINTS
        else:  # keypoints, but none confident
            reason = (fit.skipped[i] if fit is not None else None) or SKIP_NO_KEYPOINTS
        return FitOut(
            steps_run=0,
            loss_start=None,
            loss_end=None,
            stopped_early=False,
            reprojection_error_px=error,
            skipped=reason,
        )
    return FitOut(
        steps_run=int(fit.steps_run[i]),
        loss_start=_finite(fit.loss_start(i)),
        loss_end=_finite(fit.final_loss[i]),
        stopped_early=bool(fit.stopped_early[i]),
        reprojection_error_px=error,
        skipped=None,
    )


def smpl_outs(pred: RegressorOutput) -> list[SMPLOut]:
    """Each person's SMPL parameters as axis-angle: global_orient (3), body_pose (69),
    betas (10)."""
    from model.geometry import rotmat_to_axis_angle

    aa = rotmat_to_axis_angle(pred.params.rotmats().double())  # (B, 24, 3)
    return [
        SMPLOut(
            global_orient=_floats(aa[i, 0]),
            body_pose=_floats(aa[i, 1:].reshape(-1)),
            betas=_floats(pred.params.betas[i]),
        )
        for i in range(aa.shape[0])
    ]


def reprojection_px(
    body: BodyModel,
    device: torch.device,
    pred: RegressorOutput,
    crop: CropInfo,
    keypoints: torch.Tensor,
) -> list[float | None]:
    """Per person, mean pixel distance of the model's COCO-17 points to `keypoints`
    (B, 17, 3); None where it is not finite (no confident keypoint)."""
    from model.losses import project_points, reprojection_error_px

    with torch.no_grad():
        kp3d = body.keypoints_only(pred.to(device).params).coco17.cpu().float()
        px = project_points(kp3d, pred.translation(crop), crop)
        err = reprojection_error_px(px, keypoints)
    return [_finite(float(e)) for e in err]


def camera_joints(
    body: BodyModel, device: torch.device, pred: RegressorOutput, crop: CropInfo
) -> np.ndarray:
    """(B, 24, 3) SMPL joints in the camera frame, metres."""
    with torch.no_grad():
        out = body.keypoints_only(pred.to(device).params, pred.translation(crop).to(device))
    return out.joints.float().cpu().numpy()


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().reshape(-1)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
