"""A real headless Chromium (Debian's package) driven by Playwright, installed when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get on a fresh machine (CI runs as root)."""
    if not os.path.exists(CHROMIUM):
        apt = shutil.which("apt-get")
        assert apt, f"{CHROMIUM} is missing and there is no apt-get to install it"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update"], check=True, env=env, capture_output=True)
        subprocess.run([apt, "install", "-y", "chromium"], check=True, env=env, capture_output=True)
    return CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=ensure_chromium(), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
