"""A real browser for the portal's tests: Debian's Chromium, headless, driven by Playwright.

Playwright never downloads a browser here; it drives the Chromium that `make tools` installs
(`hack/tools/versions.env`, package chromium), with the flags a root, offline machine needs. A
failing test's page is saved as a screenshot under test-artifacts/screenshots/ (the path is in the
test report); the README's screenshots are taken by the tests too, and refreshed in docs/ with
BLACKTOP_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from blacktop.toolbox import find_tool
from helpers import REPO

ARTIFACTS = REPO / "test-artifacts" / "screenshots"
DOCS = REPO / "docs" / "screenshots"
# Root needs --no-sandbox; the rest keeps Chromium from calling home (this machine has no network,
# and its refused connections would only slow every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium; Playwright gives each launch a fresh, temporary --user-data-dir."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(find_tool("chromium")), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str, *, for_readme: bool = False) -> Path:
    """Save the whole page as test-artifacts/screenshots/<name>.png (and docs/, when asked to refresh)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if for_readme and os.environ.get("BLACKTOP_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)
    return path
