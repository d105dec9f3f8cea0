"""Where BlazePose's .tflite files come from (`model.blazepose` runs them).

- the pinned `mediapipe==0.10.14` wheel (installed without its dependencies; the package is
  never imported, only its files are read): the detector and the `full` landmark model;
- a folder named by `METAHMR_BLAZEPOSE_DIR`, which `metahmr assets blazepose` fills from the
  pinned `@mediapipe/pose` npm package (sha256 checked): `lite`, `full` and `heavy`.

Google's MediaPipe BlazePose GHUM models, Apache License 2.0.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

VARIANTS = ("lite", "full", "heavy")

ENV_DIR = "METAHMR_BLAZEPOSE_DIR"
WHEEL_PACKAGE = "mediapipe"
WHEEL_VERSION = "0.10.14"
_WHEEL_FILES = {
    "detector": "modules/pose_detection/pose_detection.tflite",
    "full": "modules/pose_landmark/pose_landmark_full.tflite",
}
_DIR_FILES = {
    "detector": "pose_detection.tflite",
    "lite": "pose_landmark_lite.tflite",
    "full": "pose_landmark_full.tflite",
    "heavy": "pose_landmark_heavy.tflite",
}


NPM_PACKAGE = "@mediapipe/pose"
NPM_VERSION = "0.5.1675469404"
# sha256 of the landmark models in that tarball (full is byte-identical to the wheel's).
NPM_SHA256 = {
    "lite": "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61",
    "full": "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    "heavy": "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe",
}


class BlazePoseUnavailable(RuntimeError):
    """The BlazePose files or the LiteRT runtime are missing (the message says how to fix it)."""


def model_path(name: str, directory: str | Path | None = None) -> Path:
    """The .tflite file for `name` ("detector" or a landmark variant in VARIANTS).

    Looked up in `directory`, else $METAHMR_BLAZEPOSE_DIR, else the installed mediapipe
    wheel (detector and full only). Raises BlazePoseUnavailable with what to do.
    """
    if name not in _DIR_FILES:
        raise ValueError(f"unknown BlazePose model {name!r}; valid: detector, {', '.join(VARIANTS)}")
    folder = directory if directory is not None else os.environ.get(ENV_DIR) or None
    if folder is not None:
        path = Path(folder) / _DIR_FILES[name]
        if path.is_file():
            return path
        if name not in _WHEEL_FILES:
            raise BlazePoseUnavailable(
                f"BlazePose {name} not found at {path}; `metahmr assets blazepose --out "
                f"{folder}` fetches it from the @mediapipe/pose npm package (needs npm)"
            )
    if name not in _WHEEL_FILES:
        raise BlazePoseUnavailable(
            f"BlazePose {name} ships only in the @mediapipe/pose npm package: run "
            f"`metahmr assets blazepose --out DIR` and set {ENV_DIR}=DIR, or use 'full'"
        )
    return wheel_file(name)


def wheel_file(name: str) -> Path:
    """The .tflite file for `name` ("detector" or "full") inside the installed wheel."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)  # finds the files; does not import mediapipe
    if spec is None or not spec.submodule_search_locations:
        raise BlazePoseUnavailable(
            f"BlazePose's models come from the {WHEEL_PACKAGE}=={WHEEL_VERSION} wheel, which is "
            f"not installed: `pip install --no-deps {WHEEL_PACKAGE}=={WHEEL_VERSION}` (make "
            "install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _WHEEL_FILES[name]
    if not path.is_file():
        raise BlazePoseUnavailable(
            f"{path} is missing: the installed {WHEEL_PACKAGE} is not {WHEEL_VERSION} (later "
            f"releases no longer ship BlazePose); `pip install --no-deps "
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION}`"
        )
    return path


def fetch_npm_models(out: str | Path) -> list[Path]:
    """Write the three landmark models (from the pinned npm package, hashes checked), the
    detector (from the wheel) and PROVENANCE.md into `out`; returns the files written."""
    import hashlib
    import shutil
    import subprocess
    import tarfile
    import tempfile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise BlazePoseUnavailable("`metahmr assets blazepose` needs npm (apt-get install npm)")
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
        if run.returncode != 0:
            raise BlazePoseUnavailable(f"npm pack {spec} failed: {run.stderr.strip()[-500:]}")
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as tar:
            for variant in VARIANTS:
                member = tar.getmember(f"package/{_DIR_FILES[variant]}")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                digest = hashlib.sha256(data).hexdigest()
                if digest != NPM_SHA256[variant]:
                    raise BlazePoseUnavailable(
                        f"{spec}: {member.name} has sha256 {digest}, expected {NPM_SHA256[variant]}"
                    )
                path = out / _DIR_FILES[variant]
                path.write_bytes(data)
                written.append(path)
    detector = out / _DIR_FILES["detector"]
    shutil.copyfile(wheel_file("detector"), detector)
    written.append(detector)
    note = out / "PROVENANCE.md"
    note.write_text(
        "# BlazePose models\n\n"
        f"- {', '.join(_DIR_FILES[v] for v in VARIANTS)}: from the npm package {spec} "
        "(sha256 checked by `metahmr assets blazepose`).\n"
        f"- {_DIR_FILES['detector']}: from the {WHEEL_PACKAGE}=={WHEEL_VERSION} wheel.\n"
        "- Google's MediaPipe BlazePose GHUM models, Apache License 2.0.\n"
    )
    written.append(note)
    return written
