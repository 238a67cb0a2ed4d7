"""Make docs/compliance-report.png: the compliance report of the sample under configs/mixed-camera.yaml.

In a temporary folder, with the real `anpr` command: the sample is read (one camera, an
allowed parking check and a denied police export); two queries are asked (both refused: the
config names no designated agent, and the police export is denied); a plate is marked paid
(its reads deleted) and a purge is run; then the report is made and shown in Debian's
headless Chromium (no browser download), whose full-page screenshot is written.

    python scripts/report_screenshot.py [--out docs/compliance-report.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "mixed-camera.yaml"
SAMPLE = REPO / "samples" / "sample.mp4"
CHROMIUM = "/usr/bin/chromium"


def anpr(folder: Path, *args: str, expect: int = 0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "anpr", *args], cwd=folder, capture_output=True, text=True, timeout=600
    )
    if result.returncode != expect:
        raise SystemExit(f"anpr {' '.join(args)}: exit {result.returncode}, expected {expect}\n{result.stderr}")
    return result.stdout


def make_report(folder: Path) -> Path:
    db = str(folder / "anpr.sqlite")
    common = ("--config", str(CONFIG), "--db", db)
    reads = [json.loads(line) for line in anpr(folder, "run", str(SAMPLE), *common, "--jsonl").splitlines()]
    plates = [plate for plate, _ in Counter(r["plate"] for r in reads).most_common()]
    for purpose in ("parking_fps", "law_enforcement_request"):
        anpr(folder, "db", "search", plates[0], "--purpose", purpose, *common, expect=3)
    anpr(folder, "db", "mark-paid", plates[1], *common)
    anpr(folder, "db", "purge", *common)
    report = folder / "report.html"
    anpr(folder, "report", *common, "--html", str(report), "--md", str(folder / "report.md"))
    return report


def screenshot(report: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(report.as_uri())
            if problems:
                raise SystemExit(f"the browser reported: {problems}")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "compliance-report.png")
    parser.add_argument("--keep", type=Path, help="Make the database and the report in this folder, and keep them.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anpr-report-") as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        report = make_report(folder.resolve())
        screenshot(report, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
