"""What ships in git under model/assets: weights under 30 MB in all (the project's budget),
and every folder with weights has its model card."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "model" / "assets"
WEIGHTS = (".pt", ".npz", ".onnx", ".xz", ".tflite", ".bin", ".safetensors")


def test_shipped_weights_stay_under_30_mb_and_have_model_cards() -> None:
    weights = [p for p in ASSETS.rglob("*") if p.is_file() and p.name.endswith(WEIGHTS)]
    assert {p.parent.name for p in weights} >= {"default", "open_smpl", "blazepose"}
    assert sum(p.stat().st_size for p in weights) < 30_000_000
    for folder in {p.parent for p in weights}:
        assert (folder / "MODEL_CARD.md").is_file(), folder
