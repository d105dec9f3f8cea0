"""HTTP schemas, split by direction: what clients send (`RecoverOptions`) and what the API
answers (`JobAccepted`, `JobView`, `ErrorResponse`). See ARCHITECTURE.md §5.

Checks that need the decoded image (boxes inside it) live in `check_against_image`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Points per accepted keypoint format; the worker maps each to COCO-17 by joint name.
KEYPOINT_COUNTS = {"coco17": 17, "openpose25": 25, "mediapipe33": 33}
MAX_TTO_STEPS = 30


class _Strict(BaseModel):
    # NaN/Inf never mean anything here; unknown fields are usually typos.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class KeypointsIn(_Strict):
    format: Literal["coco17", "openpose25", "mediapipe33"] = "coco17"
    points: list[tuple[float, float, float]] = Field(
        description="[x, y, confidence] in full-image pixels, confidence in [0, 1]"
    )

    @model_validator(mode="after")
    def _check_points(self) -> KeypointsIn:
        want = KEYPOINT_COUNTS[self.format]
        if len(self.points) != want:
            raise ValueError(
                f"format {self.format} has {want} keypoints, got {len(self.points)}; "
                f"formats and counts: {KEYPOINT_COUNTS}"
            )
        for i, (_, _, conf) in enumerate(self.points):
            if not 0.0 <= conf <= 1.0:
                raise ValueError(f"keypoint {i}: confidence {conf} is not in [0, 1]")
        return self


class PersonIn(_Strict):
    bbox: tuple[float, float, float, float] | None = Field(
        default=None, description="[x0, y0, x1, y1] in full-image pixels"
    )
    keypoints: KeypointsIn | None = None

    @model_validator(mode="after")
    def _check(self) -> PersonIn:
        if self.bbox is None and self.keypoints is None:
            raise ValueError("a person needs a bbox, keypoints or both")
        if self.bbox is not None:
            x0, y0, x1, y1 = self.bbox
            if not (x1 > x0 and y1 > y0):
                raise ValueError(
                    f"bbox {list(self.bbox)} is inverted or empty: need x0 < x1, y0 < y1"
                )
        return self


class TTOOptions(_Strict):
    steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTO_STEPS,
        description="test-time optimisation steps; default: the model's own schedule",
    )
    scope: Literal["head", "full"] | None = Field(
        default=None,
        description="parameters adapted; default: the scope the model was trained with",
    )


class RecoverOptions(_Strict):
    """The optional `options` JSON part of POST /recover."""

    people: list[PersonIn] = Field(
        default_factory=list,
        max_length=64,
        description="people to recover; empty: the worker finds them (or uses the whole image)",
    )
    focal_length: float | None = Field(
        default=None, gt=0, le=1e6, description="pixels; default sqrt(W^2 + H^2)"
    )
    tto: TTOOptions = Field(default_factory=TTOOptions)
    return_: list[Literal["mesh", "overlay", "joints3d"]] = Field(
        default_factory=list, alias="return", description="extra outputs"
    )

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True
    )

    @field_validator("return_")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value))

    def to_job(self) -> dict[str, Any]:
        """The options as stored with the job (plain JSON, `return` spelled as in the API)."""
        return self.model_dump(mode="json", by_alias=True)


def check_against_image(options: RecoverOptions, width: int, height: int, max_people: int) -> None:
    """Raise ValueError when the options do not fit the decoded image."""
    if len(options.people) > max_people:
        raise ValueError(f"{len(options.people)} people given; at most {max_people} per request")
    for i, person in enumerate(options.people):
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
    """GET /jobs/{id}. `result` follows ARCHITECTURE.md §5 ("Result")."""

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    updated_at: str
    progress: ProgressOut | None = None
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    links: Links


class ErrorResponse(BaseModel):
    error: ErrorBody
