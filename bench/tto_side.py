"""One tree's side of `metahmr bench tto --against REV` (`bench.tto_against`).

Started with that tree's folder as its working directory and first import path, so that
`bench`, `model` and `worker` are that tree's own. It runs the tree's own `bench tto` set-up
(`bench.tto.run_from_args`: models, inputs, compiles) with the tree's median timers swapped
for a recorder: where the set-up would time a function, the function is kept instead, under
the result key the median would have gone to ("forward_ms", "resnet18/batch16_ms", ...). Then
it waits, warm, and times the functions asked for, when asked. So both trees are timed by their
own code, in two long-lived processes that take turns, instead of in fresh processes whose
start-up state differs from run to run.

Protocol (one JSON object a line): the side first writes {"keys": [...], "fell_back": {...}}
(what it can time; each set-up's `compile_failure()`). Each request {"time": [keys],
"passes": n} is answered with {key: [ms, ...]}: one untimed call of each key on its first
request, then n passes, one call of each key per pass, in turn. End of input ends the side.
Replies go out on the process's original stdout, prefixed with MARK; anything else the tree's
code prints goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

MARK = "@@tto-side "
# The names a tree's bench modules have given their median timer: (fn, repeats) -> ms, and
# ({name: fn}, repeats) -> {name: ms}.
TIMERS = ("median_ms", "_median_ms")
TIMERS_IN_TURN = ("medians_in_turn_ms",)


class Timed:
    """What the recorder hands back in place of a median: the function it was given (None
    for a value the set-up derived from other medians, e.g. a ratio)."""

    def __init__(self, fn: Callable[[], Any] | None = None) -> None:
        self.fn = fn

    def _derived(self, *_: Any) -> Timed:
        return Timed()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _derived
    __truediv__ = __rtruediv__ = _derived


def record(fn: Callable[[], Any], repeats: int) -> Timed:
    del repeats
    return Timed(fn)


def record_in_turn(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timed]:
    del repeats
    return {name: Timed(fn) for name, fn in fns.items()}


def install(modules: list[ModuleType]) -> int:
    """Swap every timer the modules hold for the recorder; returns how many were swapped."""
    swapped = 0
    for module in modules:
        for names, recorder in ((TIMERS, record), (TIMERS_IN_TURN, record_in_turn)):
            for name in names:
                if callable(getattr(module, name, None)):
                    setattr(module, name, recorder)
                    swapped += 1
    return swapped


def timed_functions(result: dict[str, Any], prefix: str = "") -> dict[str, Callable[[], Any]]:
    return {
        prefix + key: value.fn
        for key, value in result.items()
        if isinstance(value, Timed) and value.fn is not None
    }


def set_up(backbones: str, checkpoint: str, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run this tree's `bench tto --backbones B --model CKPT` set-up with recording timers;
    returns the recorded functions and each set-up's compile fallback."""
    # The tree's own modules, whatever their names hold (imported by name: not this tree's).
    tto = importlib.import_module("bench.tto")
    if not Path(tto.__file__ or "/").resolve().is_relative_to(Path.cwd().resolve()):
        raise RuntimeError(f"bench.tto came from {tto.__file__}, not from this tree ({Path.cwd()})")
    modules = [tto]
    tto_model: ModuleType | None = None
    try:
        tto_model = importlib.import_module("bench.tto_model")
    except ImportError:
        pass
    else:
        modules.append(tto_model)
    if not install(modules):
        raise RuntimeError("this tree's bench.tto has no median timer to record")
    results: list[tuple[str, dict[str, Any]]] = []
    bench_backbone = tto.bench_backbone

    def backbone(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = bench_backbone(name, *args, **kwargs)
        results.append((f"{name}/", result))
        return result

    vars(tto).update(bench_backbone=backbone, render_markdown=lambda *_: "")
    if tto_model is not None:
        bench_model = tto_model.bench_model

        def model(*args: Any, **kwargs: Any) -> dict[str, Any]:
            result: dict[str, Any] = bench_model(*args, **kwargs)
            results.append(("", result))
            return result

        vars(tto_model).update(bench_model=model, render_markdown=lambda *_: "")
    args = argparse.Namespace(
        backbones=backbones, model=checkpoint, repeats=1, threads=threads, device="cpu",
        json=None, doc=None, no_doc=True,
    )  # fmt: skip
    tto.run_from_args(args)
    fns: dict[str, Any] = {}
    fell_back: dict[str, Any] = {}
    for prefix, result in results:
        fns.update(timed_functions(result, prefix))
        fell_back[prefix.rstrip("/") or "model"] = result.get("compile_fell_back")
    return fns, fell_back


def serve(fns: dict[str, Callable[[], Any]], requests: Any, reply: Callable[[Any], None]) -> None:
    """Answer each timing request (module docstring). The timing is written here, not taken
    from `bench.timing`: in this process the tree's own timers are the recorder, and an old
    tree may have no such module."""
    warm: set[str] = set()
    for line in requests:
        request = json.loads(line)
        keys = request["time"]  # checked against the keys by the caller (`Side.time`)
        for key in keys:
            if key not in warm:
                fns[key]()
                warm.add(key)
        times: dict[str, list[float]] = {key: [] for key in keys}
        for _ in range(request["passes"]):
            for key in keys:
                start = time.perf_counter()
                fns[key]()
                times[key].append(1000.0 * (time.perf_counter() - start))
        reply(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tto_side")
    parser.add_argument("--backbones", default="")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the tree's own prints and logs go to stderr

    def reply(obj: Any) -> None:
        out.write(MARK + json.dumps(obj) + "\n")
        out.flush()

    fns, fell_back = set_up(args.backbones, args.model, args.threads)
    reply({"keys": sorted(fns), "fell_back": fell_back})
    serve(fns, sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
