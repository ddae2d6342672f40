"""report.html in a real browser: headless Chromium (Debian package `chromium`) loads the page of a tiny run,
runs its script without console messages, decodes every image, and takes a screenshot (kept in tmp_path).

Skipped when chromium is not installed, unless DBSPEC_REQUIRE_BROWSER=1 (CI sets it; then it fails)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.runtime.reportrun import add_evaluation, finished_run


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("DBSPEC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and DBSPEC_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(f"{reason}; set DBSPEC_REQUIRE_BROWSER=1 to make this a failure")


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",  # root in containers
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",  # let the load event and the page's script run
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_the_report_renders_in_chromium(tmp_path):
    chromium = _chromium()
    out = finished_run(tmp_path)
    add_evaluation(out)
    from dbspec.report import write_report

    page = write_report(out)
    url = page.resolve().as_uri()

    dom = _browser(chromium, tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "the page logged to the console:\n" + "\n".join(console)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attributes.get("data-ready") == "1", attributes  # the load event fired and the script ran
    images = page.read_text().count("<img ")
    assert int(attributes["data-images"]) == images > 0
    assert attributes["data-images-broken"] == "0"  # every <img> complete with a natural width
    assert dom.stdout.count("<svg") == page.read_text().count("<svg") > 0

    shot = tmp_path / "report.png"
    taken = _browser(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2600", url)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1400, 2600)
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10  # a page with content, not a blank window
