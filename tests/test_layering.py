"""Who may import whom (ARCHITECTURE.md section 2), read from the source of every module.

Every import counts, at module level or inside a function: a lazy import is still a
dependency (the slim API image has no torch, no model code, no benchmarks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "worker", "service")
# What the worker may take from the service: the Redis job store (with the job-scoped log
# context) and the typed contract.
WORKER_MAY_IMPORT_FROM_SERVICE = {"service.jobs", "service.contract"}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module the source of `module` imports, absolute (`from x import y` also yields
    `x.y`, which may be a submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            modules.add(name)
            modules.update(f"{name}.{alias.name}" for alias in node.names)
    return modules


def forbidden(package: str, module: str) -> str | None:
    """Why `package` may not import `module` (None: it may)."""
    top = module.split(".")[0]
    if package in ("model", "training"):
        if top in ("service", "bench", "cli", "worker"):
            return f"{package}/ imports nothing from {top}"
        if package == "model" and top == "training":
            return "model/ imports nothing from training"
    if package == "worker":
        if top in ("training", "bench", "cli"):
            return f"worker/ imports nothing from {top}"
        if top == "service" and module != "service" and not any(
            module == allowed or module.startswith(allowed + ".")
            for allowed in WORKER_MAY_IMPORT_FROM_SERVICE
        ):
            return f"worker/ takes only {sorted(WORKER_MAY_IMPORT_FROM_SERVICE)} from service"
    if package == "service" and top in ("model", "worker", "training", "bench", "cli", "torch"):
        return f"service/ never imports {top} (the API image stays slim)"
    return None


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        flagged: set[str] = set()
        for imported in sorted(imported_modules(path.read_text(), module, is_package)):
            why = forbidden(package, imported)
            if why and imported.rsplit(".", 1)[0] not in flagged:  # `x`, not also `x.name`
                flagged.add(imported)
                found.append(f"{path.relative_to(REPO)}: {imported} ({why})")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert violations(package) == []


def test_the_rules_catch_imports_anywhere_in_a_module() -> None:
    """The checker itself: a lazy import inside a function is found, relative imports are
    resolved, and `from service import jobs` is the job store while `config` is not."""
    source = (
        "import numpy\n"
        "from service import jobs\n"
        "from .pipeline import Pipeline\n"
        "def handler():\n"
        "    from service import config\n"
        "    import training.example\n"
    )
    modules = imported_modules(source, "worker.tasks")
    assert {"numpy", "service.jobs", "worker.pipeline", "training.example"} <= modules
    assert imported_modules("from . import cli", "model", is_package=True) == {"model", "model.cli"}
    reasons = {m: forbidden("worker", m) for m in modules}
    assert reasons["service.jobs"] is None and reasons["numpy"] is None
    assert reasons["worker.pipeline"] is None
    assert reasons["service.config"] and reasons["training.example"]
    assert forbidden("worker", "service.logs") and forbidden("worker", "bench.tto")
    assert forbidden("service", "torch.nn") and forbidden("service", "worker.tasks")
    assert forbidden("model", "cli") and forbidden("model", "service.jobs")
    assert forbidden("training", "bench.docs") and forbidden("training", "service")
    assert forbidden("training", "model.tto") is None and forbidden("worker", "model.tto") is None
