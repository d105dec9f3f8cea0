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


def _runtime_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the runtime packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_no_runtime_module_is_too_long() -> None:
    """Issue 13's limits: no runtime module over 600 lines, no worker module over 400."""
    too_long = {}
    for name, path in _runtime_modules().items():
        limit = 400 if name.startswith("worker") else 600
        lines = len(path.read_text().splitlines())
        if lines > limit:
            too_long[name] = lines
    assert too_long == {}


def test_no_import_cycles_among_the_runtime_modules() -> None:
    """Every import counts (lazy ones too); a package's __init__ re-exporting its own
    modules is not a cycle of theirs."""
    modules = _runtime_modules()
    edges = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = imported_modules(path.read_text(), name, is_package=is_package) & modules.keys()
        edges[name] = {t for t in targets if t != name and not (is_package and t.startswith(name))}
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert cycles == []
