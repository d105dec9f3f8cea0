"""Stage "regress": f_w's ONNX backbone and head over the crops (for a BlazePose model: its
encoder over BlazePose's output vector) -> features and the initial SMPL + crop camera;
f_u the same, for step 0's agreement terms (pseudo-SMPL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.outputs import RegressorOutput
from worker.pipeline import PipelineUnavailable
from worker.runtime import LoadedModel, OnnxGraph
from worker.stages.people import Crops


def regress(
    model: LoadedModel, crops: Crops, landmarks: Sequence[Any]
) -> tuple[np.ndarray, RegressorOutput, RegressorOutput | None]:
    """f_w (and f_u): features (B, F), initial and auxiliary `RegressorOutput`s.
    landmarks: per job, its people's `Landmarks` (used by a BlazePose model only)."""
    from model.backbones import normalize_crops

    info = crops.crop.bbox_info().numpy()
    g = model.graphs
    if model.blazepose_variant is not None:
        from model.blazepose import head_features

        # BlazePose's output vector goes through each network's own encoder graph.
        crop = crops.crop
        vector = head_features(cat_landmarks(landmarks), crop.center.numpy(), crop.box_size.numpy())
        features = g["f_w_backbone"](blazepose=vector)["features"]
        aux_features = g["f_u_backbone"](blazepose=vector)["features"] if model.has_aux else None
    else:
        x = normalize_crops(crops.images)
        features = g["f_w_backbone"](image=x)["features"]
        aux_features = g["f_u_backbone"](image=x)["features"] if model.has_aux else None
    initial = _head(g["f_w_head"], features, info)
    aux = None
    if model.has_aux:
        aux = _head(g["f_u_head"], aux_features, info)
    return features, initial, aux


def _head(graph: OnnxGraph, features: Any, bbox_info: np.ndarray) -> RegressorOutput:
    out = graph(features=features, bbox_info=bbox_info)
    return RegressorOutput.from_numpy(out["rotmat"], out["betas"], out["crop_cam"])


def cat_landmarks(landmarks: Sequence[Any]) -> Any:
    """Several jobs' `Landmarks` as one batch, in order."""
    from model.blazepose import concat_landmarks

    if any(lm is None for lm in landmarks):
        raise PipelineUnavailable("a BlazePose model needs BlazePose's landmarks for every person")
    return landmarks[0] if len(landmarks) == 1 else concat_landmarks(landmarks)
