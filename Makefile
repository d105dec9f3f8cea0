# metahmr — the commands a newcomer needs. `make install` is idempotent.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
APT_PKGS := libosmesa6 libegl1 libgl1-mesa-dri libglu1-mesa
# Only the browser tests and `metahmr demo screenshot` use these; they skip without them.
BROWSER_PKGS := chromium chromium-driver
# The demo page's and /docs' browser files, copied from web/node_modules (web/vendor.mjs).
WEB_STAMP := service/static/vendor/versions.json
PYTEST_ARGS ?=

.PHONY: install test test-all test-smpl lint serve assets clean-venv

install: $(STAMP) $(WEB_STAMP) assets

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || \
	    echo "warning: could not install$$missing (rendering may be unavailable)"; fi; \
	  missing=""; for p in $(BROWSER_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || \
	    echo "warning: could not install$$missing (the browser tests will skip)"; fi; fi
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a range would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[worker,dev]'
	# pyrender pins PyOpenGL==3.1.0, which breaks headless OSMesa/EGL: install it alone.
	$(PIP) install -q --no-deps pyrender==0.1.45
	# BlazePose's .tflite files ship in this wheel; only the files are read (LiteRT runs
	# them), so none of its dependencies (TensorFlow-sized) are installed. Pinned: later
	# releases no longer ship them.
	$(PIP) install -q --no-deps mediapipe==0.10.14
	@touch $(STAMP)

# three.js and Swagger UI, pinned by web/package-lock.json, copied into the package so that
# /demo and /docs load nothing from another host (the API image does the same at build time).
$(WEB_STAMP): web/package.json web/package-lock.json web/vendor.mjs
	@command -v npm >/dev/null || { echo "npm is missing: apt-get install npm (it installs /demo's and /docs' scripts)"; exit 1; }
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	npm run --prefix web --silent vendor

# Derived, uncommitted artefacts (e.g. ONNX graphs exported from the shipped weights).
assets: $(STAMP)
	@$(VENV)/bin/metahmr assets prepare --quiet || echo "note: no shipped model assets to prepare yet"

test: install
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Our posing against the smplx package (non-commercial licence, the `smpl` extra). It goes
# into its own folder, not the venv, so the other tests keep running without it; its own
# dependencies (torch, numpy) are the venv's.
SMPL_EXTRA := build/smpl-extra
test-smpl: install
	$(PIP) install -q --no-deps --target $(SMPL_EXTRA) smplx==0.1.28
	PYTHONPATH=$(SMPL_EXTRA) $(VENV)/bin/pytest -m smplx tests/model/test_body_smplx.py $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy model training service worker bench cli.py

# make serve PORT=8123 (or METAHMR_PORT=8123); HOST=0.0.0.0 to listen beyond this machine.
serve: install
	$(VENV)/bin/metahmr serve $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

clean-venv:
	rm -rf $(VENV)
