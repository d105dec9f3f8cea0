"""Fixtures for the browser tests: Debian's headless Chromium driven by Selenium through
chromedriver (no browser is downloaded), and a real `metahmr serve` stack with API keys on."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from demo_browser import API_KEY, Page

from bench.demo_page import chromium_flags, find_chromium
from bench.serve_stack import serve_subprocess


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips with the reason when either is missing."""
    browser, driver = find_chromium(), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "headless Chromium is not installed: `apt-get install chromium chromium-driver` "
            "(`make install` does when run as root)"
        )
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra)")
    return browser, driver


@pytest.fixture(scope="module")
def served(chromium: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`metahmr serve` with the shipped model, one worker and API keys on; yields its URL.
    (It asks for `chromium` so that a machine without a browser skips before starting it.)"""
    state = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHMR_")}
    env |= {
        "METAHMR_API_KEYS": API_KEY,
        "METAHMR_STATE_DIR": str(state),
        "METAHMR_RATE_LIMIT_PER_MIN": "0",
        "OMP_NUM_THREADS": "1",
    }
    with (state / "serve.log").open("wb") as log:
        try:
            with serve_subprocess(env, log, timeout_s=240) as served:
                yield served.url
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{(state / 'serve.log').read_text()[-4000:]}") from exc


@pytest.fixture
def open_page(chromium: tuple[str, str]) -> Iterator[Callable[..., Page]]:
    """Open a window of a given size; closed after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def open_(width: int = 1200, height: int = 1000) -> Page:
        options = Options()
        options.binary_location = chromium[0]
        for flag in chromium_flags(width, height):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
        driver.set_window_size(width, height)
        drivers.append(driver)
        return Page(driver)

    yield open_
    for driver in drivers:
        driver.quit()
