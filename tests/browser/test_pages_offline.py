"""/docs and /demo work with no internet: their HTML and every script they import (followed
through the import map and the modules' own imports) are files this server answers with 200.
No browser needed; the browser tests check the same from Chromium's network log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

import service.demo
from service.config import Settings
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]
BASE = "http://testserver"
# `import ... from "x"`, `import "x"`, `export ... from "x"` in an ES module.
_IMPORT = re.compile(
    r"""(?:^|[;\s}])(?:import|export)\s*(?:[\w*{}\s,$]+?\s*from\s*)?["']([^"']+)["']"""
)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.import_map: dict[str, str] = {}
        self._in_map = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name):
                self.urls.append(str(found[name]))
        self._in_map = tag == "script" and found.get("type") == "importmap"

    def handle_data(self, data: str) -> None:
        if self._in_map and data.strip():
            self.import_map = json.loads(data)["imports"]
            self._in_map = False


@pytest.fixture
def api() -> Iterator[TestClient]:
    # No request here touches Redis.
    with TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0"))) as client:
        yield client


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("", "data") and not url.startswith("//")


def _resolve(specifier: str, importer: str, import_map: dict[str, str], page: str) -> str:
    for key, target in import_map.items():
        if specifier == key or (key.endswith("/") and specifier.startswith(key)):
            return urljoin(page, target + specifier[len(key) :])
    return urljoin(importer, specifier)


def test_docs_loads_swagger_ui_from_this_server(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = _Refs()
    refs.feed(page.text)
    assert len(refs.urls) == 3 and all(_local(u) for u in refs.urls), refs.urls
    assert "http" not in page.text  # nor in the inline script that starts Swagger UI
    sizes = {}
    for url in refs.urls:
        got = api.get(url)
        assert got.status_code == 200, url
        sizes[url.rsplit("/", 1)[-1]] = len(got.content)
    assert sizes["swagger-ui-bundle.js"] > 500_000 and sizes["swagger-ui.css"] > 50_000
    assert api.get("/openapi.json").json()["info"]["title"] == "metahmr"
    assert api.get("/redoc").status_code == 404  # FastAPI's ReDoc page needs a CDN: not served


def test_demo_page_and_its_module_graph_are_served_here(api: TestClient) -> None:
    page = api.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>metahmr" in page.text
    refs = _Refs()
    refs.feed(page.text)
    assert refs.import_map and all(_local(u) for u in [*refs.urls, *refs.import_map.values()])
    page_url = f"{BASE}/demo"
    modules = [urljoin(page_url, u) for u in refs.urls if u.endswith(".js")]
    seen: set[str] = set()
    while modules:
        url = modules.pop()
        if url in seen:
            continue
        seen.add(url)
        got = api.get(url)
        assert got.status_code == 200, url
        assert "javascript" in got.headers["content-type"], url
        for spec in _IMPORT.findall(got.text):
            target = _resolve(spec, url, refs.import_map, page_url)
            assert target.startswith(BASE), f"{url} imports {spec} from another host"
            modules.append(target)
    names = {u.rsplit("/", 1)[-1] for u in seen}
    assert {"demo.js", "viewer.js", "three.module.js", "three.core.js"} <= names
    assert {"OrbitControls.js", "GLTFLoader.js", "BufferGeometryUtils.js"} <= names
    for url in refs.urls:
        if not url.startswith("data:"):
            assert api.get(urljoin(page_url, url)).status_code == 200, url
    example = api.get("/static/demo/example.jpg")
    assert example.content == (REPO / "docs" / "img" / "example.jpg").read_bytes()


def test_root_leads_people_to_the_demo(api: TestClient) -> None:
    response = api.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert urljoin(f"{BASE}/", response.headers["location"]) == f"{BASE}/demo"


def test_missing_browser_files_say_how_to_install_them(
    api: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.demo, "VENDOR_DIR", tmp_path)  # as before `npm run vendor`
    for path in ("/docs", "/demo"):
        response = api.get(path)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "page_assets_missing" and "make install" in error["message"]


def test_api_image_builds_the_browser_files_from_the_lockfile_without_node_at_run_time() -> None:
    text = (REPO / "docker" / "api.Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    web, final = stages
    assert web.startswith("node:") and "npm ci" in web and "web/package-lock.json" in web
    assert final.startswith("python:") and "npm" not in final and "node" not in final.lower()
    assert "COPY --from=web /vendor ./service/static/vendor" in final
    ignore = (REPO / "docker" / "api.Dockerfile.dockerignore").read_text().split()
    assert {"!web/package-lock.json", "!web/vendor.mjs", "service/static/vendor/**"} <= set(ignore)


def test_the_viewer_colours_people_like_the_overlay() -> None:
    from worker.stages.files import PERSON_COLORS

    viewer = (REPO / "service" / "static" / "demo" / "viewer.js").read_text()
    listed = re.search(r"PERSON_COLORS = \[([^\]]*)\]", viewer)
    assert listed is not None
    assert tuple(re.findall(r'"(#[0-9a-f]{6})"', listed.group(1))) == PERSON_COLORS
    assert len(set(PERSON_COLORS)) == len(PERSON_COLORS) >= 6
