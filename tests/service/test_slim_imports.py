"""The API process never imports torch or the model package (the API image has neither), and
the `metahmr` command still works in that image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = "{'torch', 'model', 'worker', 'training', 'onnxruntime', 'bench', 'cli'}"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_api_modules_do_not_import_torch_or_model() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import service\n"
        "names = [m.name for m in pkgutil.iter_modules(service.__path__, 'service.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from service.config import Settings\n"
        "service.main.create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})\n"
        "print(len(names))\n"
        "print(','.join(heavy))\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    count, heavy = (done.stdout + "\n").split("\n")[:2]
    assert int(count) >= 10  # every service module was imported, not just a few
    assert heavy == ""


def test_metahmr_help_works_where_only_the_service_is_installed() -> None:
    """As in the API image: torch and every package but `service` missing."""
    code = (
        "import importlib.abc, sys\n"
        "class Missing(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'model', 'training', 'worker', 'bench'}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Missing())\n"
        "import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.rstrip().endswith("exit 0")
    assert "serve" in out and "recover" in out
    for absent in ("train", "bench", "assets", "export"):
        assert f"    {absent} " not in out, absent
