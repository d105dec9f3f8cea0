"""How a newcomer picks `metahmr serve`'s port and where its data lives; what the README's
examples write stays out of git."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from service.commands import register
from service.config import Settings
from service.serve import LocalStack

REPO = Path(__file__).resolve().parents[2]


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metahmr")
    register(parser.add_subparsers(dest="command", required=True), {})
    return parser.parse_args(["serve", *argv])


def test_port_comes_from_the_flag_then_metahmr_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAHMR_PORT", raising=False)
    assert _serve_args().port == 8000
    monkeypatch.setenv("METAHMR_PORT", "8123")
    assert _serve_args().port == 8123
    assert _serve_args("--port", "9001").port == 9001
    monkeypatch.setenv("METAHMR_PORT", "eighty")
    with pytest.raises(SystemExit):  # a usage error of `serve`, with argparse's message
        _serve_args()


def test_make_serve_takes_a_port() -> None:
    done = subprocess.run(
        ["make", "-n", "serve", "PORT=8123"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"metahmr serve --port 8123\b", done.stdout), done.stdout


def test_state_dir_follows_xdg_and_metahmr_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("METAHMR_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Settings().state_dir == tmp_path / "xdg" / "metahmr"
    monkeypatch.setenv("METAHMR_STATE_DIR", str(tmp_path / "mine"))
    assert Settings().state_dir == tmp_path / "mine"


def test_a_state_dir_in_use_is_refused_with_a_reason(tmp_path: Path) -> None:
    from service.embedded import EmbeddedRedis

    settings = Settings(state_dir=tmp_path, log_json=False)
    with EmbeddedRedis(tmp_path / "redis", appendonly=True):
        stack = LocalStack(settings)
        assert stack._start_redis() is False  # logged: another serve uses it
        assert stack._redis is None


def test_readme_outputs_are_ignored_by_git() -> None:
    readme = (REPO / "README.md").read_text()
    # Files the examples write into the current directory (no folder in the name).
    written = set(re.findall(r"(?:--[\w-]+|-o)\s+([\w.-]+\.(?:png|glb|obj|json|bvh|npz))\b", readme))
    assert {"out.png", "out.glb", "result.json"} <= written
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(written)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert sorted(done.stdout.split()) == sorted(written), done.stdout
