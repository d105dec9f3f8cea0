"""The root command line parses and dispatches to the packages' sub-commands."""

from __future__ import annotations

import pytest

from service.cli import build_parser, main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "bench" in out and "assets" in out


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["no-such-command"])
    assert exc.value.code == 2


def test_every_benchmark_the_docs_name_is_a_command() -> None:
    """docs/benchmarks.md says which command wrote each section: each must exist."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "benchmarks.md").read_text()
    named = set(re.findall(r"metahmr bench (\w+)", doc))
    assert named, "docs/benchmarks.md names no benchmark command"
    for what in sorted(named):
        args = build_parser().parse_args(["bench", what])
        assert callable(args.func), what
