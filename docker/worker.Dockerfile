# The GPU worker image: CUDA runtime + cuDNN (for ONNX Runtime's CUDA provider), CUDA torch,
# the package with its worker and gpu extras, and pyrender. Installs the way `make install`
# does: torch pinned first, then the package, then pyrender alone with --no-deps.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG PYRENDER_VERSION=0.1.45
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYOPENGL_PLATFORM=egl \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.12 (the package needs >=3.11,<3.13) and the libraries headless rendering needs
# (the Makefile's APT_PKGS: libosmesa6 libegl1 libgl1-mesa-dri libglu1-mesa), and a C++
# compiler with the Python headers for torch.compile (METAHMR_TTO_COMPILE=1).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ \
        libosmesa6 libegl1 libgl1-mesa-dri libglu1-mesa \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# torch first and pinned, as the Makefile does; on Linux the default torch wheel is the CUDA
# build (set PIP_INDEX_URL at build time to pick another CUDA variant).
RUN python -m pip install --upgrade pip && python -m pip install torch==${TORCH_VERSION}

COPY pyproject.toml README.md cli.py ./
COPY bench ./bench
COPY service ./service
COPY worker ./worker
COPY model ./model
COPY training ./training
RUN python -m pip install '.[worker,gpu]' \
    # The worker extra brings the CPU `onnxruntime`; it shares its import name with
    # `onnxruntime-gpu` and would shadow the CUDA provider: keep only the GPU build.
    && python -m pip uninstall -y onnxruntime \
    && python -m pip install --force-reinstall --no-deps \
        "onnxruntime-gpu==$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
    # pyrender pins PyOpenGL==3.1.0, which breaks headless EGL/OSMesa: install it alone.
    && python -m pip install --no-deps pyrender==${PYRENDER_VERSION} \
    # BlazePose's .tflite files: the wheel's files only, none of its dependencies.
    && python -m pip install --no-deps mediapipe==0.10.14

RUN useradd --create-home --uid 10001 metahmr
USER metahmr
# Export the shipped model's ONNX graphs into the image (a no-op while none ships), so a new
# container starts without exporting. Another model: mount a `metahmr export` folder and set
# METAHMR_MODEL_DIR to it.
ENV METAHMR_CACHE_DIR=/home/metahmr/.cache/metahmr
RUN metahmr assets prepare

ENV METAHMR_REDIS_URL=redis://redis:6379/0 \
    METAHMR_ONNX_PROVIDER=cuda
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.celery_app", "--healthcheck"]
# One task at a time per process; scale with more containers (`--scale worker=N`).
CMD ["python", "-m", "worker.celery_app", "--concurrency", "1"]
