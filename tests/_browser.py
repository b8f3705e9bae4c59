r"""Headless Chromium for the tests that open HTML pages (views, reports), with selenium.

:func:`start_browser` starts one driver (``pytest.skip`` when the Debian ``chromium`` /
``chromium-driver`` binaries are missing; ``make test`` installs them);
:meth:`Browser.open` loads a local file and returns the network requests the page made, which
for an offline page must be none but its own ``file://`` URL and ``data:`` URLs.
:func:`open_page` does both for a one-off page. Images are decoded with Pillow (a matplotlib
dependency).

Examples::

    browser = start_browser()
    try:
        requests = browser.open(path)
        assert not external(requests)
        count = browser.driver.execute_script("return document.querySelectorAll('svg').length")
    finally:
        browser.quit()
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def binaries() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when one is missing."""
    browser, driver = _find(CHROMIUM_NAMES), _find(DRIVER_NAMES)
    return (browser, driver) if browser and driver else None


class Browser:
    r"""A headless Chromium driven by selenium that logs the network requests of its pages.

    Args:
        driver: a started ``selenium.webdriver.Chrome`` with the performance log on.
    """

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def requests(self) -> list[str]:
        """URLs the page requested since the last call (``Network.requestWillBeSent``)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def console_errors(self) -> list[str]:
        """Severe console messages (script errors) since the last call."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def open(self, path: str | Path) -> list[str]:
        r"""Load a local HTML file and wait until it is ready.

        Returns:
            list[str]: every URL the page requested while loading (its own ``file://`` URL
            included).
        """
        self.requests()  # drop what earlier pages logged
        self.console_errors()
        self.driver.get(Path(path).resolve().as_uri())
        self.driver.execute_script("return document.readyState")
        return self.requests()

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def screenshot(self, selector: str | None = None) -> np.ndarray:
        """A screenshot of the page (or of the first element matching ``selector``) as an
        ``(H, W, 3)`` uint8 array."""
        from PIL import Image
        from selenium.webdriver.common.by import By

        png = (self.driver.find_element(By.CSS_SELECTOR, selector).screenshot_as_png
               if selector else self.driver.get_screenshot_as_png())
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def quit(self) -> None:
        self.driver.quit()


def external(urls: list[str]) -> list[str]:
    """The URLs that are neither local files nor inline data: what an offline page must not ask
    for."""
    return [u for u in urls if not u.startswith(("file://", "data:", "about:", "blob:"))]


def not_blank(image: np.ndarray, min_colours: int = 8, min_ink: float = 0.01) -> bool:
    """Whether a screenshot shows a picture: several distinct colours and some non-white
    pixels."""
    pixels = image.reshape(-1, image.shape[-1])
    colours = len(np.unique(pixels // 8, axis=0))
    ink = float((pixels.min(axis=1) < 240).mean())
    return colours >= min_colours and ink >= min_ink


def start_browser(width: int = 1400, height: int = 1000) -> Browser:
    r"""A headless Chromium; ``pytest.skip`` when chromium or chromedriver is not installed.

    Returns:
        Browser: quit it when done (a module-scoped fixture does).
    """
    found = binaries()
    if found is None:
        pytest.skip("headless browser tests need the Debian packages chromium and "
                    "chromium-driver (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = found
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not go online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--hide-scrollbars", "--disable-extensions",
                     "--disable-background-networking", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(30)
    return Browser(driver)


def open_page(path: str | Path) -> tuple[Any, list[str]]:
    r"""Start a browser, open ``path``; the caller quits ``driver``.

    Returns:
        tuple: ``(driver, network_requests)``, ``driver`` a :class:`Browser`-backed selenium
        driver (``.quit()`` it), ``network_requests`` every URL requested while loading.
    """
    browser = start_browser()
    return browser.driver, browser.open(path)
