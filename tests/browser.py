"""Debian's headless Chromium driven by Playwright, and ``fesf-dashboard`` as a user starts it.

Used by the browser tests and by ``docs/screenshots.py``. Playwright never downloads a
browser here: it drives ``/usr/bin/chromium`` (``make test`` installs Debian's package).
"""

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from fesf_fed.deployment.processes import FlowerProcess, flower_env, free_port, wait_for_port

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium as root in a container whose network ends at loopback: no sandbox, no GPU, and no
#: background connections (they would be refused, many at a time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Browser:
    """An open page, and every address it fetched from outside this machine (none, for the dashboard)."""

    page: Page
    outside: list[str]


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Browser]:
    """A fresh headless Chromium page; closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            opened = Browser(page, [])
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith(("http://127.0.0.1", "data:"))
                    else opened.outside.append(request.url)
                ),
            )
            yield opened
        finally:
            browser.close()


@dataclass
class Dashboard:
    """A running ``fesf-dashboard``: its address, process and output."""

    url: str
    process: FlowerProcess
    output: io.StringIO


@contextmanager
def dashboard(runs: Path) -> Iterator[Dashboard]:
    """Start ``fesf-dashboard --runs RUNS`` on a free 127.0.0.1 port; stop it (its process group) on exit."""
    port = free_port()
    output = io.StringIO()
    command = [str(Path(sys.executable).with_name("fesf-dashboard")), "--runs", str(runs), "--port", str(port)]
    process = FlowerProcess(command, env=flower_env(), sink=output)
    try:
        wait_for_port("127.0.0.1", port, process, timeout=60)
        yield Dashboard(f"http://127.0.0.1:{port}", process, output)
    finally:
        process.stop(grace=10)
