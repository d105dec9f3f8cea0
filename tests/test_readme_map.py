"""The README's module map names every module and subpackage of the packages (issue 13: the
map matches the tree), so a new file cannot land without its line."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "worker", "service", "bench")


def _module_map() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("\nmodel/ ")
    return readme[start : readme.index("```", start)]


def test_the_module_map_names_every_module() -> None:
    block = _module_map()
    missing = []
    for package in PACKAGES:
        for path in sorted((REPO / package).iterdir()):
            if path.name.startswith("__"):
                continue
            if path.suffix == ".py" and path.name not in block:
                missing.append(f"{package}/{path.name}")
            if (path / "__init__.py").is_file() and f"{path.name}/" not in block:
                missing.append(f"{package}/{path.name}/")
    assert missing == []
    for package in PACKAGES:
        assert f"\n{package}/ " in block
