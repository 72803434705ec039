"""Driven by scripts/app_check.sh: wait until the app serves, load each page in headless Chromium (Debian's, driven by
Playwright), save a screenshot per page, and exit 1 when a page shows a Streamlit error or exception."""
from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

from playwright.sync_api import Page, sync_playwright

PAGES = {"predict": "", "explore": "explore", "design": "design", "data": "data"}  # name -> URL path
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'  # the script run has finished
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
SERVE_TIMEOUT_S = 60


def wait_until_serving(url: str, started: float, server_pid: int) -> float:
    """Seconds from the server's start until /_stcore/health answers; exits 1 when it does not within 60 s."""
    while time.time() - started < SERVE_TIMEOUT_S:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return time.time() - started
        except OSError:
            pass
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            sys.exit("error: the app server stopped before serving")
        time.sleep(0.25)
    sys.exit(f"error: {url} did not serve within {SERVE_TIMEOUT_S} s")


def render(page: Page, shown: str, timeout_s: float) -> float:
    """Wait until the page shows `shown` (or an error) and its script run has finished, then for its charts to draw;
    seconds taken."""
    start = time.time()
    page.wait_for_selector(f"{shown}, {ERRORS}", timeout=timeout_s * 1000, state="attached")
    page.wait_for_selector(IDLE, timeout=timeout_s * 1000, state="attached")
    page.wait_for_timeout(1500)  # vega-lite draws its charts after the elements arrive
    return time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--started", type=float, required=True, help="epoch seconds when the server was started")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--out", default="assets", help="folder for app_<page>.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a page may take (the first loads models)")
    args = parser.parse_args()
    print(f"serving after {wait_until_serving(args.url, args.started, args.server_pid):.1f} s")
    failures = []
    with sync_playwright() as playwright, TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 1250})
        page = browser.new_page()
        for name, path in PAGES.items():
            page.goto(f"{args.url}/{path}")
            seconds = render(page, '[data-testid="stHeading"]', args.timeout)
            search = page.get_by_role("button", name="Search")
            if name == "design" and search.is_enabled():  # one search, so the screenshot shows candidates
                search.click()  # (disabled, with a warning, for a size run without calibration)
                seconds += render(page, '[data-testid="stDataFrame"]', args.timeout)
            errors = page.locator(ERRORS)
            if errors.count():
                failures.append(f"{name}: {errors.first.inner_text()[:500]}")
            target = Path(args.out) / f"app_{name}.png"
            page.screenshot(path=str(target))
            print(f"{name}: rendered in {seconds:.1f} s, {errors.count()} error(s); wrote {target}")
        browser.close()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
