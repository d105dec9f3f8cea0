"""HTTP schemas of the API's answers (`JobAccepted`, `JobView`, `ErrorResponse`). What
clients send and what a job produces is the typed contract in `service.contract`.
See ARCHITECTURE.md §5.

Checks of the options that need the decoded image (boxes inside it) live in
`check_against_image`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.contract import RecoverOptions, RecoverResult


def check_against_image(options: RecoverOptions, width: int, height: int, max_people: int) -> None:
    """Raise ValueError when the options do not fit the decoded image."""
    if len(options.people) > max_people:
        raise ValueError(f"{len(options.people)} people given; at most {max_people} per request")
    for i, person in enumerate(options.people):
        if person.keypoints is not None:
            _check_keypoints(i, person.keypoints.points, width, height)
        if person.bbox is None:
            continue
        x0, y0, x1, y1 = person.bbox
        # Detectors' boxes may stick out a little; a box that misses the image is a mistake.
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(
                f"people[{i}].bbox {list(person.bbox)} lies outside the {width}x{height} image"
            )
        if (x1 - x0) > 4 * width or (y1 - y0) > 4 * height:
            raise ValueError(
                f"people[{i}].bbox {list(person.bbox)} is far larger than the {width}x{height} image"
            )


def _check_keypoints(
    i: int, points: list[tuple[float, float, float]], width: int, height: int
) -> None:
    """Confident keypoints must lie within one image size of the image: farther out they
    are a unit or coordinate mistake, and the fit's loss would not be finite."""
    for j, (x, y, c) in enumerate(points):
        if c > 0 and not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            raise ValueError(
                f"people[{i}].keypoints.points[{j}] [{x:g}, {y:g}] lies far outside the "
                f"{width}x{height} image (more than one image size beyond its edges); "
                "keypoints are full-image pixels, or give them confidence 0"
            )


class Links(BaseModel):
    self: str
    files: dict[str, str] = Field(default_factory=dict)


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    links: Links


class ProgressOut(BaseModel):
    stage: str
    step: int
    total: int


class ErrorBody(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    """GET /jobs/{id}. `result`: the worker's `RecoverResult` JSON, handed back as stored."""

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    updated_at: str
    progress: ProgressOut | None = None
    result: RecoverResult | None = None
    error: ErrorBody | None = None
    links: Links


class ErrorResponse(BaseModel):
    error: ErrorBody
