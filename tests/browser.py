"""Debian's headless Chromium driven by selenium: for tests/test_web.py, the daemon benchmark and docs/web.png."""

from __future__ import annotations

import shutil
from pathlib import Path

# What works in a container as root, with no network beyond the box: no sandbox, no GPU,
# nothing fetched by the browser itself, a fresh profile each time.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio")


def binaries() -> tuple[str | None, str | None]:
    """(chromium, chromedriver), None where missing."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def headless_chromium(profile: Path, window: str = "1280,900"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = binaries()
    if browser is None or driver is None:
        raise RuntimeError("headless Chromium is not installed (Debian packages 'chromium' and 'chromium-driver')")
    Path(profile).mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in FLAGS + (f"--window-size={window}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)
