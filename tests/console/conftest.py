"""Fixtures of the console tests: headless Chromium from Debian driven by Playwright (the system
browser: Playwright's own browser download is not used, nor needed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.console.helpers import CHROMIUM


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium from Debian's ``chromium`` package (installed by .ci/run); never
    skipped when missing. Per module, not per session: Playwright's sync API keeps an event
    loop running in the main thread while it is open, and later tests call ``asyncio.run``."""
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or CHROMIUM
    assert shutil.which(path), "Debian's chromium is required (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c
