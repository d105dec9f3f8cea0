"""The "onnx" pipeline: the model (ARCHITECTURE §1), built once per worker process, as a
chain of the stages in `worker.stages`.

Per request:

1. **detect** (`people`, `keypoints`): people boxes (given, else the box around the given
   keypoints, else BlazePose's person detector: every person found, best first) -> 256x192
   crops + CLIFF bbox info; BlazePose's landmarks when something uses them; each person's
   2D keypoints (COCO-17) for the fit and their source.
2. **regress** (`regress`): f_w's ONNX backbone and head -> initial SMPL + crop camera, and
   f_u the same (pseudo-SMPL for step 0's agreement terms).
3. **fit** (`fit`): `model.tto.fit` of f_w in PyTorch, in the checkpoint's scope, from the
   ONNX features; one progress call per TTO step.
4. **render** (`files`, on request): mesh.obj / mesh.glb and overlay.png.

The result is `service.contract.RecoverResult` (`result`), stored as its JSON.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.body import BodyModel
from model.config import TTOConfig, TTORuntime
from model.motion import tracks_from_output
from model.outputs import FitResult, RegressorOutput
from service.contract import KeypointSource, RecoverOptions, TTOOptions
from worker.config import WorkerSettings
from worker.pipeline import NoPeopleFound, PipelineResult, PipelineUnavailable, ProgressFn
from worker.runtime import (
    NO_MODEL,
    SHIPPED_CHECKPOINT,
    LoadedModel,
    check_model_dir,
    load_model,
    resolve_model_dir,
)
from worker.stages.files import EXPORT_FILES, export_files, mesh_files, overlay_png, render_files
from worker.stages.fit import FitJob, Fitter, tto_config
from worker.stages.keypoints import fit_keypoints, landmarks_for
from worker.stages.people import FIT_FORMAT, Crops, Person, find_people, make_crops, parse_people
from worker.stages.regress import regress
from worker.stages.result import NO_KEYPOINTS, ZERO_STEPS, people_out, recover_result

log = logging.getLogger(__name__)

# Names other code imports from here (tests, the model package's smplx-free check).
__all__ = [
    "NO_KEYPOINTS",
    "ZERO_STEPS",
    "OnnxPipeline",
    "build_pipeline",
    "check_pipeline",
    "mesh_files",
    "overlay_png",
    "parse_people",
]


def check_pipeline(settings: WorkerSettings) -> str | None:
    """Why the model pipeline cannot run here, or None. Reads files, loads no model."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return "the model pipeline needs onnxruntime: install the worker extra (`make install`)"
    if settings.onnx_provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                "METAHMR_ONNX_PROVIDER=cuda but this onnxruntime has no CUDA provider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu or "
                "set METAHMR_ONNX_PROVIDER=cpu"
            )
        if not torch.cuda.is_available():
            return "METAHMR_ONNX_PROVIDER=cuda but torch sees no CUDA device"
    if settings.model_dir is not None:
        return check_model_dir(settings.model_dir)
    if not SHIPPED_CHECKPOINT.is_file():
        return NO_MODEL
    return None


def build_pipeline(settings: WorkerSettings) -> OnnxPipeline:
    """Load the model named by the settings (heavy: sessions, checkpoint, body model)."""
    from model.body import BUNDLED_MODEL, load_body_model
    from model.memory import keep_freed_blocks

    # Explicit: torch defaults to every core, and each pool process runs its own TTO.
    torch.set_num_threads(settings.torch_threads)
    keep_freed_blocks(settings.malloc_keep_mb)  # the TTO's large per-step tensors
    model = load_model(resolve_model_dir(settings), settings)
    device = torch.device("cuda" if settings.onnx_provider == "cuda" else "cpu")
    body = load_body_model(settings.body_model or BUNDLED_MODEL)  # these settings', not the env's
    if body.id != model.checkpoint.body_model_id:
        raise PipelineUnavailable(
            f"the model in {model.directory} was trained with body model "
            f"{model.checkpoint.body_model_id!r} but this worker loads {body.id!r}; set "
            "METAHMR_BODY_MODEL to the file it was trained with (or unset it for the bundled "
            "open model)"
        )
    variant = model.blazepose_variant or settings.blazepose
    if model.blazepose_variant and settings.blazepose != model.blazepose_variant:
        log.warning("METAHMR_BLAZEPOSE=%s ignored: this model reads BlazePose %s",
                    settings.blazepose, variant)  # fmt: skip
    blazepose = None
    if variant != "off":
        blazepose = load_blazepose(
            variant, settings.onnx_threads, bool(model.blazepose_variant),
            blazepose_runtime(settings.blazepose_runtime, variant, settings.onnx_provider),
            settings.onnx_provider,
        )  # fmt: skip
    pipeline = OnnxPipeline(
        model, body.to(device), settings.torch_threads, device, compile_tto=settings.tto_compile,
        blazepose=blazepose,
    )  # fmt: skip
    pipeline.warm_up()
    return pipeline


def blazepose_runtime(setting: str, variant: str, provider: str) -> str:
    """The landmark runtime for settings.blazepose_runtime ("auto": ONNX on a CUDA worker
    when `variant` has a shipped ONNX file, else LiteRT)."""
    if setting != "auto":
        return setting
    from model.blazepose_onnx import onnx_file

    return "onnx" if provider == "cuda" and onnx_file(variant).is_file() else "litert"


def load_blazepose(
    variant: str, threads: int, required: bool, runtime: str = "litert", provider: str = "cpu"
) -> Any:
    """`model.blazepose.BlazePose`, or None when it is missing and not `required` (a model
    with an image backbone then falls back to its own detector, or to no keypoints)."""
    from model.blazepose import BlazePose, BlazePoseUnavailable

    try:
        bp = BlazePose(variant, threads=threads, landmark_runtime=runtime, provider=provider)
        log.info("BlazePose %s: landmark network on %s", variant, bp.landmark_backend)
        return bp
    except BlazePoseUnavailable as exc:
        if required:
            raise PipelineUnavailable(f"this model reads BlazePose {variant}: {exc}") from exc
        log.warning("BlazePose unavailable (%s): no person detector; keypoints from the "
                    "model's own detector if it has one", exc)  # fmt: skip
        return None


class OnnxPipeline:
    """ONNX Runtime networks + PyTorch TTO (see the module docstring)."""

    name = "onnx"

    def __init__(
        self,
        model: LoadedModel,
        body: BodyModel,
        threads: int,
        device: torch.device,
        compile_tto: bool = False,
        blazepose: Any = None,
    ) -> None:
        self.model = model
        self.blazepose = blazepose  # model.blazepose.BlazePose, or None
        self.ckpt = model.checkpoint
        self.body = body.eval()
        self.device = device
        # How the TTO runs here (METAHMR_TORCH_THREADS, METAHMR_TTO_COMPILE).
        self.runtime = TTORuntime(num_threads=threads, compile=compile_tto)
        self.f_w = self.ckpt.build_f_w(device)  # the TTO's PyTorch copy of the graphs' f_w
        self.fitter = Fitter(self.f_w, self.body, device, self.runtime)

    def warm_up(self) -> None:
        """With compiled TTO steps: compile them now, not in the first request."""
        from model.tto import compile_failure, warm_up

        seconds = warm_up(
            self.f_w, self.body, self._tto_config(TTOOptions()), self.runtime,
            keypoint_format=FIT_FORMAT,
        )
        if seconds:
            log.info("TTO graphs compiled in %.1f s%s", seconds,
                     f" (fell back to eager: {compile_failure()})" if compile_failure() else "")  # fmt: skip

    def _tto_config(self, tto: TTOOptions) -> TTOConfig:
        return tto_config(self.ckpt, tto)

    # -- the request ------------------------------------------------------------------------

    def run(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn
    ) -> PipelineResult:
        """image: (H, W, 3) uint8 RGB. options: the job's typed options."""
        out = self._run_together([self._prepare(image, options, progress)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RecoverOptions],
        progress_list: Sequence[ProgressFn],
        whole_image: bool = True,
    ) -> list[PipelineResult | Exception]:
        """Several jobs as one batch: one ONNX forward over all their crops and one `fit`
        per distinct TTO schedule over all their people. Returns, per job, its result or the
        exception that job alone would have raised (its progress raising, e.g. JobCanceled,
        drops that job only). Results equal `run` job by job; each successful result's
        `timings_ms.batch_size` says how many jobs shared its forward and fit (absent when 1).
        whole_image=False: a job whose image has nobody in it gets `NoPeopleFound`.
        """
        n = len(images)
        if not len(options_list) == len(progress_list) == n:
            raise ValueError("run_batch needs one options and one progress per image")
        guards = [_Guard(p) for p in progress_list]
        out: list[PipelineResult | Exception | None] = [None] * n
        live: list[int] = []
        requests: dict[int, _Request] = {}
        for i in range(n):
            try:
                requests[i] = self._prepare(images[i], options_list[i], guards[i], whole_image)
                live.append(i)
            except Exception as exc:  # this job's own input: it fails alone
                out[i] = exc
        if live:
            try:
                together = self._run_together([requests[i] for i in live])
            except Exception:
                # A shared stage failed: run each job on its own so the bad one fails alone.
                log.warning("batch of %d failed; running its jobs one by one", len(live),
                            exc_info=True)  # fmt: skip
                together = [self._run_alone(images[i], options_list[i], guards[i]) for i in live]
            else:
                for res in together:
                    if isinstance(res, PipelineResult) and len(live) > 1:
                        res.result["timings_ms"]["batch_size"] = len(live)
            for i, res in zip(live, together, strict=True):
                out[i] = res
        return [guards[i].error or res for i, res in enumerate(out) if res is not None]

    def _run_alone(
        self, image: np.ndarray, options: RecoverOptions, guard: _Guard
    ) -> PipelineResult | Exception:
        if guard.error is not None:
            return guard.error
        try:
            return self.run(image, options, guard)
        except Exception as exc:
            return exc

    def _prepare(
        self, image: np.ndarray, options: RecoverOptions, progress: ProgressFn,
        whole_image: bool = True,
    ) -> _Request:
        """The detect stage for one job: people, crops, landmarks, keypoints."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        height, width = image.shape[:2]
        focal = float(options.focal_length or math.hypot(width, height))
        config = self._tto_config(options.tto)
        progress("detect", 0, 1)
        with _timed(timings, "detect"):
            people, landmarks = find_people(image, options.people, self.blazepose, whole_image)
            if not people:
                raise NoPeopleFound("the person detector found nobody in this image")
            crops = make_crops(image, people, focal, self.model.crop_hw)
            landmarks = landmarks_for(image, people, crops, self.model, self.blazepose, landmarks)
            keypoints, sources = fit_keypoints(image, people, crops, self.model, landmarks)
        progress("detect", 1, 1)
        return _Request(
            image, progress, focal, config, set(options.return_), people, crops, keypoints,
            sources, timings, start, landmarks,
        )  # fmt: skip

    def _run_together(self, requests: Sequence[_Request]) -> list[PipelineResult | Exception]:
        """Regress and fit the prepared jobs together, then build each one's result.

        Raises when the shared stages (forward, fit) fail; per-job stages (render, result)
        fail only their job (returned as its exception)."""
        for r in requests:
            r.progress("regress", 0, 1)
        timings: dict[str, float] = {}
        with _timed(timings, "regress"):
            features, initial, aux = regress(
                self.model, Crops.cat([r.crops for r in requests]), [r.landmarks for r in requests]
            )
        bounds = np.cumsum([0] + [len(r.people) for r in requests])
        spans = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        for r in requests:
            r.progress("regress", 1, 1)
        with _timed(timings, "fit"):
            jobs = [
                FitJob(r.config, r.crops, r.keypoints, r.progress, span)
                for r, span in zip(requests, spans, strict=True)
            ]
            fits = self.fitter.jobs(jobs, features, aux)
        out: list[PipelineResult | Exception] = []
        for k, r in enumerate(requests):
            r.timings.update(timings)
            try:
                out.append(self._finish(r, initial.select(spans[k]), fits[k]))
            except Exception as exc:
                out.append(exc)
        return out

    def _finish(
        self, r: _Request, initial: RegressorOutput, fit: FitResult | None
    ) -> PipelineResult:
        """Render (on request) and build the job's §5 result."""
        final = fit.final if fit is not None else initial
        files: dict[str, bytes] = {}
        if r.wanted & {"mesh", "overlay"}:
            r.progress("render", 0, 1)
            with _timed(r.timings, "render"):
                files = render_files(
                    self.body, self.device, r.image, final, r.crops.crop, r.focal, r.wanted
                )
            r.progress("render", 1, 1)
        if r.wanted & EXPORT_FILES.keys():
            with _timed(r.timings, "export"):
                tracks = tracks_from_output(final, r.crops.crop)
                files.update(export_files(self.body, tracks, r.wanted))
        people = people_out(
            self.body, self.device, r.people, r.crops.crop, r.keypoints, r.sources, initial, fit,
            r.config, r.wanted,
        )  # fmt: skip
        r.timings["total"] = (time.perf_counter() - r.start) * 1000.0
        height, width = r.image.shape[:2]
        result = recover_result(self.ckpt, self.body, (height, width), r.focal, people, r.timings)
        steps = fit.steps_run if fit is not None else (0,) * len(r.people)
        return PipelineResult(result=result.to_job(), files=files, tto_steps=tuple(steps))


@dataclass
class _Request:
    """One job between the detect stage and its result (see `OnnxPipeline.run_batch`)."""

    image: np.ndarray
    progress: ProgressFn
    focal: float
    config: TTOConfig
    wanted: set[str]
    people: list[Person]
    crops: Crops
    keypoints: np.ndarray  # (B, 17, 3)
    sources: list[KeypointSource | None]
    timings: dict[str, float]
    start: float
    landmarks: Any = None  # model.blazepose.Landmarks of the people, or None


class _Guard:
    """A batched job's progress: the first exception it raises (JobCanceled, LeaseLost) is
    kept as that job's outcome and later calls are skipped, so the rest of the batch runs."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.error: Exception | None = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.error is None:
            try:
                self.progress(stage, step, total)
            except Exception as exc:
                self.error = exc


class _timed:
    """Adds the block's wall time in ms to timings[name]."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = (time.perf_counter() - self.start) * 1000.0
        self.timings[self.name] = self.timings.get(self.name, 0.0) + elapsed
