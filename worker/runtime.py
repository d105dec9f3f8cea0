"""The worker's model on disk and in memory: which export to run, its ONNX Runtime sessions
and its PyTorch checkpoint, loaded once per process.

- The model is a `metahmr export` directory (`settings.model_dir`), else the shipped model:
  the checkpoint `model/assets/default/model.pt`, exported on first use (or by
  `metahmr assets prepare`) to ``settings.cache_dir/onnx/default-<sha12>/``.
- `OnnxGraph`: one ONNX Runtime session with explicit threads and provider.
- `load_model(dir, settings)`: manifest, graphs and checkpoint, with the checkpoint's sha256
  checked against the manifest (the TTO's PyTorch copy of f_w must be the exported one).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import WorkerSettings
from worker.pipeline import PipelineUnavailable

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CHECKPOINT = REPO_ROOT / "model" / "assets" / "default" / "model.pt"
REQUIRED_GRAPHS = ("f_w_backbone", "f_w_head")
OPTIONAL_GRAPHS = ("f_u_backbone", "f_u_head", "detector")
PARITY_BAR = 1e-4

NO_MODEL = (
    f"no model to run: this installation has no shipped model ({SHIPPED_CHECKPOINT} is "
    "missing). Set METAHMR_MODEL_DIR to a directory written by `metahmr export "
    "--checkpoint CKPT --out DIR`, or set METAHMR_PIPELINE=echo to check the service "
    "without a model"
)


# --- which export ---------------------------------------------------------------------------


def shipped_export_dir(settings: WorkerSettings, checkpoint_sha256: str) -> Path:
    """Where the shipped checkpoint with this hash is (or will be) exported."""
    return settings.cache_dir / "onnx" / f"default-{checkpoint_sha256[:12]}"


def _export_is_complete(directory: Path, checkpoint_sha256: str) -> bool:
    from model.export import load_manifest

    try:
        manifest = load_manifest(directory)
    except (OSError, ValueError):
        return False
    ckpt = directory / str(manifest.get("checkpoint_file", ""))
    return manifest.get("checkpoint_sha256") == checkpoint_sha256 and ckpt.is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Several pool processes may start at once; one exports, the others wait and reuse it.
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_shipped_model(settings: WorkerSettings, checkpoint: Path = SHIPPED_CHECKPOINT) -> Path:
    """Export `checkpoint` into the cache (once; atomically) and return the export dir.

    Raises PipelineUnavailable when there is no such checkpoint, RuntimeError when the
    export does not match PyTorch.
    """
    from model.checkpoint import load_checkpoint
    from model.export import check_parity, export_checkpoint, file_sha256

    if not checkpoint.is_file():
        raise PipelineUnavailable(NO_MODEL)
    sha = file_sha256(checkpoint)
    target = shipped_export_dir(settings, sha)
    if _export_is_complete(target, sha):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _export_is_complete(target, sha):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            ckpt = load_checkpoint(checkpoint)
            export_checkpoint(ckpt, tmp, checkpoint_path=checkpoint)
            errors = check_parity(ckpt, tmp)
            worst = max(errors.values())
            if worst > PARITY_BAR:
                raise RuntimeError(
                    f"the ONNX export of {checkpoint} differs from PyTorch by {worst:.2e} "
                    f"(> {PARITY_BAR:g}); per graph: {errors}"
                )
            if target.exists():  # a partial export from an interrupted run
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    log.info("exported the shipped model to %s", target)
    return target


def resolve_model_dir(settings: WorkerSettings) -> Path:
    """settings.model_dir, else the shipped model's export (made now if needed)."""
    if settings.model_dir is not None:
        return settings.model_dir
    return prepare_shipped_model(settings)


def check_model_dir(directory: Path) -> str | None:
    """Why `directory` is not a usable export, or None. Reads only the manifest."""
    from model.export import load_manifest

    if not directory.is_dir():
        return (
            f"METAHMR_MODEL_DIR={directory} is not a directory; point it at the output of "
            "`metahmr export --checkpoint CKPT --out DIR`"
        )
    try:
        manifest = load_manifest(directory)
    except (OSError, ValueError) as exc:
        return f"METAHMR_MODEL_DIR={directory}: {exc}"
    graphs = manifest.get("graphs", {})
    missing = [g for g in REQUIRED_GRAPHS if g not in graphs]
    missing += [
        spec["file"] for spec in graphs.values() if not (directory / spec["file"]).is_file()
    ]
    ckpt = manifest.get("checkpoint_file")
    if not ckpt or not (directory / ckpt).is_file():
        missing.append(ckpt or "checkpoint.pt")
    if missing:
        return (
            f"the export in {directory} lacks {missing}; re-run `metahmr export --checkpoint "
            f"CKPT --out {directory}` (it writes the graphs and the checkpoint the TTO needs)"
        )
    return None


# --- ONNX Runtime -----------------------------------------------------------------------------


def onnx_providers(provider: str) -> list[str]:
    """ONNX Runtime execution providers for settings.onnx_provider ("cpu" or "cuda")."""
    if provider == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGraph:
    """One exported graph in an ONNX Runtime session.

    threads: intra-op threads (inter-op is 1: these graphs are one chain of ops).
    """

    def __init__(self, path: Path, provider: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle ORT threads spin-wait by default, burning the cores the TTO (torch) needs
        # right after each ONNX call.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(provider))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """Named float32 inputs -> named outputs (each (N, ...), N the batch size)."""
        if set(feeds) != set(self.input_names):
            raise ValueError(f"{self.path.name} takes {self.input_names}, got {sorted(feeds)}")
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        outputs = self.session.run(self.output_names, arrays)
        return dict(zip(self.output_names, outputs, strict=True))


class OnnxKeypointDetector:
    """The exported heatmap detector (detector.onnx), flip-averaged like
    `model.keypoint_detector.HeatmapOnnxDetector`, on a session built here (our provider
    and thread count)."""

    def __init__(self, graph: OnnxGraph, stride: int, flip_perm: Sequence[int]) -> None:
        self.graph, self.stride, self.flip_perm = graph, stride, tuple(flip_perm)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """uint8 RGB crops (B, H, W, 3) -> COCO-17 keypoints (B, 17, 3) in crop pixels."""
        from model.backbones import normalize_crops
        from model.keypoint_detector import decode_heatmaps, flip_average

        x = normalize_crops(crops)
        heat = self.graph(image=np.concatenate([x, x[..., ::-1]]))["heatmaps"]
        b = len(crops)
        return decode_heatmaps(flip_average(heat[:b], heat[b:], self.flip_perm), self.stride)


# --- the loaded model -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """An export in memory. graphs: name -> session (f_u_* and detector only if exported).
    checkpoint: the `model.checkpoint.Checkpoint` the graphs were exported from."""

    directory: Path
    manifest: dict[str, Any]
    checkpoint: Any
    graphs: dict[str, OnnxGraph]
    detector: OnnxKeypointDetector | None

    @property
    def has_aux(self) -> bool:
        return "f_u_backbone" in self.graphs and "f_u_head" in self.graphs

    @property
    def blazepose_variant(self) -> str | None:
        """"full" etc. for a model whose backbone is BlazePose, else None."""
        info = self.manifest.get("blazepose")
        return None if info is None else str(info["variant"])

    @property
    def crop_hw(self) -> tuple[int, int]:
        h, w = self.manifest["crop_hw"]
        return int(h), int(w)


def load_model(directory: Path, settings: WorkerSettings) -> LoadedModel:
    """Read an export: its manifest, every graph, and its checkpoint (hash checked)."""
    from model.checkpoint import load_checkpoint
    from model.export import file_sha256, load_manifest

    problem = check_model_dir(directory)
    if problem:
        raise PipelineUnavailable(problem)
    manifest = load_manifest(directory)
    ckpt_path = directory / manifest["checkpoint_file"]
    sha = file_sha256(ckpt_path)
    if manifest.get("checkpoint_sha256") not in (None, sha):
        raise PipelineUnavailable(
            f"{ckpt_path} is not the checkpoint the graphs in {directory} were exported from "
            "(sha256 differs from manifest.json); export it again with `metahmr export`"
        )
    checkpoint = load_checkpoint(ckpt_path)
    if checkpoint.tto_scope != manifest["tto_scope"]:
        raise PipelineUnavailable(
            f"{directory}: manifest scope {manifest['tto_scope']!r} != checkpoint scope "
            f"{checkpoint.tto_scope!r}; export it again with `metahmr export`"
        )
    specs = manifest["graphs"]
    graphs = {
        name: OnnxGraph(
            directory / specs[name]["file"], settings.onnx_provider, settings.onnx_threads
        )
        for name in (*REQUIRED_GRAPHS, *OPTIONAL_GRAPHS)
        if name in specs
    }
    detector = None
    if "detector" in graphs and "detector" in manifest:
        info = manifest["detector"]
        detector = OnnxKeypointDetector(graphs["detector"], int(info["stride"]), info["flip_perm"])
    log.info(
        "model %s %s from %s: graphs %s, provider %s, %d ORT threads",
        checkpoint.model_name,
        checkpoint.model_version,
        directory,
        sorted(graphs),
        settings.onnx_provider,
        settings.onnx_threads,
    )
    return LoadedModel(directory, manifest, checkpoint, graphs, detector)
