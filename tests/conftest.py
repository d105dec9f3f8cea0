"""Shared test set-up: headless rendering, few threads (the CI machine has two cores)."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("OMP_NUM_THREADS", "1")
