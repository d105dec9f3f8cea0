"""The demo page (`GET /demo`) and the API docs (`GET /docs`), both served from this package.

The page (`service/static/demo/`) is static HTML, CSS and ES modules that use the API as any
client does: POST /recover, poll GET /jobs/{id}, fetch the files. Its 3D viewer (three.js)
and Swagger UI come from the npm registry, pinned by `web/package-lock.json`, and are copied
into `service/static/vendor/` when the package is installed (`make install`, the API image's
build: `npm ci && npm run vendor`). Nothing is loaded from another host at run time, so both
pages work offline. Torch-free, like the rest of the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.deps import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
STATIC_URL = "/static"
# The files the two pages load (web/vendor.mjs copies them).
THREE_FILES = (
    "three/three.module.js",
    "three/three.core.js",
    "three/addons/controls/OrbitControls.js",
    "three/addons/loaders/GLTFLoader.js",
)
SWAGGER_JS = "swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui/swagger-ui.css"
SWAGGER_ICON = "swagger-ui/favicon-32x32.png"

router = APIRouter(include_in_schema=False)


def missing_vendor_files(
    names: tuple[str, ...] = (*THREE_FILES, SWAGGER_JS, SWAGGER_CSS),
) -> list[str]:
    """The browser files among `names` that `npm run vendor` has not copied here."""
    return [name for name in names if not (VENDOR_DIR / name).is_file()]


def _require(names: tuple[str, ...]) -> None:
    missing = missing_vendor_files(names)
    if missing:
        raise ApiError(
            503,
            "page_assets_missing",
            f"this page's browser files are not installed ({', '.join(missing)} missing under "
            f"{VENDOR_DIR}); run `make install` (it runs `npm ci` and `npm run vendor` in web/)",
        )


def install_pages(app: FastAPI) -> None:
    """Add the demo page, the offline /docs and the static files to `app` (which must have
    been built with `docs_url=None`: FastAPI's own /docs loads Swagger UI from a CDN)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("demo")


@router.get("/demo")
async def demo_page() -> FileResponse:
    _require(THREE_FILES)
    # no-cache: the page changes with the package, and it is small.
    return FileResponse(STATIC_DIR / "demo" / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    _require((SWAGGER_JS, SWAGGER_CSS))
    root = request.scope.get("root_path", "").rstrip("/")
    vendor = f"{root}{STATIC_URL}/vendor"
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{vendor}/{SWAGGER_JS}",
        swagger_css_url=f"{vendor}/{SWAGGER_CSS}",
        swagger_favicon_url=f"{vendor}/{SWAGGER_ICON}",
    )
