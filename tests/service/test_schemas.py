"""Request options: formats and counts, finite numbers, ranges; boxes against the image."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from service.contract import KEYPOINT_COUNTS, RecoverOptions
from service.schemas import check_against_image


def _points(n: int, conf: float = 0.9) -> list[list[float]]:
    return [[10.0 + i, 20.0 + i, conf] for i in range(n)]


@pytest.mark.parametrize(("fmt", "count"), sorted(KEYPOINT_COUNTS.items()))
def test_each_format_takes_its_own_count(fmt: str, count: int) -> None:
    options = RecoverOptions.model_validate(
        {"people": [{"keypoints": {"format": fmt, "points": _points(count)}}]}
    )
    assert options.people[0].keypoints is not None
    assert len(options.people[0].keypoints.points) == count
    with pytest.raises(ValidationError, match=f"{fmt} has {count} keypoints, got {count - 1}"):
        RecoverOptions.model_validate(
            {"people": [{"keypoints": {"format": fmt, "points": _points(count - 1)}}]}
        )


@pytest.mark.parametrize(
    "options",
    [
        {"people": [{"keypoints": {"format": "h36m17", "points": _points(17)}}]},
        {"people": [{"keypoints": {"points": [[math.nan, 1.0, 1.0]] + _points(16)}}]},
        {"people": [{"keypoints": {"points": _points(17, conf=1.5)}}]},
        {"people": [{"bbox": [0, 0, math.inf, 10]}]},
        {"people": [{"bbox": [10, 10, 5, 20]}]},
        {"people": [{"bbox": [0, 0, 10]}]},
        {"people": [{}]},
        {"focal_length": -5},
        {"focal_length": math.nan},
        {"tto": {"steps": 31}},
        {"tto": {"steps": -1}},
        {"tto": {"scope": "everything"}},
        {"return": ["video"]},
        {"unknown_field": 1},
    ],
    ids=lambda o: str(o)[:40],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RecoverOptions.model_validate(options)


def test_defaults_and_stored_form() -> None:
    options = RecoverOptions.model_validate({"return": ["overlay", "mesh", "mesh"]})
    stored = options.to_job()
    assert stored["return"] == ["mesh", "overlay"]
    assert stored["tto"] == {"steps": None, "scope": None}  # None: the model's own schedule
    assert stored["people"] == [] and stored["focal_length"] is None


def test_boxes_must_meet_the_image() -> None:
    inside = RecoverOptions.model_validate({"people": [{"bbox": [-5, -5, 50, 50]}]})
    check_against_image(inside, 100, 80, max_people=4)  # sticking out a little is fine
    outside = RecoverOptions.model_validate({"people": [{"bbox": [120, 10, 200, 70]}]})
    with pytest.raises(ValueError, match="outside the 100x80 image"):
        check_against_image(outside, 100, 80, max_people=4)
    huge = RecoverOptions.model_validate({"people": [{"bbox": [0, 0, 1e5, 50]}]})
    with pytest.raises(ValueError, match="far larger"):
        check_against_image(huge, 100, 80, max_people=4)


def test_too_many_people_are_refused() -> None:
    options = RecoverOptions.model_validate({"people": [{"bbox": [0, 0, 10, 10]}] * 5})
    with pytest.raises(ValueError, match="at most 4"):
        check_against_image(options, 100, 80, max_people=4)
