"""BlazePose's landmark network as ONNX, for workers on a GPU (ONNX Runtime's CUDA provider).

LiteRT, which runs the .tflite files (`model.blazepose`), has no CUDA path. On a CPU this
conversion costs about the same CPU time in ONNX Runtime as the .tflite file in LiteRT, and CPU
workers keep the .tflite file, which the evaluation (docs/results.md) ran. GPU workers run the
landmark network from an ONNX file converted from the same .tflite file; the person detector
stays on LiteRT (the converter cannot read its sparse weights) and is run once per image.

The ONNX files are converted once, at development time, by `convert`, which needs TensorFlow
and tf2onnx: never part of `make install`, they go in an environment of their own, with the
pinned mediapipe wheel for the .tflite files:

    python -m venv /tmp/tfconv
    /tmp/tfconv/bin/pip install tensorflow-cpu tf2onnx onnxruntime ai-edge-litert
    /tmp/tfconv/bin/pip install --no-deps mediapipe==0.10.14
    PYTHONPATH=. /tmp/tfconv/bin/python -m model.blazepose_onnx --variant full

(lite and heavy: add METAHMR_BLAZEPOSE_DIR from `metahmr assets blazepose`). The result ships in `ONNX_DIR`, xz-compressed (the
weights that ship in git have a budget), with a manifest (`MANIFEST`: the ONNX bytes' sha256,
the source file's, the converter's version, the outputs checked against LiteRT); a worker
decompresses it in memory. Google's MediaPipe BlazePose GHUM models, Apache License 2.0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
from pathlib import Path
from typing import Any

import numpy as np

from model.blazepose_files import BlazePoseUnavailable, model_path

log = logging.getLogger(__name__)

ONNX_DIR = Path(__file__).resolve().parent / "assets" / "blazepose"
MANIFEST = "manifest.json"
RAW_LANDMARKS = 39  # the landmark network's points: the 33 MediaPipe ones + 6 auxiliary ones
OPSET = 17


def onnx_file(variant: str, directory: Path = ONNX_DIR) -> Path:
    """Where the (xz-compressed) ONNX landmark model of `variant` is, or would be."""
    return directory / f"pose_landmark_{variant}.onnx.xz"


def onnx_path(variant: str, directory: Path = ONNX_DIR) -> Path:
    """The shipped ONNX landmark model of `variant`; BlazePoseUnavailable if there is none."""
    path = onnx_file(variant, directory)
    if not path.is_file():
        raise BlazePoseUnavailable(
            f"no ONNX BlazePose {variant} landmark model at {path}: convert it with "
            f"`python -m model.blazepose_onnx --variant {variant}` (needs TensorFlow and "
            "tf2onnx: see model/blazepose_onnx.py), or run BlazePose in LiteRT "
            "(METAHMR_BLAZEPOSE_RUNTIME=litert)"
        )
    return path


def load_onnx(path: Path) -> bytes:
    """The ONNX bytes of a shipped model (`onnx_path`), checked against its manifest."""
    data = lzma.decompress(path.read_bytes())
    manifest = json.loads((path.parent / MANIFEST).read_text())
    expected = {m["file"]: m["sha256"] for m in manifest.values()}.get(path.name)
    if expected != hashlib.sha256(data).hexdigest():
        raise BlazePoseUnavailable(f"{path} does not match its {MANIFEST} (sha256); convert again")
    return data


def output_roles(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """The landmark network's outputs by what they hold (names differ between converters and
    variants, shapes without the batch dimension do not): role -> output name."""
    roles = {}
    for name, shape in shapes.items():
        if shape == (RAW_LANDMARKS * 5,):
            roles["landmarks"] = name
        elif shape == (RAW_LANDMARKS * 3,):
            roles["world"] = name
        elif shape == (1,):
            roles["score"] = name
        elif len(shape) == 3 and shape[-1] == RAW_LANDMARKS:
            roles["heatmap"] = name
    missing = {"landmarks", "world", "score", "heatmap"} - set(roles)
    if missing:
        raise BlazePoseUnavailable(f"not a BlazePose landmark model: no {sorted(missing)} output")
    return roles


class OnnxLandmarks:
    """The landmark network in an ONNX Runtime session: call it with one (1, 256, 256, 3)
    float32 crop in [0, 1]; returns landmarks, world, score and heatmap without the batch
    dimension, as the LiteRT interpreter's outputs."""

    def __init__(self, model: Path | bytes, provider: str = "cpu", threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if provider == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        shapes = {o.name: tuple(int(d) for d in o.shape[1:]) for o in self.session.get_outputs()}
        self.roles = output_roles(shapes)
        self.backend = ", ".join(self.session.get_providers())  # for logs

    def __call__(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        names = list(self.roles.values())
        outs = self.session.run(names, {self.input: crop.astype(np.float32)})
        return {role: out[0] for role, out in zip(self.roles, outs, strict=True)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert(variant: str, out: Path | None = None, check_crops: int = 4) -> Path:
    """Convert the .tflite landmark model of `variant` to ONNX in `out` (with tf2onnx, which
    imports TensorFlow), check it against LiteRT on `check_crops` random crops, and record
    both in out/MANIFEST. Returns the ONNX file."""
    try:
        import tf2onnx
    except ModuleNotFoundError as exc:
        raise BlazePoseUnavailable(
            "converting needs tf2onnx and TensorFlow, in an environment of their own: see "
            "model/blazepose_onnx.py's docstring (PYTHONPATH=. /tmp/tfconv/bin/python -m "
            "model.blazepose_onnx)"
        ) from exc
    source = model_path(variant)
    out = ONNX_DIR if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    target = onnx_file(variant, out)
    tmp = target.with_suffix(".tmp")
    tf2onnx.convert.from_tflite(str(source), opset=OPSET, output_path=str(tmp))
    drop_unused_outputs(tmp)
    halved = half_weights(tmp)
    worst = compare_with_litert(source, tmp, check_crops)
    data = tmp.read_bytes()
    target.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    tmp.unlink()
    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    )
    manifest[variant] = {
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "xz_sha256": sha256(target),
        "source": str(source.name),
        "source_sha256": sha256(source),
        "converter": f"tf2onnx {tf2onnx.__version__}, opset {OPSET}; {halved} weight "
        "tensors stored as float16 (exactly: the .tflite file's are) and cast to float32",
        "max_abs_diff_vs_litert": worst,
        "licence": "Apache-2.0 (Google MediaPipe BlazePose GHUM)",
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s (outputs within %s of LiteRT's)", target, worst)
    return target


def drop_unused_outputs(path: Path) -> None:
    """Keep only the outputs `model.blazepose` reads (landmarks, world, score, heatmap) and
    what computes them: the segmentation mask's branch and its weights go."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    shapes = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim[1:]) for o in graph.output}
    keep = set(output_roles(shapes).values())
    outputs = [o for o in graph.output if o.name in keep]
    del graph.output[:]
    graph.output.extend(outputs)
    needed = set(keep)
    nodes = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(node.input)
    nodes.reverse()
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def half_weights(path: Path) -> int:
    """Store the graph's float32 weights that are exactly float16 values (the .tflite file
    holds float16 weights, which the converter widened) as float16, each read through a Cast
    to float32: the same numbers in half the file. Returns how many were stored so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    kept = []
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if value.dtype != np.float32 or value.size < 256 or not np.array_equal(half, value):
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(half, f"{init.name}__f16"))
        casts.append(helper.make_node("Cast", [f"{init.name}__f16"], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def compare_with_litert(tflite: Path, onnx: Path, crops: int = 4, seed: int = 0) -> dict[str, float]:
    """The largest absolute difference of each output between LiteRT and ONNX Runtime (CPU)
    on random crops (landmarks in crop pixels, world in metres)."""
    from ai_edge_litert.interpreter import Interpreter

    litert = Interpreter(model_path=str(tflite), num_threads=1)
    litert.allocate_tensors()
    roles = output_roles(
        {d["name"]: tuple(int(v) for v in d["shape"][1:]) for d in litert.get_output_details()}
    )
    index = {d["name"]: d["index"] for d in litert.get_output_details()}
    ort_net = OnnxLandmarks(onnx)
    rng = np.random.default_rng(seed)
    worst: dict[str, float] = {}
    for _ in range(crops):
        crop = rng.random((1, 256, 256, 3), dtype=np.float32)
        litert.set_tensor(litert.get_input_details()[0]["index"], crop)
        litert.invoke()
        got = ort_net(crop)
        for role, name in roles.items():
            diff = float(np.abs(litert.get_tensor(index[name])[0] - got[role]).max())
            worst[role] = max(worst.get(role, 0.0), diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m model.blazepose_onnx",
        description="Convert a BlazePose landmark model to ONNX for CUDA workers (needs "
        "TensorFlow and tf2onnx; see this module's docstring).",
    )
    parser.add_argument("--variant", choices=("lite", "full", "heavy"), default="full")
    parser.add_argument("--out", type=Path, default=None, help="default: model/assets/blazepose")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.variant, args.out)
    except BlazePoseUnavailable as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
