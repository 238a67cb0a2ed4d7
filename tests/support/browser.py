"""A page of anpr's (the compliance report, a data subject's letter) in Debian's headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def page_alone(path: Path, width: int = 1000, height: int = 900) -> Iterator[Any]:
    """`path` loaded in headless Chromium, checked to load with no console error or warning,
    no script error, and no request but for itself (one file: nothing else is fetched)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            messages, errors, requests = [], [], []
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load")
            assert [m for m in messages if m[0] in ("error", "warning")] == [] and errors == []
            assert requests == [path.as_uri()]  # one file: nothing else was fetched
            yield page
        finally:
            browser.close()
