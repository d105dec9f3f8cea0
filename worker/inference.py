"""The "onnx" pipeline: the model (ARCHITECTURE §1), built once per worker process.

Per request:

1. **detect**: people boxes (given, else the box around the given keypoints, else BlazePose's
   person detector: every person found, best first) -> 256x192 crops + CLIFF bbox info
   (`model.crop`, `CropInfo`); BlazePose's landmarks for every person (`model.blazepose`,
   LiteRT); each person's 2D keypoints from the request (coco17 / openpose25 / mediapipe33,
   mapped to COCO-17), else BlazePose's (source "blazepose"), else the export's heatmap
   detector (older models, when BlazePose is not installed), else none (no TTO).
2. **regress**: f_w's ONNX backbone (for a BlazePose model its encoder over BlazePose's
   output vector, `model.blazepose.head_features`; else the image backbone over the crop),
   its ONNX head -> initial SMPL + crop camera, and f_u the same (pseudo-SMPL for step 0's
   agreement terms).
3. **fit**: `model.tto.fit` of f_w in PyTorch, in the checkpoint's scope, from the ONNX
   features; one progress call per TTO step.
4. **render** (on request): the posed meshes as mesh.obj / mesh.glb (camera frame, y up) and
   overlay.png (meshes drawn over the image).

The result is the §5 object. Keypoints in the result (`keypoints_2d`) are the COCO-17 points
the fit used, in full-image pixels. `fit.skipped` says why a person got no TTO (else null).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from model.body import BodyModel
from model.config import TTOConfig
from model.outputs import CropInfo, FitResult, RegressorOutput, SMPLParams
from model.tto import SKIP_NO_KEYPOINTS
from worker.config import WorkerSettings
from worker.pipeline import PermanentJobError, PipelineResult, PipelineUnavailable, ProgressFn
from worker.runtime import (
    NO_MODEL,
    SHIPPED_CHECKPOINT,
    LoadedModel,
    check_model_dir,
    load_model,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

KEYPOINT_COUNTS = {"coco17": 17, "openpose25": 25, "mediapipe33": 33}
FIT_FORMAT = "coco17"
BOX_RESCALE = 1.2  # CLIFF/SPIN's margin around a person's box
# Keypoints stop at the ankles and the face; the body reaches a little beyond them.
KEYPOINT_BOX_PAD = 0.1
MAX_PEOPLE = 16  # people the detector may return for one image
NO_KEYPOINTS = "no keypoints: none given for this person and the model has no detector"
ZERO_STEPS = "tto.steps is 0: regression only"
MESH_COLOR = (0.65, 0.74, 0.86)


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
    from model.body import load_body_model

    # Explicit: torch defaults to every core, and each pool process runs its own TTO.
    torch.set_num_threads(settings.torch_threads)
    model = load_model(resolve_model_dir(settings), settings)
    device = torch.device("cuda" if settings.onnx_provider == "cuda" else "cpu")
    body = load_body_model()
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
        blazepose = load_blazepose(variant, settings.onnx_threads, bool(model.blazepose_variant))
    pipeline = OnnxPipeline(
        model, body.to(device), settings.torch_threads, device, compile_tto=settings.tto_compile,
        blazepose=blazepose,
    )
    pipeline.warm_up()
    return pipeline


def load_blazepose(variant: str, threads: int, required: bool) -> Any:
    """`model.blazepose.BlazePose`, or None when it is missing and not `required` (a model
    with an image backbone then falls back to its own detector, or to no keypoints)."""
    from model.blazepose import BlazePose, BlazePoseUnavailable

    try:
        return BlazePose(variant, threads=threads)
    except BlazePoseUnavailable as exc:
        if required:
            raise PipelineUnavailable(f"this model reads BlazePose {variant}: {exc}") from exc
        log.warning("BlazePose unavailable (%s): no person detector; keypoints from the "
                    "model's own detector if it has one", exc)  # fmt: skip
        return None


@dataclass(frozen=True)
class Person:
    """One person of a request. bbox: (4,) x0, y0, x1, y1 pixels (given or derived).
    keypoints: (17, 3) COCO-17 [x, y, conf] from the request, or None."""

    bbox: np.ndarray
    keypoints: np.ndarray | None


@dataclass(frozen=True)
class Crops:
    """B crops. images: (B, h, w, 3) uint8. crop: their `CropInfo` (float32)."""

    images: np.ndarray
    crop: CropInfo


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
        self.threads = threads
        self.device = device
        self.compile_tto = compile_tto  # METAHMR_TTO_COMPILE
        self.f_w = self.ckpt.build_f_w(device)  # the TTO's PyTorch copy of the graphs' f_w

    def warm_up(self) -> None:
        """With compiled TTO steps: compile them now, not in the first request."""
        from model.tto import compile_failure, warm_up

        seconds = warm_up(self.f_w, self.body, self._tto_config({}))
        if seconds:
            log.info("TTO graphs compiled in %.1f s%s", seconds,
                     f" (fell back to eager: {compile_failure()})" if compile_failure() else "")

    # -- the request ------------------------------------------------------------------------

    def run(
        self, image: np.ndarray, options: Mapping[str, Any], progress: ProgressFn
    ) -> PipelineResult:
        """image: (H, W, 3) uint8 RGB. options: the job's options (service.schemas)."""
        out = self._run_together([self._prepare(image, options, progress)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[Mapping[str, Any]],
        progress_list: Sequence[ProgressFn],
    ) -> list[PipelineResult | Exception]:
        """Several jobs as one batch: one ONNX forward over all their crops and one `fit`
        per distinct TTO schedule over all their people. Returns, per job, its result or the
        exception that job alone would have raised (its progress raising, e.g. JobCanceled,
        drops that job only). Results equal `run` job by job; each successful result's
        `timings_ms.batch_size` says how many jobs shared its forward and fit (absent when 1).
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
                requests[i] = self._prepare(images[i], options_list[i], guards[i])
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
        self, image: np.ndarray, options: Mapping[str, Any], guard: _Guard
    ) -> PipelineResult | Exception:
        if guard.error is not None:
            return guard.error
        try:
            return self.run(image, options, guard)
        except Exception as exc:
            return exc

    def _prepare(
        self, image: np.ndarray, options: Mapping[str, Any], progress: ProgressFn
    ) -> _Request:
        """Parse the options and run the detect stage for one job."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        height, width = image.shape[:2]
        focal = float(options.get("focal_length") or math.hypot(width, height))
        config = self._tto_config(options.get("tto") or {})
        wanted = set(options.get("return") or ())

        progress("detect", 0, 1)
        with _timed(timings, "detect"):
            people, landmarks = self._people(image, options.get("people") or [])
            crops = self._crops(image, people, focal)
            # BlazePose reads the boxes only when something uses what it sees: a BlazePose
            # model's features, or a person without keypoints.
            needed = self.model.blazepose_variant is not None or any(
                p.keypoints is None for p in people
            )
            if landmarks is None and self.blazepose is not None and needed:
                from model.blazepose import roi_from_cliff_boxes

                roi = roi_from_cliff_boxes(crops.crop.center.numpy(), crops.crop.box_size.numpy())
                landmarks = self.blazepose.landmarks(image, roi)
            keypoints, sources = self._keypoints(image, people, crops, focal, landmarks)
        progress("detect", 1, 1)
        return _Request(
            image, progress, focal, config, wanted, people, crops, keypoints, sources,
            timings, start, landmarks,
        )  # fmt: skip

    def _run_together(self, requests: Sequence[_Request]) -> list[PipelineResult | Exception]:
        """Regress and fit the prepared jobs together, then build each one's result.

        Raises when the shared stages (forward, fit) fail; per-job stages (render, result)
        fail only their job (returned as its exception)."""
        for r in requests:
            r.progress("regress", 0, 1)
        timings: dict[str, float] = {}
        with _timed(timings, "regress"):
            features, initial, aux = self._regress(
                _cat_crops([r.crops for r in requests]), [r.landmarks for r in requests]
            )
        bounds = np.cumsum([0] + [len(r.people) for r in requests])
        spans = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        for r in requests:
            r.progress("regress", 1, 1)
        fits: list[FitResult | None] = [None] * len(requests)
        with _timed(timings, "fit"):
            # One fit per schedule: jobs may ask for different step counts.
            groups: dict[TTOConfig, list[int]] = {}
            for k, r in enumerate(requests):
                if r.config.steps > 0 and bool((r.keypoints[..., 2] > 0).any()):
                    groups.setdefault(r.config, []).append(k)
            for config, members in groups.items():
                rows = np.concatenate([np.arange(spans[k].start, spans[k].stop) for k in members])
                fit = self._fit(
                    _cat_crops([requests[k].crops for k in members]),
                    features[rows],
                    np.concatenate([requests[k].keypoints for k in members]),
                    aux.select(torch.as_tensor(rows)) if aux is not None else None,
                    config,
                    _fan_out([requests[k].progress for k in members]),
                )
                at = 0
                for k in members:
                    size = len(requests[k].people)
                    fits[k] = _select_fit(fit, slice(at, at + size))
                    at += size
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
                files = self._files(r.image, final, r.crops.crop, r.focal, r.wanted)
            r.progress("render", 1, 1)
        people_out = self._people_out(
            r.people, r.crops, r.keypoints, r.sources, initial, final, fit, r.config, r.wanted
        )
        r.timings["total"] = (time.perf_counter() - r.start) * 1000.0
        height, width = r.image.shape[:2]
        result = {
            "model": {
                "name": self.ckpt.model_name,
                "version": self.ckpt.model_version,
                "body_model": self.body.id,
                "tto_scope": self.ckpt.tto_scope,
            },
            "image": {"width": width, "height": height, "focal_length": r.focal},
            "people": people_out,
            "timings_ms": {k: round(v, 3) for k, v in r.timings.items()},
        }
        steps = fit.steps_run if fit is not None else (0,) * len(r.people)
        return PipelineResult(result=result, files=files, tto_steps=tuple(steps))

    def _tto_config(self, tto: Mapping[str, Any]) -> TTOConfig:
        """The checkpoint's TTO settings with the request's steps; refuses another scope."""
        scope = tto.get("scope")
        if scope is not None and scope != self.ckpt.tto_scope:
            raise PermanentJobError(
                f"tto.scope {scope!r} was asked for, but this model was meta-trained for the "
                f"{self.ckpt.tto_scope!r} scope and the two must match; omit tto.scope or "
                f"send {self.ckpt.tto_scope!r}"
            )
        steps = tto.get("steps")
        if steps is None:  # not asked for: the schedule the model was meta-trained with
            steps = self.ckpt.tto.steps
        if not isinstance(steps, int) or steps < 0:
            raise PermanentJobError(f"tto.steps must be an integer >= 0, got {steps!r}")
        return replace(
            self.ckpt.tto, steps=steps, num_threads=self.threads, compile=self.compile_tto
        )

    # -- stages -----------------------------------------------------------------------------

    def _crops(self, image: np.ndarray, people: Sequence[Person], focal: float) -> Crops:
        from model.crop import box_from_xyxy, crop_image

        boxes = np.stack([p.bbox for p in people])
        center, size = box_from_xyxy(boxes, BOX_RESCALE, self.model.crop_hw)
        images = np.stack(
            [
                crop_image(image, c, float(s), self.model.crop_hw)[0]
                for c, s in zip(center, size, strict=True)
            ]
        )
        h, w = image.shape[:2]
        b = len(people)
        try:
            crop = CropInfo.from_boxes(
                torch.as_tensor(center, dtype=torch.float32),
                torch.as_tensor(size, dtype=torch.float32),
                torch.tensor([[h, w]], dtype=torch.float32).repeat(b, 1),
                torch.full((b,), focal, dtype=torch.float32),
                crop_hw=self.model.crop_hw,
            )
        except ValueError as exc:
            raise PermanentJobError(f"cannot crop these people: {exc}") from exc
        return Crops(images, crop)

    def _people(
        self, image: np.ndarray, people_in: Sequence[Mapping[str, Any]]
    ) -> tuple[list[Person], Any]:
        """The request's people, else everyone BlazePose finds (with their landmarks), else
        the whole image as one person."""
        height, width = image.shape[:2]
        if people_in or self.blazepose is None:
            return parse_people(people_in, width, height), None
        from model.blazepose import landmark_boxes

        lm = self.blazepose.find_people(image, MAX_PEOPLE)
        if len(lm.score) == 0:
            return parse_people([], width, height), None
        return [Person(box, None) for box in landmark_boxes(lm, (height, width))], lm

    def _keypoints(
        self,
        image: np.ndarray,
        people: Sequence[Person],
        crops: Crops,
        focal: float,
        landmarks: Any = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """(B, 17, 3) COCO-17 keypoints (zeros where none) and each person's source."""
        points = np.zeros((len(people), 17, 3), np.float32)
        sources: list[str | None] = [None] * len(people)
        for i, p in enumerate(people):
            if p.keypoints is not None:
                points[i], sources[i] = p.keypoints, "request"
        missing = [i for i, s in enumerate(sources) if s is None]
        if missing and landmarks is not None:
            from model.blazepose import coco17_keypoints

            found = coco17_keypoints(landmarks)
            for i in missing:
                points[i], sources[i] = found[i], "blazepose"
            return points, sources
        detector = self.model.detector
        if missing and detector is not None:
            detected = self._detect(image, crops, missing, focal)
            for k, i in enumerate(missing):
                points[i], sources[i] = detected[k], "detector"
        return points, sources

    def _detect(
        self, image: np.ndarray, crops: Crops, index: list[int], focal: float
    ) -> np.ndarray:
        """Detector keypoints (len(index), 17, 3) in full-image pixels, conf in [0, 1]."""
        from model.crop import crop_image
        from model.keypoint_detector import crop_to_image

        detector = self.model.detector
        assert detector is not None
        det_hw = tuple(self.model.manifest["detector"]["config"]["crop_hw"])
        crop = crops.crop
        if det_hw == self.model.crop_hw:
            images, affines = crops.images[index], crop.affine[index].double().numpy()
        else:  # a detector trained on another crop size: cut its own crops
            cuts = [
                crop_image(image, crop.center[i].numpy(), float(crop.box_size[i]), det_hw)
                for i in index
            ]
            images = np.stack([c for c, _ in cuts])
            affines = np.stack([a for _, a in cuts])
        found = crop_to_image(detector.predict(images), affines)
        found[..., 2] = np.clip(found[..., 2], 0.0, 1.0)
        return found

    def _regress(
        self, crops: Crops, landmarks: Sequence[Any]
    ) -> tuple[np.ndarray, RegressorOutput, RegressorOutput | None]:
        """f_w (and f_u): features (B, F), initial and auxiliary `RegressorOutput`s."""
        from model.backbones import normalize_crops

        info = crops.crop.bbox_info().numpy()
        g = self.model.graphs
        if self.model.blazepose_variant is not None:
            from model.blazepose import head_features

            # BlazePose's output vector goes through each network's own encoder graph.
            crop = crops.crop
            vector = head_features(
                _cat_landmarks(landmarks), crop.center.numpy(), crop.box_size.numpy()
            )
            features = g["f_w_backbone"](blazepose=vector)["features"]
            aux_features = (
                g["f_u_backbone"](blazepose=vector)["features"] if self.model.has_aux else None
            )
        else:
            x = normalize_crops(crops.images)
            features = g["f_w_backbone"](image=x)["features"]
            aux_features = g["f_u_backbone"](image=x)["features"] if self.model.has_aux else None
        initial = _output(g["f_w_head"](features=features, bbox_info=info))
        aux = None
        if self.model.has_aux:
            aux = _output(g["f_u_head"](features=aux_features, bbox_info=info))
        return features, initial, aux

    def _fit(
        self,
        crops: Crops,
        features: np.ndarray,
        keypoints: np.ndarray,
        aux: RegressorOutput | None,
        config: TTOConfig,
        progress: ProgressFn,
    ) -> FitResult | None:
        """`model.tto.fit` for everyone with a confident keypoint; None when no TTO runs."""
        from model.backbones import normalize_crops
        from model.tto import TTOInputs, fit

        if config.steps == 0 or not bool((keypoints[..., 2] > 0).any()):
            return None
        dev = self.device
        images = None
        if config.scope == "full":
            images = torch.from_numpy(normalize_crops(crops.images)).to(dev)
        inputs = TTOInputs(
            keypoints=torch.from_numpy(keypoints).to(dev),
            crop=crops.crop.to(dev),
            keypoint_format=FIT_FORMAT,
            images=images,
            features=torch.from_numpy(features).to(dev),
        )
        total = 1 + config.steps
        progress("fit", 0, total)
        try:
            result = fit(
                self.f_w,
                inputs,
                self.body,
                config,
                None if aux is None else _to(aux, dev),
                on_step=lambda step, n: progress("fit", step, n),
            )
        except ValueError as exc:  # bad keypoints or boxes that got past the API
            raise PermanentJobError(f"the fit cannot use this input: {exc}") from exc
        # Results, meshes and JSON are built on the CPU.
        return replace(result, initial=_to(result.initial, "cpu"), final=_to(result.final, "cpu"))

    def _files(
        self,
        image: np.ndarray,
        final: RegressorOutput,
        crop: CropInfo,
        focal: float,
        wanted: set[str],
    ) -> dict[str, bytes]:
        """mesh.obj + mesh.glb and/or overlay.png of the final bodies (camera frame)."""
        vertices = self._vertices(final, crop)
        faces = np.asarray(self.body.faces)
        files: dict[str, bytes] = {}
        if "mesh" in wanted:
            files.update(mesh_files(vertices, faces))
        if "overlay" in wanted:
            files["overlay.png"] = overlay_png(image, vertices, faces, focal)
        return files

    def _vertices(self, pred: RegressorOutput, crop: CropInfo) -> np.ndarray:
        """(B, V, 3) float32 camera-frame vertices of `pred`, metres."""
        dev = self.device
        with torch.no_grad():
            out = self.body(_to(pred, dev).params, pred.translation(crop).to(dev))
        return out.vertices.float().cpu().numpy()

    # -- the result ---------------------------------------------------------------------------

    def _people_out(
        self,
        people: Sequence[Person],
        crops: Crops,
        keypoints: np.ndarray,
        sources: list[str | None],
        initial: RegressorOutput,
        final: RegressorOutput,
        fit: FitResult | None,
        config: TTOConfig,
        wanted: set[str],
    ) -> list[dict[str, Any]]:
        crop = crops.crop
        kp = torch.from_numpy(keypoints)
        errors = self._reprojection_px(final, crop, kp)
        joints = self._joints(final, crop) if "joints3d" in wanted else None
        out = []
        for i, person in enumerate(people):
            entry: dict[str, Any] = {
                "bbox": [float(v) for v in person.bbox],
                "smpl": _smpl_json(final, i),
                "camera": {"translation": _floats(final.translation(crop)[i])},
                "keypoints_2d": keypoints[i].tolist() if sources[i] else None,
                "keypoint_source": sources[i],
                "fit": self._fit_json(fit, i, config, sources[i], errors[i]),
                "initial": {
                    "smpl": _smpl_json(initial, i),
                    "camera": {"translation": _floats(initial.translation(crop)[i])},
                },
            }
            if joints is not None:
                entry["joints3d"] = joints[i].tolist()
            out.append(entry)
        return out

    @staticmethod
    def _fit_json(
        fit: FitResult | None, i: int, config: TTOConfig, source: str | None, error: float | None
    ) -> dict[str, Any]:
        if fit is None or fit.skipped[i] is not None:
            if config.steps == 0:
                reason = ZERO_STEPS
            elif source is None:
                reason = NO_KEYPOINTS
            else:  # keypoints, but none confident
                reason = (fit.skipped[i] if fit is not None else None) or SKIP_NO_KEYPOINTS
            return {
                "steps_run": 0,
                "loss_start": None,
                "loss_end": None,
                "stopped_early": False,
                "reprojection_error_px": error,
                "skipped": reason,
            }
        return {
            "steps_run": int(fit.steps_run[i]),
            "loss_start": _finite(fit.loss_start(i)),
            "loss_end": _finite(fit.final_loss[i]),
            "stopped_early": bool(fit.stopped_early[i]),
            "reprojection_error_px": error,
            "skipped": None,
        }

    def _reprojection_px(
        self, pred: RegressorOutput, crop: CropInfo, keypoints: torch.Tensor
    ) -> list[float | None]:
        """Per person, mean pixel distance of the model's COCO-17 points to `keypoints`."""
        from model.losses import project_points, reprojection_error_px

        with torch.no_grad():
            kp3d = self.body.keypoints_only(_to(pred, self.device).params).coco17.cpu().float()
            px = project_points(kp3d, pred.translation(crop), crop)
            err = reprojection_error_px(px, keypoints)
        return [_finite(float(e)) for e in err]

    def _joints(self, pred: RegressorOutput, crop: CropInfo) -> np.ndarray:
        """(B, 24, 3) SMPL joints in the camera frame, metres."""
        with torch.no_grad():
            out = self.body.keypoints_only(
                _to(pred, self.device).params, pred.translation(crop).to(self.device)
            )
        return out.joints.float().cpu().numpy()


# --- request parsing ---------------------------------------------------------------------------


def parse_people(people: Sequence[Mapping[str, Any]], width: int, height: int) -> list[Person]:
    """The request's people (see service.schemas.PersonIn); the whole image when empty.

    Raises PermanentJobError for keypoints of the wrong count or a person with neither a box
    nor two confident keypoints.
    """
    if not people:
        return [Person(np.array([0.0, 0.0, width, height]), None)]
    out = []
    for i, p in enumerate(people):
        keypoints = _request_keypoints(i, p.get("keypoints"))
        bbox = p.get("bbox")
        if bbox is not None:
            box = np.asarray(bbox, dtype=np.float64)
            if (
                box.shape != (4,)
                or not np.isfinite(box).all()
                or not (box[2] > box[0] and box[3] > box[1])
            ):
                raise PermanentJobError(f"people[{i}].bbox {bbox} is not x0 < x1, y0 < y1")
        elif keypoints is not None:
            box = _box_around(i, keypoints)
        else:
            raise PermanentJobError(f"people[{i}] needs a bbox, keypoints or both")
        out.append(Person(box, keypoints))
    return out


def _request_keypoints(i: int, keypoints: Mapping[str, Any] | None) -> np.ndarray | None:
    """A request person's keypoints as COCO-17 (17, 3) float32, or None."""
    from model.keypoints import convert_keypoints

    if keypoints is None:
        return None
    fmt = keypoints.get("format", "coco17")
    if fmt not in KEYPOINT_COUNTS:
        raise PermanentJobError(
            f"people[{i}].keypoints.format {fmt!r} is unknown; valid: {KEYPOINT_COUNTS}"
        )
    points = np.asarray(keypoints.get("points", []), dtype=np.float32)
    want = KEYPOINT_COUNTS[fmt]
    if points.shape != (want, 3):
        raise PermanentJobError(
            f"people[{i}].keypoints: format {fmt} has {want} points [x, y, conf], got "
            f"{points.shape[0] if points.ndim else 0}; formats and counts: {KEYPOINT_COUNTS}"
        )
    if not np.isfinite(points).all() or (points[:, 2] < 0).any() or (points[:, 2] > 1).any():
        raise PermanentJobError(
            f"people[{i}].keypoints: values must be finite and confidences in [0, 1]"
        )
    if fmt == FIT_FORMAT:
        return points
    return np.asarray(convert_keypoints(points, fmt, FIT_FORMAT), dtype=np.float32)


def _box_around(i: int, keypoints: np.ndarray) -> np.ndarray:
    """x0, y0, x1, y1 around the confident keypoints (17, 3), padded to cover the body."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    if len(xy) < 2:
        raise PermanentJobError(
            f"people[{i}] has no bbox and fewer than two keypoints with confidence > 0; send a bbox"
        )
    lo, hi = xy.min(0), xy.max(0)
    pad = KEYPOINT_BOX_PAD * max(float((hi - lo).max()), 8.0)
    return np.concatenate([lo - pad, hi + pad]).astype(np.float64)


# --- files -----------------------------------------------------------------------------------


def mesh_files(vertices: np.ndarray, faces: np.ndarray) -> dict[str, bytes]:
    """mesh.obj (one mesh, people concatenated) and mesh.glb (one node per person).

    vertices: (B, V, 3) camera frame (x right, y down, z forward), metres. faces: (F, 3).
    The files use the glTF/OpenGL camera frame (x right, y up, the camera looking down -z):
    viewers assume y up, and the camera frame's y points down. The change is a 180° turn
    about x, so the faces keep their winding.
    """
    import trimesh
    from trimesh.exchange.obj import export_obj

    to_gl = np.array([1.0, -1.0, -1.0])
    meshes = [trimesh.Trimesh(v * to_gl, faces, process=False) for v in vertices]
    # 6 decimals: micrometres, and a third less text than trimesh's default 8.
    obj = export_obj(trimesh.util.concatenate(meshes), include_normals=False, digits=6)
    scene = trimesh.Scene()
    for i, mesh in enumerate(meshes):
        scene.add_geometry(mesh, node_name=f"person_{i}", geom_name=f"person_{i}")
    glb = scene.export(file_type="glb")
    return {"mesh.obj": obj.encode() if isinstance(obj, str) else obj, "mesh.glb": glb}


def overlay_png(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, focal: float) -> bytes:
    """The meshes (B, V, 3) drawn over `image` (H, W, 3) through the full-image camera."""
    from PIL import Image

    from model.render import MeshSpec, render_meshes

    meshes = [MeshSpec(v, faces, color=MESH_COLOR) for v in vertices]
    try:
        rendered = render_meshes(meshes, image=image, focal_length=focal)
    except Exception as exc:  # no usable OpenGL on this worker: a deployment problem
        raise RuntimeError(
            f"overlay rendering failed ({type(exc).__name__}: {exc}); the worker needs "
            'OSMesa or EGL (`make install` installs libosmesa6), or leave out "overlay"'
        ) from exc
    buf = io.BytesIO()
    Image.fromarray(rendered.rgb).save(buf, "PNG")
    return buf.getvalue()


# --- helpers -----------------------------------------------------------------------------------


def _output(heads: Mapping[str, np.ndarray]) -> RegressorOutput:
    """A head graph's outputs (rotmat (B, 24, 3, 3), betas (B, 10), crop_cam (B, 3))."""
    rot = torch.from_numpy(heads["rotmat"])
    params = SMPLParams(rot[:, :1], rot[:, 1:], torch.from_numpy(heads["betas"]))
    return RegressorOutput(params, torch.from_numpy(heads["crop_cam"]))


def _to(pred: RegressorOutput, device: torch.device | str) -> RegressorOutput:
    p = pred.params
    return RegressorOutput(
        SMPLParams(p.global_orient.to(device), p.body_pose.to(device), p.betas.to(device)),
        pred.crop_cam.to(device),
    )


def _smpl_json(pred: RegressorOutput, i: int) -> dict[str, list[float]]:
    """Person i's SMPL parameters as axis-angle: global_orient (3), body_pose (69), betas (10)."""
    from model.geometry import rotmat_to_axis_angle

    aa = rotmat_to_axis_angle(pred.params.rotmats()[i].double())  # (24, 3)
    return {
        "global_orient": _floats(aa[0]),
        "body_pose": _floats(aa[1:].reshape(-1)),
        "betas": _floats(pred.params.betas[i]),
    }


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().reshape(-1)]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
    sources: list[str | None]
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


def _fan_out(progress: Sequence[ProgressFn]) -> ProgressFn:
    def each(stage: str, step: int, total: int) -> None:
        for p in progress:
            p(stage, step, total)

    return each


def _cat_landmarks(landmarks: Sequence[Any]) -> Any:
    """Several jobs' `Landmarks` as one batch, in order."""
    from model.blazepose import concat_landmarks

    if any(lm is None for lm in landmarks):
        raise PipelineUnavailable("a BlazePose model needs BlazePose's landmarks for every person")
    return landmarks[0] if len(landmarks) == 1 else concat_landmarks(landmarks)


def _cat_crops(crops: Sequence[Crops]) -> Crops:
    """The crops of several jobs as one batch, in order."""
    if len(crops) == 1:
        return crops[0]
    info = [c.crop for c in crops]
    return Crops(
        np.concatenate([c.images for c in crops]),
        CropInfo(
            torch.cat([c.center for c in info]),
            torch.cat([c.box_size for c in info]),
            torch.cat([c.img_hw for c in info]),
            torch.cat([c.focal_length for c in info]),
            torch.cat([c.affine for c in info]),
            info[0].crop_hw,
        ),
    )


def _select_fit(fit: FitResult | None, span: slice) -> FitResult | None:
    """The people `span` of a batched fit, as if they had been fitted alone."""
    if fit is None:
        return None
    return replace(
        fit,
        initial=fit.initial.select(span),
        final=fit.final.select(span),
        loss_history=fit.loss_history[span],
        final_loss=fit.final_loss[span],
        test_u_loss=fit.test_u_loss[span],
        steps_run=fit.steps_run[span],
        stopped_early=fit.stopped_early[span],
        skipped=fit.skipped[span],
        recorded={k: v.select(span) for k, v in fit.recorded.items()},
    )


class _timed:
    """Adds the block's wall time in ms to timings[name]."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = (time.perf_counter() - self.start) * 1000.0
        self.timings[self.name] = self.timings.get(self.name, 0.0) + elapsed
