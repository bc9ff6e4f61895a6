"""A real headless Chromium driven by Selenium, for the console's browser tests and its
screenshots (``docs/screenshots.py``): Debian's ``chromium`` and ``chromium-driver``
packages, never a browser or a driver downloaded at run time (Selenium is given both paths,
so its driver manager is never asked).

Chromium starts with every background connection switched off and a fresh profile: on a
machine without a network it otherwise hangs on them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: where Debian puts them (chromium, chromium-driver)
CANDIDATES = {
    "chromium": ["chromium", "chromium-browser", "/usr/lib/chromium/chromium"],
    "chromedriver": ["chromedriver", "/usr/lib/chromium/chromedriver"],
}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = "apt-get install -y chromium chromium-driver (and pip install selenium)"


def _find(name: str) -> str | None:
    for candidate in CANDIDATES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL_HINT}"
    absent = [name for name in CANDIDATES if _find(name) is None]
    if absent:
        return f"{' and '.join(absent)} not found: {INSTALL_HINT}"
    return None


@contextmanager
def chromium(folder: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium with a fresh profile in ``folder``, quit (browser and driver) on
    the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _find("chromium"), _find("chromedriver")
    assert browser and driver_path, missing()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    profile = folder / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=driver_path, log_output=str(folder / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
