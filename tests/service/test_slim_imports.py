"""The API process never imports torch or the model package (the API image has neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_api_modules_do_not_import_torch_or_model() -> None:
    code = (
        "import sys\n"
        "import service.main, service.client, service.commands, service.serve, service.bench_service\n"
        "from service.config import Settings\n"
        "service.main.create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'model', 'worker', 'training', 'onnxruntime'})\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
