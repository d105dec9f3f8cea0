# The API image: FastAPI + Redis client + Celery (to publish tasks). No torch, no model code:
# only the `service` package and the `metahmr` command (cli.py, which skips the packages an
# install lacks) are copied, and the base install has no heavy extras.
# Build from the repository root: docker build -f docker/api.Dockerfile .

# The demo page's and /docs' browser files (three.js, Swagger UI), pinned by
# web/package-lock.json. Only the copied files reach the image: no node at run time.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json web/.npmrc web/vendor.mjs ./
RUN npm ci --no-audit --no-fund && npm run vendor -- /vendor

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md cli.py ./
COPY service ./service
COPY --from=web /vendor ./service/static/vendor
# The package's base dependencies only (the same `pip install .` as the README's slim path).
RUN python -m pip install --upgrade pip && python -m pip install .

RUN useradd --create-home --uid 10001 metahmr
USER metahmr

ENV METAHMR_REDIS_URL=redis://redis:6379/0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "--factory", "service.main:app_from_env", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
