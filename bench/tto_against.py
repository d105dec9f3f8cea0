"""`metahmr bench tto --against REV`: the TTO's times and ratios by this tree's code against an
earlier revision's, measured in alternating rounds on the same machine.

One `bench tto` run moves with the shared machine (its ratios have ranged over ±25% between
runs of the same code), and so did fresh processes per round: a process's start-up state
(allocator, thread placement, compile caches) moved the paper-sized rows as much as the
engines differ. So each tree gets one long-lived process (`bench/tto_side.py`), started in that
tree (REV's exported with `git archive` into a temporary folder) and set up by that tree's own
`bench tto --backbones B --model CKPT` code, with its median timer swapped for a recorder that
keeps the functions it would have timed. Both set up, warm, and take turns: each round one side
times every function `repeats` passes, then the other, the order alternating from round to
round. Both time the same checkpoint: REV's shipped model, which this tree loads too (old
checkpoints load). Reported: every round's times and ratios, their medians and ranges, and in
how many rounds this tree's was at most REV's.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.tto_side import MARK

log = logging.getLogger(__name__)

SECTION = "TTO (shipped model) against an earlier revision"
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path("model/assets/default/model.pt")
# What a side's process runs, in the tree it starts in (its folder is sys.path's first entry,
# ahead of the installed package).
SIDE = Path(__file__).resolve().with_name("tto_side.py")
# The shipped model's rows: (label, key), lower being better for each.
SHIPPED_ROWS = (
    ("forward (ms)", "forward_ms"),
    ("eager / fwd", "head_tto_overhead"),
    ("compiled / fwd", "head_tto_compiled_overhead"),
    ("eager (ms)", "head_tto_ms"),
    ("compiled (ms)", "head_tto_compiled_ms"),
)
TIMES = ("forward_ms", "head_tto_ms", "head_tto_compiled_ms")
# A paper-sized backbone's recorded functions (`bench.tto.bench_backbone`'s result keys).
PAPER_TIMES = (*TIMES, "batch16_ms", "batch16_compiled_ms")
# With --backbones, the paper-sized rows of `bench tto` too (keys "<backbone>/<key>"): what
# is compared, as (label, key), lower being better for each.
PAPER = (
    ("ONNX forward (ms)", "forward_ms"),
    *SHIPPED_ROWS[1:],
    ("16 people eager (ms)", "batch16_ms"),
    ("16 people compiled (ms)", "batch16_compiled_ms"),
    ("16 / 1 eager", "batch16_over_single"),
    ("16 / 1 compiled", "batch16_over_single_compiled"),
)


def _git(root: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def export_tree(rev: str, dest: Path, root: Path = ROOT) -> str:
    """Write revision `rev` of the repository at `root` into `dest`; returns its full hash."""
    sha = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    with tarfile.open(fileobj=io.BytesIO(_git(root, "archive", "--format=tar", sha))) as tar:
        tar.extractall(dest, filter="data")
    return sha


def tree_state(root: Path = ROOT) -> str:
    """This tree's commit, short, with '+changes' when the working tree differs from it
    outside docs/ (where benchmarks write their results, the timed code unchanged)."""
    sha = _git(root, "rev-parse", "--short", "HEAD").decode().strip()
    status = ("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs")
    dirty = _git(root, *status).strip()
    return sha + ("+changes" if dirty else "")


class Side:
    """One tree's warm `bench/tto_side.py` process: started in `tree` (whose code it runs),
    set up as that tree's `bench tto --backbones B --model CKPT` sets up, then timing what it
    is asked, when asked. Its stderr goes to `log`."""

    def __init__(
        self, tree: Path, checkpoint: Path, threads: int, backbones: tuple[str, ...], log: Path
    ) -> None:
        boot = f"import runpy; runpy.run_path({str(SIDE)!r}, run_name='__main__')"
        cmd = [
            sys.executable, "-c", boot, "--backbones", ",".join(backbones),
            "--model", str(checkpoint), "--threads", str(threads),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.tree, self.log = tree, log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True,
            )  # fmt: skip
        self.keys: list[str] = []

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        code = self.proc.wait()
        tail = "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-15:])
        raise RuntimeError(f"bench tto side in {self.tree} exited {code}:\n{tail}")

    def ready(self) -> list[str]:
        """Wait for the set-up; refuse one whose compiled TTO fell back to eager."""
        hello = self._read()
        for name, why in hello["fell_back"].items():
            if why:
                raise RuntimeError(
                    f"bench tto in {self.tree} ({name}): compiled TTO fell back to eager: {why}"
                )
        self.keys = hello["keys"]
        return self.keys

    def time(self, keys: list[str], passes: int) -> dict[str, list[float]]:
        """Each key's times (ms) over `passes` passes, one call of each per pass."""
        assert self.proc.stdin is not None
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise RuntimeError(f"bench tto in {self.tree} times no {missing}")
        self.proc.stdin.write(json.dumps({"time": keys, "passes": passes}) + "\n")
        self.proc.stdin.flush()
        times: dict[str, list[float]] = self._read()
        return times

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def timed_keys(backbones: tuple[str, ...]) -> list[str]:
    """What each side times every round: the shipped model's forward and fits, and each
    paper-sized backbone's forward, one-person and 16-people fits."""
    return [*TIMES, *(f"{b}/{key}" for b in backbones for key in PAPER_TIMES)]


def round_row(times: dict[str, list[float]], backbones: tuple[str, ...]) -> dict[str, float]:
    """One side's round: each time's median, and the ratios `bench tto` reports from them."""
    row = {key: statistics.median(values) for key, values in times.items()}
    for p in ("", *(f"{b}/" for b in backbones)):
        for fit in ("head_tto", "head_tto_compiled"):
            row[f"{p}{fit}_overhead"] = row[f"{p}{fit}_ms"] / row[p + "forward_ms"]
    for p in (f"{b}/" for b in backbones):
        row[p + "batch16_over_single"] = row[p + "batch16_ms"] / row[p + "head_tto_ms"]
        row[p + "batch16_over_single_compiled"] = (
            row[p + "batch16_compiled_ms"] / row[p + "head_tto_compiled_ms"]
        )
    return row


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each side's measures over the rounds, and for each measure the
    number of rounds in which this tree's ('current') was at most the baseline's (lower is
    better for every one)."""
    if not rounds:
        raise ValueError("no rounds to summarise")
    summary: dict[str, Any] = {"rounds": len(rounds)}
    keys = list(rounds[0]["current"])
    for side in ("current", "baseline"):
        summary[side] = {
            key: {
                "median": statistics.median(r[side][key] for r in rounds),
                "min": min(r[side][key] for r in rounds),
                "max": max(r[side][key] for r in rounds),
            }
            for key in keys
        }
    summary["not_worse"] = {
        key: sum(r["current"][key] <= r["baseline"][key] for r in rounds) for key in keys
    }
    return summary


def compare(
    rev: str, rounds: int, repeats: int, threads: int, root: Path = ROOT,
    backbones: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the alternating rounds (see module) and return every round with their summary."""
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds} and {repeats}")
    with tempfile.TemporaryDirectory(prefix="metahmr-against-") as tmp:
        base_tree = Path(tmp) / "tree"
        base_tree.mkdir()
        sha = export_tree(rev, base_tree, root)
        checkpoint = base_tree / SHIPPED
        if not checkpoint.is_file():
            raise ValueError(f"{rev} has no shipped model at {SHIPPED}")
        trees = {"current": root, "baseline": base_tree}
        sides: dict[str, Side] = {}
        measured: list[dict[str, Any]] = []
        keys = timed_keys(backbones)
        try:
            for name, tree in trees.items():  # both set up at once; the set-up is not timed
                sides[name] = Side(tree, checkpoint, threads, backbones, Path(tmp) / f"{name}.log")
            for side in sides.values():
                side.ready()
            for i in range(rounds):
                order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
                entry: dict[str, Any] = {"first": order[0]}
                for name in order:
                    entry[name] = round_row(sides[name].time(keys, repeats), backbones)
                    log.info("round %d %s: %s", i + 1, name, entry[name])
                measured.append(entry)
        finally:
            for side in sides.values():
                side.close()
    return {
        "baseline": {"rev": rev, "commit": sha},
        "current": tree_state(root),
        "checkpoint": f"{sha[:7]}:{SHIPPED}",
        "repeats": repeats,
        "threads": threads,
        "backbones": list(backbones),
        "rounds": measured,
        "summary": summarise(measured),
    }


def render_markdown(report: dict[str, Any], command: str) -> str:
    s = report["summary"]
    base = report["baseline"]["commit"][:7]
    cur = report["current"]
    rows = [
        f"| round | first | forward {base} (ms) | forward {cur} (ms) | eager / fwd {base} "
        f"| eager / fwd {cur} | compiled / fwd {base} | compiled / fwd {cur} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report["rounds"], 1):
        b, c = r["baseline"], r["current"]
        first = base if r["first"] == "baseline" else cur
        rows.append(
            f"| {i} | {first} | {b['forward_ms']:.1f} | {c['forward_ms']:.1f} | "
            f"{b['head_tto_overhead']:.2f} | {c['head_tto_overhead']:.2f} | "
            f"{b['head_tto_compiled_overhead']:.2f} | {c['head_tto_compiled_overhead']:.2f} |"
        )

    def cells(key: str) -> str:
        """median (range) of each side, current / baseline of the medians, rounds not worse."""
        digits = 1 if key.endswith("_ms") else 2
        shown = [
            f"{v['median']:.{digits}f} ({v['min']:.{digits}f}–{v['max']:.{digits}f})"
            for v in (s["baseline"][key], s["current"][key])
        ]
        ratio = s["current"][key]["median"] / s["baseline"][key]["median"]
        return " | ".join([*shown, f"{ratio:.2f}", f"{s['not_worse'][key]} of {s['rounds']}"])

    medians = f"median (range) {base} | median (range) {cur} | current / baseline (medians) "
    medians += "| rounds with current <= baseline |"
    summary = ["| measure | " + medians, "|---|---|---|---|---|"]
    summary += [f"| {label} | {cells(key)} |" for label, key in SHIPPED_ROWS]
    backbones = report.get("backbones", [])
    paper: list[str] = []
    if backbones:
        paper = [
            "",
            "Random paper-sized regressors (`bench tto`'s \"TTO\" section), the same rounds:",
            "",
            "| backbone | measure | " + medians,
            "|---|---|---|---|---|---|",
        ]
        paper += [
            f"| {b} | {label} | {cells(f'{b}/{key}')} |" for b in backbones for label, key in PAPER
        ]
    rev = report["baseline"]["rev"]
    named = f"`{base}`" if report["baseline"]["commit"].startswith(rev) else f"`{rev}` (`{base}`)"
    timed = f"--backbones {','.join(backbones)}" if backbones else "--backbones ''"
    return "\n".join([
        f"Command: `{command}`",
        "",
        "The shipped model's request path and head TTO (as in the section \"TTO (shipped "
        f"model)\"), timed by the code of this tree (`{cur}`) and of {named} (exported with "
        f"`git archive`), both on the same checkpoint (`{report['checkpoint']}`). Each tree "
        f"has one long-lived process, set up by its own `bench tto {timed} --model CKPT "
        f"--threads {report['threads']}` code (`bench/tto_side.py`: the functions that code "
        "would time, kept, warmed up, then timed when asked); the two take turns, each round "
        f"one side timing every function {report['repeats']} passes (the median of each "
        "taken), then the other, the order alternating between rounds so that both see the "
        "machine's drift alike. A pass calls every function once, in turn, so the times are "
        "of fits that follow other work, not of `bench tto`'s back-to-back repeats. Each "
        "\"/ fwd\" ratio divides by its side's forward of the same round (the shipped "
        "model's request path up to the TTO's inputs; a paper-sized model's ONNX forward), "
        "so a slower forward lowers it: read it with the forward and ms rows.",
        "",
        *rows,
        "",
        *summary,
        *paper,
    ])  # fmt: skip


def command_line(args: argparse.Namespace) -> str:
    parts = ["metahmr", "bench", "tto", "--against", args.against, "--rounds", str(args.rounds)]
    if args.backbones:
        parts += ["--backbones", args.backbones]
    parts += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.json:
        parts += ["--json", str(args.json)]
    return " ".join(shlex.quote(p) for p in parts)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.docs import write_section

    if args.device != "cpu":
        raise ValueError("--against times the CPU request path only")
    # --backbones keeps its default (resnet18,resnet50) only when given: the shipped model
    # alone unless asked.
    backbones = tuple(b.strip() for b in (args.backbones or "").split(",") if b.strip())
    report = compare(args.against, args.rounds, args.repeats, args.threads, backbones=backbones)
    command = command_line(args)
    report["command"] = command
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_doc:
        write_section(Path(args.doc), SECTION, render_markdown(report, command))
    return 0
