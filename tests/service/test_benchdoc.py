"""docs/benchmarks.md sections are replaced in place, others kept."""

from __future__ import annotations

from pathlib import Path

from service.benchdoc import write_section


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
