"""Markdown sections are replaced in place, the others kept; a new file gets its header."""

from __future__ import annotations

from pathlib import Path

from bench.docs import write_section


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section(doc, "synth", "old synth")
    write_section(doc, "tto", "tto table")
    write_section(doc, "synth", "new synth")
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "new synth" in text and "old synth" not in text
    assert text.index("## synth") < text.index("## tto")
    assert text.count("## synth") == 1 and "tto table" in text


def test_a_new_file_starts_with_the_given_header(tmp_path: Path) -> None:
    doc = tmp_path / "tuning.md"
    write_section(doc, "eft: a.pt", "rates", header="# TTO learning rates\n\nintro\n")
    write_section(doc, "eft: a.pt", "new rates", header="# ignored once the file exists\n")
    assert doc.read_text() == "# TTO learning rates\n\nintro\n\n## eft: a.pt\n\nnew rates\n"
