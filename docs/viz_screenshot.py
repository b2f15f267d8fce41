"""A screenshot of kedro-viz showing the default run's stages and one previewed figure.

It starts ``kedro viz run`` on the project (as the README says), opens it in headless
Chromium (Debian's ``chromium`` package, driven by Playwright), clicks the default run's
spectrum figure and saves the page with the figure's preview in the
side panel. Nothing leaves the machine: kedro-viz listens on 127.0.0.1.

    apt-get install chromium && pip install -e ".[docs]"
    kedro run --pipeline=directclr                # something to preview
    python docs/viz_screenshot.py                 # -> docs/figures/kedro_viz.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow_screenshot import free_port  # noqa: E402


def answers(url: str, seconds: float = 180) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(1)
    return False


def shoot(browser: str, url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        figure = page.get_by_text("directclr.spectrum_figure", exact=True).first
        figure.wait_for(timeout=120_000)
        page.wait_for_timeout(2000)
        for label in ("Dismiss", "Close"):  # kedro-viz's banner and its guided tour
            button = page.get_by_text(label, exact=True)
            if button.count():
                button.first.click()
        for _ in range(8):  # step through kedro-viz's guided tour to its end
            step = page.get_by_role("button", name=re.compile("^(Next|Close|Got it|Done|Finish)$"))
            if not step.count():
                break
            step.first.click()
            page.wait_for_timeout(500)
        figure.click()
        page.wait_for_timeout(5000)  # the preview loads
        page.screenshot(path=str(out))
        chromium.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "figures" / "kedro_viz.png"))
    parser.add_argument(
        "--project", default=str(REPO), help="the project folder (kedro-viz shows its path)"
    )
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    port = free_port()
    kedro = Path(sys.executable).with_name("kedro")
    log = tempfile.TemporaryFile()  # noqa: SIM115 - kedro-viz's output, shown if it fails
    server = subprocess.Popen(
        [str(kedro), "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"],
        cwd=args.project, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        if not answers(base):
            log.seek(0)
            sys.exit(f"kedro-viz did not answer at {base}:\n{log.read().decode()[-3000:]}")
        shoot(browser, base, Path(args.out))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"{args.out}: kedro-viz with the spectrum figure previewed")


if __name__ == "__main__":
    main()
