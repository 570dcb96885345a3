"""Headless Chromium for the web page's tests (and the README's screenshot): Debian's
`chromium` and `chromium-driver`, driven by Selenium. Both paths are given explicitly, so
Selenium Manager (which would try to download a browser and a driver) is never run."""

from __future__ import annotations

import shutil
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """None when a browser can be driven, else what is missing (and how to install it)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -e '.[test]'"
    return None


def chromium(width: int = 1400, height: int = 1800):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # A profile of its own: two browsers on one profile refuse to start (tests run side by side).
    profile = tempfile.mkdtemp(prefix="cartridge-chromium-")
    for arg in (f"--user-data-dir={profile}", "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
