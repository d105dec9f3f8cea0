"""Specification of bench/tto_against.py: this tree's shipped-model TTO ratios against an
earlier revision's, in alternating rounds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import tto_against
from bench.tto_against import compare, export_tree, render_markdown, run_side, summarise, tree_state


def _git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *env_args, "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "a.txt").write_text("two\n")
    (repo / "b.txt").write_text("new\n")
    _git(repo, "add", "a.txt", "b.txt")
    _git(repo, "commit", "-q", "-m", "second")
    return repo


def test_export_tree_writes_the_revision_not_the_working_tree(repo: Path, tmp_path: Path) -> None:
    first = _git(repo, "rev-parse", "HEAD~1")
    dest = tmp_path / "out"
    dest.mkdir()
    assert export_tree("HEAD~1", dest, repo) == first
    assert (dest / "a.txt").read_text() == "one\n"
    assert not (dest / "b.txt").exists()
    with pytest.raises(ValueError, match="rev-parse"):
        export_tree("no-such-rev", dest, repo)


def test_tree_state_says_when_the_working_tree_differs(repo: Path) -> None:
    short = _git(repo, "rev-parse", "--short", "HEAD")
    assert tree_state(repo) == short
    (repo / "a.txt").write_text("changed\n")
    assert tree_state(repo) == short + "+changes"


def _side(fwd: float, eager: float, compiled: float) -> dict[str, float]:
    return {
        "forward_ms": fwd, "head_tto_ms": eager * fwd, "head_tto_compiled_ms": compiled * fwd,
        "head_tto_overhead": eager, "head_tto_compiled_overhead": compiled,
    }  # fmt: skip


ROUNDS = [
    {"first": "baseline", "baseline": _side(30.0, 2.0, 0.50), "current": _side(32.0, 2.5, 0.40)},
    {"first": "current", "baseline": _side(40.0, 3.0, 0.70), "current": _side(36.0, 2.8, 0.70)},
    {"first": "baseline", "baseline": _side(34.0, 2.4, 0.60), "current": _side(30.0, 2.2, 0.65)},
]


def test_summarise_gives_medians_ranges_and_rounds_not_worse() -> None:
    s = summarise(ROUNDS)
    assert s["rounds"] == 3
    assert s["baseline"]["head_tto_overhead"] == {"median": 2.4, "min": 2.0, "max": 3.0}
    assert s["current"]["head_tto_compiled_overhead"] == {"median": 0.65, "min": 0.40, "max": 0.70}
    assert s["current"]["forward_ms"]["median"] == 32.0
    # eager: 2.5 > 2.0, 2.8 <= 3.0, 2.2 <= 2.4; compiled: 0.4 <= 0.5, 0.7 <= 0.7, 0.65 > 0.6
    assert s["not_worse"]["head_tto_overhead"] == 2
    assert s["not_worse"]["head_tto_compiled_overhead"] == 2
    assert s["not_worse"]["forward_ms"] == 2  # 32 > 30, 36 <= 40, 30 <= 34
    with pytest.raises(ValueError, match="no rounds"):
        summarise([])


def test_render_markdown_has_every_round_and_the_summary() -> None:
    report = {
        "baseline": {"rev": "v1", "commit": "abcdef0123456789"},
        "current": "1234567",
        "checkpoint": "abcdef0:model/assets/default/model.pt",
        "repeats": 9,
        "threads": 2,
        "rounds": ROUNDS,
        "summary": summarise(ROUNDS),
    }
    text = render_markdown(report, "metahmr bench tto --against v1")
    assert text.startswith("Command: `metahmr bench tto --against v1`")
    assert "| 1 | abcdef0 | 30.0 | 32.0 | 2.00 | 2.50 | 0.50 | 0.40 |" in text
    assert "| 2 | 1234567 | 40.0 | 36.0 | 3.00 | 2.80 | 0.70 | 0.70 |" in text
    assert "| eager / fwd | 2.40 (2.00–3.00) | 2.50 (2.20–2.80) | 1.04 | 2 of 3 |" in text
    assert "| compiled / fwd | 0.60 (0.50–0.70) | 0.65 (0.40–0.70) | 1.08 | 2 of 3 |" in text
    assert "of `v1` (`abcdef0`) (exported" in text
    assert "paper-sized" not in text and "`bench tto --backbones '' --model CKPT" in text
    report["baseline"]["rev"] = "abcdef01"
    assert "of `abcdef0` (exported" in render_markdown(report, "c")


def _stub_tree(tmp_path: Path, body: str) -> Path:
    tree = tmp_path / "stub"
    tree.mkdir()
    (tree / "cli.py").write_text(body)
    return tree


def test_run_side_runs_the_code_of_its_tree(tmp_path: Path) -> None:
    # A tree whose `metahmr` records what it was asked and answers as `bench tto --json` does:
    # run_side must run this file, not the installed package's cli.
    tree = _stub_tree(tmp_path, (
        "import json, sys\n"
        "def main(argv):\n"
        "    out = argv[argv.index('--json') + 1]\n"
        "    r = {'forward_ms': 10.0, 'head_tto_ms': 20.0, 'head_tto_compiled_ms': 5.0,\n"
        "         'head_tto_overhead': 2.0, 'head_tto_compiled_overhead': 0.5, 'argv': argv}\n"
        "    json.dump({'model_result': r}, open(out, 'w'))\n"
        "    return 0\n"
    ))  # fmt: skip
    out = tmp_path / "r.json"
    got = run_side(tree, Path("/x/model.pt"), repeats=4, threads=1, out=out)
    assert got == _side(10.0, 2.0, 0.5)
    argv = json.loads(out.read_text())["model_result"]["argv"]
    assert argv[:5] == ["bench", "tto", "--backbones", "", "--model"]
    assert argv[5:] == ["/x/model.pt", "--repeats", "4", "--threads", "1", "--no-doc", "--json", str(out)]


def test_run_side_reports_a_failed_run_and_a_compile_fallback(tmp_path: Path) -> None:
    tree = _stub_tree(tmp_path, "import sys\ndef main(argv):\n    print('boom', file=sys.stderr)\n    return 3\n")
    with pytest.raises(RuntimeError, match=r"exited 3:\nboom"):
        run_side(tree, Path("m.pt"), 1, 1, tmp_path / "r.json")
    fell_back = tmp_path / "fb"
    fell_back.mkdir()
    (fell_back / "cli.py").write_text(
        "import json\ndef main(argv):\n"
        "    r = {'compile_fell_back': 'no compiler'}\n"
        "    json.dump({'model_result': r}, open(argv[argv.index('--json') + 1], 'w'))\n"
        "    return 0\n"
    )
    with pytest.raises(RuntimeError, match="fell back to eager: no compiler"):
        run_side(fell_back, Path("m.pt"), 1, 1, tmp_path / "r2.json")


def test_compare_refuses_bad_counts_and_a_revision_without_a_shipped_model(repo: Path) -> None:
    with pytest.raises(ValueError, match="rounds and repeats"):
        compare("HEAD", rounds=0, repeats=1, threads=1, root=repo)
    with pytest.raises(ValueError, match="no shipped model"):
        compare("HEAD", rounds=1, repeats=1, threads=1, root=repo)


@pytest.mark.slow
def test_compare_against_head_times_both_trees(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    report = compare("HEAD", rounds=1, repeats=1, threads=1, root=tto_against.ROOT)
    (entry,) = report["rounds"]
    for side in ("baseline", "current"):
        r = entry[side]
        assert r["forward_ms"] > 0 and r["head_tto_ms"] > 0 and r["head_tto_compiled_ms"] > 0
        assert r["head_tto_overhead"] == pytest.approx(r["head_tto_ms"] / r["forward_ms"])
    assert report["summary"]["rounds"] == 1


def test_render_markdown_adds_the_paper_sized_rows_when_timed() -> None:
    rounds = []
    for i, r in enumerate(ROUNDS):
        entry = dict(r)
        for side, batch16 in (("baseline", 900.0 + i), ("current", 800.0 + 100 * i)):
            extra = {f"resnet18/{key}": 1.0 for _, key in tto_against.PAPER}
            extra["resnet18/batch16_ms"] = batch16
            entry[side] = {**r[side], **extra}
        rounds.append(entry)
    report = {
        "baseline": {"rev": "v1", "commit": "abcdef0123456789"}, "current": "1234567",
        "checkpoint": "c", "repeats": 3, "threads": 2, "backbones": ["resnet18"],
        "rounds": rounds, "summary": summarise(rounds),
    }  # fmt: skip
    text = render_markdown(report, "c")
    assert "`bench tto --backbones resnet18 --model CKPT" in text
    # baseline 900, 901, 902; current 800, 900, 1000: medians 901 and 900, 2 rounds not worse
    assert "| resnet18 | 16 people eager (ms) | 901 (900–902) | 900 (800–1000) | 1.00 | 2 of 3 |" in text
    assert "| resnet18 | eager / fwd | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) | 1.00 | 3 of 3 |" in text


def test_run_side_passes_the_backbones_and_reads_their_rows(tmp_path: Path) -> None:
    tree = _stub_tree(tmp_path, (
        "import json\n"
        "def main(argv):\n"
        "    r = {'forward_ms': 10.0, 'head_tto_ms': 20.0, 'head_tto_compiled_ms': 5.0,\n"
        "         'head_tto_overhead': 2.0, 'head_tto_compiled_overhead': 0.5}\n"
        "    rows = [{'backbone': b, 'head_tto_overhead': 0.9, 'head_tto_compiled_overhead': 0.3,\n"
        "             'batch16_ms': 900.0, 'batch16_over_single': 9.0, 'batch16_over_single_compiled': 20.0}\n"
        "            for b in argv[argv.index('--backbones') + 1].split(',')]\n"
        "    json.dump({'model_result': r, 'results': rows}, open(argv[argv.index('--json') + 1], 'w'))\n"
        "    return 0\n"
    ))  # fmt: skip
    got = run_side(tree, Path("m.pt"), 1, 1, tmp_path / "r.json", ("resnet18", "resnet50"))
    assert got["resnet50/batch16_ms"] == 900.0 and got["resnet18/batch16_over_single"] == 9.0
    assert got["head_tto_overhead"] == 2.0
