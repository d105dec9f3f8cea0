"""The pipeline's stages on their own (worker/stages/): the typed options in, arrays out."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from model.config import TTOConfig
from model.keypoints import convert_keypoints, get_format
from service.contract import KEYPOINT_COUNTS, PersonIn, TTOOptions
from worker.pipeline import PermanentJobError
from worker.stages.fit import tto_config
from worker.stages.people import FIT_FORMAT, parse_people


def test_the_contracts_keypoint_formats_are_the_models() -> None:
    """The API (torch- and model-free) keeps its own table of formats; it must agree with
    `model.keypoints`, which the worker uses to map them to COCO-17."""
    assert {name: get_format(name).num_keypoints for name in KEYPOINT_COUNTS} == KEYPOINT_COUNTS
    assert FIT_FORMAT in KEYPOINT_COUNTS


@pytest.mark.parametrize("fmt", sorted(KEYPOINT_COUNTS))
def test_request_keypoints_become_coco17(fmt: str) -> None:
    coco = np.zeros((17, 3), np.float32)
    coco[:, 0] = np.arange(17) * 3.0 + 10.0
    coco[:, 1] = np.arange(17) * 2.0 + 20.0
    coco[:, 2] = 0.75
    points = convert_keypoints(coco, "coco17", fmt)
    person = PersonIn.model_validate(
        {"bbox": [0, 0, 90, 90], "keypoints": {"format": fmt, "points": points.tolist()}}
    )
    (found,) = parse_people([person], 100, 100)
    assert found.keypoints is not None and found.keypoints.dtype == np.float32
    np.testing.assert_allclose(found.keypoints, coco, atol=1e-5)
    np.testing.assert_array_equal(found.bbox, [0, 0, 90, 90])


def test_tto_config_takes_the_requests_steps_and_refuses_another_scope() -> None:
    checkpoint = SimpleNamespace(tto_scope="head", tto=TTOConfig(steps=14))
    assert tto_config(checkpoint, TTOOptions()) == TTOConfig(steps=14)
    assert tto_config(checkpoint, TTOOptions(steps=0, scope="head")).steps == 0
    with pytest.raises(PermanentJobError, match="meta-trained for the 'head' scope"):
        tto_config(checkpoint, TTOOptions(scope="full"))
