"""Debian's headless Chromium, driven by selenium through Debian's chromedriver given by path: Selenium
Manager is never run, so nothing is downloaded (`make test-browser` installs both packages)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")              # Debian's launcher for /usr/lib/chromium/chromium
CHROMEDRIVER = Path("/usr/bin/chromedriver")      # chromium-driver's link to /usr/lib/chromium/chromedriver


def chromium_options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.add_argument("--headless=new")
    if os.geteuid() == 0:
        # Chromium refuses to start as root with its sandbox on (tests and CI run as root in a container).
        options.add_argument("--no-sandbox")
    # A container's /dev/shm is often 64 MB, which a renderer can exhaust; /tmp has room.
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument(f"--user-data-dir={profile}")      # a fresh profile: no cookie from another run
    # Only the loopback servers of the test: no proxy from the environment, no calls home.
    options.add_argument("--no-proxy-server")
    options.add_argument("--disable-background-networking")
    options.add_argument("--disable-component-update")
    options.add_argument("--no-first-run")
    return options


@pytest.fixture
def chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """A headless Chromium of its own, quit (browser and driver processes) at teardown."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert binary.is_file(), f"{binary} is missing: `make test-browser` installs chromium and chromium-driver"
    # Were selenium ever to fall back to Selenium Manager (which downloads drivers and browsers), it would
    # find no binary here and fail the test instead of fetching anything.
    monkeypatch.setenv("SE_MANAGER_PATH", str(tmp_path / "no-selenium-manager"))
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=chromium_options(tmp_path / "profile"))
    try:
        yield driver
    finally:
        driver.quit()
