"""The root command line parses and dispatches to the packages' sub-commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import build_parser, finish, main


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


def test_every_package_contributes_its_commands() -> None:
    parser = build_parser()
    for argv in (["export", "--checkpoint", "c.pt", "--out", "o"], ["data", "preview", "d",
                 "--out", "p.png"], ["assets", "prepare"], ["assets", "example"], ["serve"],
                 ["bench", "synth"], ["bodymodel", "info"]):  # fmt: skip
        assert callable(parser.parse_args(argv).func), argv


def test_sections_a_handler_returns_are_written_and_exit_zero(tmp_path: Path) -> None:
    """Training makes markdown sections (eval --model-card, tune); the CLI writes them."""
    from training.cli import DocSection

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Card\n\n## Metrics\n\nold\n\n## Limits\n\nmany\n")
    new = tmp_path / "docs" / "tuning.md"
    assert finish([DocSection(card, "Metrics", "new table"),
                   DocSection(new, "eft: a.pt", "rates", header="# TTO learning rates\n")]) == 0
    assert card.read_text() == "# Card\n\n## Metrics\n\nnew table\n\n## Limits\n\nmany\n"
    assert new.read_text() == "# TTO learning rates\n\n## eft: a.pt\n\nrates\n"
    assert (finish(0), finish(None), finish(3)) == (0, 0, 3)
