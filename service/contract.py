"""The typed contract between the API and the worker (ARCHITECTURE.md §5): what a client may
ask for (`RecoverOptions`) and what a job answers (`RecoverResult`).

Options are parsed and validated once, at the edge (`service.deps.parse_options`); the job
record stores `RecoverOptions.to_job()`, and the worker rebuilds the same typed object with
`RecoverOptions.from_job`. The worker builds a `RecoverResult` and stores its JSON
(`RecoverResult.to_job()`); the API hands that JSON back as it was stored.

Torch-free and model-free: the API image imports this module. `KEYPOINT_COUNTS` is the one
table of accepted keypoint formats; `model.keypoints` holds the same formats by joint name
(a test holds the two equal).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

# Points per accepted keypoint format; the worker maps each to COCO-17 by joint name.
KEYPOINT_COUNTS = {"coco17": 17, "openpose25": 25, "mediapipe33": 33}
KeypointFormatName = Literal["coco17", "openpose25", "mediapipe33"]
MAX_TTO_STEPS = 30
MAX_PEOPLE_IN_OPTIONS = 64
# A box narrower than this cannot be cropped into anything the networks can read.
MIN_BOX_SIDE_PX = 2.0
# Default video limits (METAHMR_MAX_VIDEO_S / _FRAMES / _PIXELS): the API checks them and
# stores the ones in force with the job; the worker falls back to these for a job without.
DEFAULT_MAX_VIDEO_S = 20.0
DEFAULT_MAX_VIDEO_FRAMES = 900
DEFAULT_MAX_VIDEO_PIXELS = 1920 * 1080
# Numbers from JSON, strictly: `true` is not 1 (pydantic's lax mode would take it as one).
Number = Annotated[float, Field(strict=True)]


# --- options (client -> API -> job record -> worker) --------------------------------------


class _Strict(BaseModel):
    # NaN/Inf never mean anything here; unknown fields are usually typos.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class KeypointsIn(_Strict):
    format: KeypointFormatName = "coco17"
    points: list[tuple[Number, Number, Number]] = Field(
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
    bbox: tuple[Number, Number, Number, Number] | None = Field(
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
            if min(x1 - x0, y1 - y0) < MIN_BOX_SIDE_PX:
                raise ValueError(
                    f"bbox {list(self.bbox)} is {x1 - x0:g} x {y1 - y0:g} px; each side must be "
                    f"at least {MIN_BOX_SIDE_PX:g} px"
                )
        elif self.keypoints is not None:
            confident = sum(1 for _, _, c in self.keypoints.points if c > 0)
            if confident < 2:
                # The worker boxes a person from its keypoints: one point spans no box.
                raise ValueError(
                    f"without a bbox a person needs at least 2 keypoints with confidence > 0 "
                    f"(got {confident}); send a bbox or more keypoints"
                )
        return self


class TTOOptions(_Strict):
    steps: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_TTO_STEPS,
        description="test-time optimisation steps; default: the model's own schedule",
    )
    scope: Literal["head", "full"] | None = Field(
        default=None,
        description="parameters adapted; default: the scope the model was trained with",
    )


ReturnName = Literal["mesh", "overlay", "joints3d", "animation", "bvh", "smpl_npz"]
# The motion exports (model.motion_export): each one's `return` name and the job file it makes.
EXPORT_FILES = {"animation": "animation.glb", "bvh": "animation.bvh", "smpl_npz": "smpl.npz"}


class TemporalOptions(_Strict):
    """A video's per-track temporal fit (`model.temporal.refine_track`)."""

    enabled: bool = Field(default=True, description="re-fit each track's frames together")
    steps: int = Field(default=60, ge=0, le=200, description="optimiser steps per window")
    window: int = Field(default=64, ge=3, le=512, description="frames per window")
    velocity_weight: float = Field(default=0.0, ge=0, le=1e6)
    acceleration_weight: float = Field(default=10.0, ge=0, le=1e6)


class OneEuroOptions(_Strict):
    """A video's output filter (`model.temporal.one_euro`), after the temporal fit."""

    enabled: bool = False
    min_cutoff: float = Field(default=1.0, gt=0, le=100, description="Hz at rest")
    beta: float = Field(default=2.0, ge=0, le=1e3, description="cut-off rise with speed")


class VideoOptions(_Strict):
    """How a video job is smoothed and which tracks it keeps (ignored for images)."""

    temporal: TemporalOptions = Field(default_factory=TemporalOptions)
    one_euro: OneEuroOptions = Field(default_factory=OneEuroOptions)
    min_track_frames: int = Field(
        default=3, ge=1, le=10_000, description="shorter tracks are dropped (stray detections)"
    )


class RecoverOptions(_Strict):
    """The optional `options` JSON part of POST /recover."""

    people: list[PersonIn] = Field(
        default_factory=list,
        max_length=MAX_PEOPLE_IN_OPTIONS,
        description="people to recover; empty: the worker finds them (or uses the whole image)",
    )
    focal_length: Number | None = Field(
        default=None, gt=0, le=1e6, description="pixels; default sqrt(W^2 + H^2)"
    )
    tto: TTOOptions = Field(default_factory=TTOOptions)
    return_: list[ReturnName] = Field(
        default_factory=list, alias="return", description="extra outputs"
    )
    video: VideoOptions = Field(default_factory=VideoOptions)

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

    @classmethod
    def from_job(cls, stored: dict[str, Any]) -> RecoverOptions:
        """The typed options back from a job record's JSON (`to_job`'s inverse).

        Raises pydantic's ValidationError for JSON that did not come from `to_job`."""
        return cls.model_validate(stored)


def format_validation_error(exc: ValidationError, root: str, shown: int = 5) -> str:
    """A pydantic error as one line: `root.field: message; ...` (at most `shown` parts)."""
    parts = []
    for err in exc.errors()[:shown]:
        where = ".".join(str(p) for p in (root, *err["loc"]))
        parts.append(f"{where}: {err['msg']}")
    extra = len(exc.errors()) - shown
    return "; ".join(parts) + (f"; and {extra} more" if extra > 0 else "")


# --- the result (worker -> job record -> API) ------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    version: str
    body_model: str = Field(description="id of the body model that produced the bodies")
    tto_scope: Literal["head", "full"]


class ImageInfo(BaseModel):
    width: int
    height: int
    focal_length: float = Field(description="pixels; the camera the bodies are placed in")


class SMPLOut(BaseModel):
    """Axis-angle SMPL parameters."""

    global_orient: list[float] = Field(description="(3,) root rotation, axis-angle")
    body_pose: list[float] = Field(description="(69,) 23 joint rotations, axis-angle, SMPL order")
    betas: list[float] = Field(description="(10,) shape coefficients")


class CameraOut(BaseModel):
    translation: list[float] = Field(
        description="(3,) body translation in the full-image camera frame, metres"
    )


class FitOut(BaseModel):
    """What the test-time optimisation did for one person."""

    steps_run: int = Field(description="parameter updates made, step 0 included")
    loss_start: float | None
    loss_end: float | None
    stopped_early: bool
    reprojection_error_px: float | None = Field(
        description="mean pixel distance of the returned body's COCO-17 points to keypoints_2d"
    )
    skipped: str | None = Field(description="why no TTO ran for this person, else null")


class InitialOut(BaseModel):
    """The regression before the TTO."""

    smpl: SMPLOut
    camera: CameraOut


KeypointSource = Literal["request", "blazepose", "detector"]


class PersonOut(BaseModel):
    bbox: list[float] = Field(description="(4,) x0, y0, x1, y1 pixels (given or derived)")
    smpl: SMPLOut
    camera: CameraOut
    keypoints_2d: list[list[float]] | None = Field(
        description="(17, 3) COCO-17 [x, y, confidence] the fit used, full-image pixels"
    )
    keypoint_source: KeypointSource | None
    fit: FitOut
    initial: InitialOut
    joints3d: list[list[float]] | None = Field(
        default=None,
        description='(24, 3) SMPL joints, camera frame, metres; only with return ["joints3d"]',
    )


class VideoInfo(BaseModel):
    """A video job's input as decoded."""

    fps: float
    frames: int = Field(description="frames decoded")
    duration_s: float
    frames_with_people: int = Field(description="frames where someone was found")


class TrackOut(BaseModel):
    """One person across a video: per-frame people entries for the frames they were seen
    in (`frames`, indices from 0); `smpl` and `camera` are the smoothed values, `fit` the
    per-frame TTO's record."""

    track_id: int
    frames: list[int]
    people: list[PersonOut]
    smoothing: dict[str, bool | int] = Field(
        description="temporal_steps: optimiser steps per window (0: none); one_euro: filtered"
    )


class RecoverResult(BaseModel):
    """A succeeded job's `result` (ARCHITECTURE.md §5)."""

    model: ModelInfo
    image: ImageInfo
    people: list[PersonOut]
    timings_ms: dict[str, float | int] = Field(
        description="milliseconds per stage (detect, regress, fit, render, total); "
        "batch_size: the jobs that ran together, when more than one"
    )
    video: VideoInfo | None = Field(default=None, description="video jobs only")
    tracks: list[TrackOut] | None = Field(
        default=None, description="video jobs only: people by track (`people` is then empty)"
    )

    model_config = ConfigDict(protected_namespaces=())

    def to_job(self) -> dict[str, Any]:
        """The result as stored with the job: JSON, optional fields only when set."""
        return self.model_dump(mode="json", exclude_unset=True)
