"""Docker Compose and the Dockerfiles: valid, complete, and installing the package the way
the Makefile does. No Docker engine runs here, so nothing is built."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _makefile_pin(package: str) -> str:
    match = re.search(rf"{package}==([0-9][0-9.]*)", (REPO / "Makefile").read_text())
    assert match, f"the Makefile no longer pins {package}"
    return match.group(1)


def test_compose_has_the_services_with_health_checks() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "api", "worker", "flower"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    command = services["redis"]["command"]  # no RDB copies of deleted images (README)
    assert command[command.index("--save") + 1] == ""
    for name in ("api", "worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu_and_can_scale() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Fixed names or host ports would clash between replicas of `--scale worker=N`.
    assert "container_name" not in worker and "ports" not in worker


def test_compose_builds_from_the_dockerfiles_here() -> None:
    services = _compose()["services"]
    for name, dockerfile in (
        ("api", "docker/api.Dockerfile"),
        ("worker", "docker/worker.Dockerfile"),
    ):
        assert services[name]["build"] == {"context": ".", "dockerfile": dockerfile}
        text = (REPO / dockerfile).read_text()
        # COPY --from=STAGE copies from an earlier build stage, not from the context.
        copied = [
            s
            for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
            for s in line.split()[:-1]
        ]
        sent = (REPO / f"{dockerfile}.dockerignore").read_text().split()
        for source in copied:
            assert (REPO / source).exists(), f"{dockerfile} copies missing {source}"
            assert {f"!{source}", f"!{source}/**"} & set(sent), f"{dockerfile}: {source} ignored"
        # `pip install .` installs the `metahmr` command from cli.py (pyproject's py-modules).
        assert "cli.py" in copied, dockerfile


def test_api_image_is_slim() -> None:
    text = (REPO / "docker/api.Dockerfile").read_text()
    assert re.search(r"pip install \.(\s|$)", text)
    assert "torch" not in text.replace("No torch", "") and "[worker" not in text
    assert "COPY model" not in text and "COPY worker" not in text
    assert "service.main:app_from_env" in text


def test_worker_image_installs_like_the_makefile() -> None:
    text = (REPO / "docker/worker.Dockerfile").read_text()
    torch, pyrender = _makefile_pin("torch"), _makefile_pin("pyrender")
    assert f"ARG TORCH_VERSION={torch}" in text and "torch==${TORCH_VERSION}" in text
    assert f"ARG PYRENDER_VERSION={pyrender}" in text
    assert "--no-deps pyrender==${PYRENDER_VERSION}" in text
    assert "'.[worker,gpu]'" in text
    # torch is installed before the package, as in the Makefile.
    assert text.index("torch==${TORCH_VERSION}") < text.index("'.[worker,gpu]'")
    apt = re.search(r"^APT_PKGS\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert apt is not None
    for package in apt.group(1).split():
        assert package in text, f"worker image lacks {package}"
    assert "nvidia/cuda:" in text and "cudnn" in text


def test_compose_config_accepts_the_file() -> None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, cwd=REPO)
        if probe.returncode != 0:
            continue
        done = subprocess.run(
            [*cmd, "config", "--quiet"], capture_output=True, cwd=REPO, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()
        return
    pytest.skip("no docker compose client here")
