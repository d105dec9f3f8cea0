"""`metahmr bench tto --against REV`: the shipped-model TTO ratios of this tree against an
earlier revision's, measured in alternating rounds on the same machine.

One `bench tto` run moves with the shared machine (its ratios have ranged over ±25% between
runs of the same code), so a single run before a change and a single run after it cannot say
whether the change made the TTO slower. Here each round runs `metahmr bench tto --backbones ''
--model CKPT --no-doc --json` once in this tree and once in REV's (exported with `git archive`
into a temporary folder), in a fresh process each, the order alternating from round to round.
Both time the same checkpoint: REV's shipped model, which this tree loads too (old
checkpoints load). Reported: every round's eager / forward and compiled / forward ratios,
their medians and ranges, and in how many rounds this tree's ratio was at most REV's.
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

log = logging.getLogger(__name__)

SECTION = "TTO (shipped model) against an earlier revision"
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path("model/assets/default/model.pt")
# What a side's process runs: the `metahmr` command of the tree it starts in (its folder is
# sys.path's first entry, ahead of the installed package).
BOOT = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
RATIOS = (("eager", "head_tto_overhead"), ("compiled", "head_tto_compiled_overhead"))
TIMES = ("forward_ms", "head_tto_ms", "head_tto_compiled_ms")
# With --backbones, the paper-sized rows of `bench tto` too (keys "<backbone>/<key>"): what
# is compared, as (label, key), lower being better for each.
PAPER = (
    ("eager / fwd", "head_tto_overhead"),
    ("compiled / fwd", "head_tto_compiled_overhead"),
    ("16 people eager (ms)", "batch16_ms"),
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
    """This tree's commit, short, with '+changes' when the working tree differs from it."""
    sha = _git(root, "rev-parse", "--short", "HEAD").decode().strip()
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no").strip()
    return sha + ("+changes" if dirty else "")


def run_side(
    tree: Path, checkpoint: Path, repeats: int, threads: int, out: Path,
    backbones: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One `bench tto` of `checkpoint`'s request path (and of random paper-sized regressors
    with `backbones`) by the code in `tree`, in a new process."""
    cmd = [
        sys.executable, "-c", BOOT, "bench", "tto", "--backbones", ",".join(backbones),
        "--model", str(checkpoint), "--repeats", str(repeats), "--threads", str(threads),
        "--no-doc", "--json", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench tto in {tree} exited {done.returncode}:\n{tail}")
    report = json.loads(out.read_text())
    result: dict[str, Any] = report["model_result"]
    for r in [result, *report.get("results", [])]:
        if r.get("compile_fell_back"):
            raise RuntimeError(
                f"bench tto in {tree}: compiled TTO fell back to eager: {r['compile_fell_back']}"
            )
    row = {k: result[k] for k in (*TIMES, *(key for _, key in RATIOS))}
    for r in report.get("results", []):
        row.update({f"{r['backbone']}/{key}": r[key] for _, key in PAPER})
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
        measured: list[dict[str, Any]] = []
        for i in range(rounds):
            order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
            entry: dict[str, Any] = {"first": order[0]}
            for side in order:
                out = Path(tmp) / f"{side}-{i}.json"
                entry[side] = run_side(trees[side], checkpoint, repeats, threads, out, backbones)
                log.info("round %d %s: %s", i + 1, side, entry[side])
            measured.append(entry)
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
        digits = 0 if key.endswith("_ms") else 2
        shown = [
            f"{v['median']:.{digits}f} ({v['min']:.{digits}f}–{v['max']:.{digits}f})"
            for v in (s["baseline"][key], s["current"][key])
        ]
        ratio = s["current"][key]["median"] / s["baseline"][key]["median"]
        return " | ".join([*shown, f"{ratio:.2f}", f"{s['not_worse'][key]} of {s['rounds']}"])

    medians = f"median (range) {base} | median (range) {cur} | current / baseline (medians) "
    medians += "| rounds with current <= baseline |"
    summary = ["| ratio | " + medians, "|---|---|---|---|---|"]
    summary += [f"| {name} / fwd | {cells(key)} |" for name, key in RATIOS]
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
        f"`git archive`), both on the same checkpoint (`{report['checkpoint']}`), "
        f"each round a fresh `bench tto {timed} --model CKPT --repeats "
        f"{report['repeats']} --threads {report['threads']}` process per tree, the order "
        "alternating between rounds so that both see the machine's drift alike.",
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
