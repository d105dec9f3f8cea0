"""What the browser tests share: a Selenium window with its network log, and the rules a
request must meet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

API_KEY = "browser-test-key"
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "img" / "example.jpg"


class Page:
    """One headless Chromium window (Selenium) with its network log."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since the last call (Chromium's performance log)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def wait_for_state(self, *states: str, timeout_s: float = 120.0) -> str:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout_s, poll_frequency=0.2).until(
            lambda d: d.find_element("tag name", "body").get_attribute("data-state") in states
        )
        return str(self.driver.find_element("tag name", "body").get_attribute("data-state"))


def same_origin(url: str, base: str) -> bool:
    """True for URLs on `base`'s scheme, host and port, and for data: and blob: URLs of the
    page itself."""
    parts = urlsplit(url)
    if parts.scheme == "data":
        return True
    if parts.scheme == "blob":
        return same_origin(url[len("blob:") :], base)
    want = urlsplit(base)
    return (parts.scheme, parts.netloc) == (want.scheme, want.netloc)


EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "img" / "example.jpg"
