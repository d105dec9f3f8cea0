"""Specification of bench/tto_against.py: this tree's shipped-model TTO ratios against an
earlier revision's, in alternating rounds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import tto_against
from bench.tto_against import (
    PAPER_TIMES,
    TIMES,
    Side,
    compare,
    export_tree,
    render_markdown,
    round_row,
    summarise,
    timed_keys,
    tree_state,
)


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
    (repo / "docs").mkdir()
    (repo / "docs" / "bench.md").write_text("results\n")
    _git(repo, "add", "docs/bench.md")
    _git(repo, "commit", "-q", "-m", "docs")
    short = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "docs" / "bench.md").write_text("new results\n")  # what a benchmark writes
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
    assert "| forward (ms) | 34.0 (30.0–40.0) | 32.0 (30.0–36.0) | 0.94 | 2 of 3 |" in text
    # eager ms: baseline 60, 120, 81.6; current 80, 100.8, 66
    assert "| eager (ms) | 81.6 (60.0–120.0) | 80.0 (66.0–100.8) | 0.98 | 2 of 3 |" in text
    assert "one long-lived process, set up by its own `bench tto --backbones '' --model CKPT" in text
    assert "of `v1` (`abcdef0`) (exported" in text
    assert "Random paper-sized regressors" not in text
    report["baseline"]["rev"] = "abcdef01"
    assert "of `abcdef0` (exported" in render_markdown(report, "c")


# A tree with its own `bench tto` set-up, as far as bench/tto_side.py uses it: two timed
# functions that sleep (forward 40 ms, eager fit 20 ms, compiled 10 ms), recorded through the
# module's median timer; the shipped model's through bench.tto_model's own import of it.
STUB_TTO = """
import time
FELL_BACK = None
def median_ms(fn, repeats):
    raise AssertionError('the side must record, not time')
def _nap(ms):
    return lambda: time.sleep(ms / 1000)
def bench_backbone(name, settings, body):
    r = {'backbone': name, 'compile_fell_back': FELL_BACK}
    for key, ms in (('forward_ms', 40), ('head_tto_ms', 20), ('head_tto_compiled_ms', 10),
                    ('batch16_ms', 80), ('batch16_compiled_ms', 60), ('full_tto_ms', 999)):
        r[key] = median_ms(_nap(ms), settings)
    r['head_tto_overhead'] = r['head_tto_ms'] / r['forward_ms']
    return r
def render_markdown(report):
    raise AssertionError('nothing to render')
def run_from_args(args):
    assert args.no_doc and args.json is None and args.threads == 1
    [bench_backbone(b, args.repeats, None) for b in args.backbones.split(',') if b]
    from bench.tto_model import bench_model
    bench_model(args.model, args.repeats, None)
    return 0
"""
STUB_TTO_MODEL = """
from bench.tto import FELL_BACK, _nap, median_ms as _median_ms
def bench_model(checkpoint, settings, body):
    assert checkpoint.endswith('model.pt')
    r = {'compile_fell_back': FELL_BACK}
    r['forward_ms'] = _median_ms(_nap(40), settings)
    r['head_tto_ms'] = _median_ms(_nap(20), settings)
    r['head_tto_compiled_ms'] = _median_ms(_nap(10), settings)
    r['head_tto_overhead'] = r['head_tto_ms'] / r['forward_ms']
    return r
"""


def _stub_tree(tmp_path: Path, tto: str = STUB_TTO, name: str = "stub") -> Path:
    tree = tmp_path / name
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    (tree / "bench" / "tto.py").write_text(tto)
    (tree / "bench" / "tto_model.py").write_text(STUB_TTO_MODEL)
    return tree


def test_a_side_runs_its_trees_set_up_and_times_what_it_recorded(tmp_path: Path) -> None:
    tree = _stub_tree(tmp_path)
    side = Side(tree, Path("/x/model.pt"), threads=1, backbones=("r18",), log=tmp_path / "s.log")
    try:
        keys = side.ready()
        # the stub's own timed functions, the shipped model's unprefixed; derived values not
        assert set(keys) == {*TIMES, *(f"r18/{k}" for k in (*PAPER_TIMES, "full_tto_ms"))}
        times = side.time(timed_keys(("r18",)), passes=3)
    finally:
        side.close()
    assert set(times) == set(timed_keys(("r18",)))
    assert all(len(v) == 3 for v in times.values())
    row = round_row(times, ("r18",))
    assert 40.0 <= row["forward_ms"] < 60.0
    assert 10.0 <= row["head_tto_compiled_ms"] < 30.0
    assert row["head_tto_overhead"] == pytest.approx(row["head_tto_ms"] / row["forward_ms"])
    assert 0.3 < row["head_tto_overhead"] < 0.7  # 20 ms on 40
    assert 2.0 < row["r18/batch16_over_single_compiled"] < 8.0  # 60 ms on 10
    assert row["r18/batch16_ms"] >= 80.0
    assert set(row) == {*TIMES, "head_tto_overhead", "head_tto_compiled_overhead",
                        *(f"r18/{key}" for _, key in tto_against.PAPER)}  # fmt: skip


def test_a_side_reports_a_failed_set_up_and_a_compile_fallback(tmp_path: Path) -> None:
    broken = _stub_tree(tmp_path, STUB_TTO + "def run_from_args(args):\n    raise OSError('boom')\n")
    side = Side(broken, Path("m.pt"), 1, (), tmp_path / "b.log")
    with pytest.raises(RuntimeError, match=r"side in .*stub exited 1:(.|\n)*OSError: boom"):
        side.ready()
    side.close()
    fell_back = _stub_tree(tmp_path, STUB_TTO.replace("FELL_BACK = None", "FELL_BACK = 'no cc'"), "fb")
    side = Side(fell_back, Path("/x/model.pt"), 1, (), tmp_path / "f.log")
    with pytest.raises(RuntimeError, match=r"\(model\): compiled TTO fell back to eager: no cc"):
        side.ready()
    side.close()


def test_a_side_refuses_a_tree_without_a_timer_to_record(tmp_path: Path) -> None:
    tree = _stub_tree(tmp_path, STUB_TTO.replace("def median_ms(", "def other_timer("))
    side = Side(tree, Path("/x/model.pt"), 1, (), tmp_path / "n.log")
    with pytest.raises(RuntimeError, match="no median timer to record"):
        side.ready()
    side.close()


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
    assert (
        "| resnet18 | 16 people eager (ms) | 901.0 (900.0–902.0) | 900.0 (800.0–1000.0) | 1.00 | 2 of 3 |"
    ) in text
    assert "| resnet18 | eager / fwd | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) | 1.00 | 3 of 3 |" in text
