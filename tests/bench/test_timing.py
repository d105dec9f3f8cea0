"""Specification of bench/timing.py's timer of several functions in turn."""

from __future__ import annotations

import time

from bench.timing import medians_in_turn_ms


def test_functions_are_timed_in_turn_with_their_own_medians() -> None:
    calls: list[str] = []

    def sleeper(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    result = medians_in_turn_ms({"short": sleeper("short", 0.002), "long": sleeper("long", 0.02)}, 3)
    assert set(result) == {"short", "long"}
    # One untimed call of each, then rounds of one call each: never two of one in a row.
    assert calls == ["short", "long"] * 4
    assert 2.0 <= result["short"] < result["long"]
    assert result["long"] >= 20.0
