"""A screenshot of the MLflow UI comparing the model runs of the latest tracked comparison.

It starts the MLflow UI on the project's tracking store (as `kedro mlflow ui` does), opens
MLflow's "compare runs" page for the child runs of the newest ``kedro run`` of the
comparison (one seed's, so that the runs fit side by side) in headless Chromium (Debian's
``chromium`` package, driven by Playwright), shows only the parameters that differ, and
saves the parameters and metrics tables as a PNG. Nothing leaves the machine: the UI
listens on 127.0.0.1 and MLflow's telemetry is off.

    apt-get install chromium && pip install -e ".[docs]"
    kedro run --pipeline=compare                     # tracked into mlflow.db (the default)
    python docs/mlflow_screenshot.py                 # -> docs/figures/mlflow_compare.png
    python docs/mlflow_screenshot.py --comparison d0_sweep --seed 1 --out /tmp/d0.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The columns the runs-table screenshot shows: the headline metrics a reader looks for first.
HEADLINE_COLUMNS = (
    "accuracy/linear_r",
    "accuracy/knn_r",
    "accuracy/raw_pixels",
    "collapse/effective_rank_r",
    "collapse/rankme_r",
    "collapse/collapsed_dims_z",
)
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comparison_runs(store: str, comparison: str, seed: int) -> tuple[str, str, list[str]]:
    """The experiment id, the parent and the child runs with ``seed`` of the newest tracked
    run of ``comparison`` that trained that seed."""
    from mlflow.tracking import MlflowClient

    from directclr.tracking import NAMESPACE_TAG, PARENT_TAG

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("directclr")
    if experiment is None:
        sys.exit(f"no directclr experiment in {store}: run kedro run --pipeline={comparison}")
    parents = [
        run
        for run in client.search_runs(
            [experiment.experiment_id],
            f"tags.pipeline_names LIKE '%{comparison}%'",
            order_by=["attributes.start_time DESC"],
        )  # fmt: skip
        if PARENT_TAG not in run.data.tags
    ]
    for parent in parents:
        children = [
            run
            for run in client.search_runs([experiment.experiment_id],
                                          f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
            if run.data.tags[NAMESPACE_TAG].endswith(f".seed_{seed}")
        ]  # fmt: skip
        if len(children) > 1:
            children.sort(key=lambda run: run.info.start_time)  # the comparison's order
            return experiment.experiment_id, parent.info.run_id, [r.info.run_id for r in children]
    sys.exit(f"no tracked {comparison} with seed {seed} in {store}: run kedro run "
             f"--pipeline={comparison}")  # fmt: skip


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the MLflow UI did not answer at {url}")


def shoot(browser: str, url: str, out: Path, width: int, height: int) -> None:
    """Open ``url``, keep the parameters that differ between runs, fold the charts away and
    save the parameters and metrics tables."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.get_by_text("Show diff only").first.wait_for(timeout=60_000)
        for toggle in page.get_by_role("switch").all():  # "Show diff only", both tables
            if toggle.get_attribute("aria-checked") == "false":
                toggle.click()
        for section in ("Visualizations", "Run details"):  # fold the charts and run ids
            page.get_by_text(section, exact=True).first.click()
        assistant = page.get_by_role("button", name="Close")
        if assistant.count():
            assistant.first.click()  # the side panel, if the UI opens one
        page.wait_for_timeout(1500)
        end = page.get_by_text("Artifacts", exact=True).first.bounding_box()
        bottom = end["y"] - 8 if end else height  # the tables, not the empty previews
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": width, "height": bottom})
        chromium.close()


def close_assistant(page) -> None:
    """Close MLflow's assistant side panel, if the UI opened it, and let the page settle."""
    page.wait_for_timeout(1500)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    page.wait_for_timeout(1000)


def shoot_runs(browser: str, base: str, experiment: str, parent: str, folder: Path) -> None:
    """The experiment as a user first meets it: the landing page, the runs table with the
    headline metric columns shown, and the chart view, limited to one comparison's runs."""
    from playwright.sync_api import sync_playwright

    from directclr.tracking import PARENT_TAG

    # MLflow 3.17's UI starts every browser in its GenAI mode; this parameter (or its "Model
    # training" switch, which the browser then remembers) shows the experiment as runs.
    mode = "workflowType=machine_learning"
    search = urllib.parse.urlencode({"searchFilter": f"tags.`{PARENT_TAG}` = '{parent}'"})
    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"{base}/#/experiments/{experiment}?{mode}")
        page.get_by_text(" seed ", exact=False).first.wait_for(timeout=60_000)
        close_assistant(page)
        page.screenshot(path=str(folder / "mlflow_landing.png"))
        page.goto(f"{base}/#/experiments/{experiment}/runs?{mode}&{search}")
        page.get_by_text(" seed ", exact=False).first.wait_for(timeout=60_000)
        close_assistant(page)
        page.get_by_role("button", name="Columns").first.click()
        page.wait_for_timeout(500)
        for name in HEADLINE_COLUMNS:
            page.get_by_text(name, exact=True).first.click()
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 2300, "height": 900})  # room for the metric columns
        page.wait_for_timeout(1500)
        page.screenshot(path=str(folder / "mlflow_runs_table.png"))
        page.set_viewport_size({"width": 1500, "height": 900})
        page.goto(f"{base}/#/experiments/{experiment}/runs?{mode}&{search}&compareRunsMode=CHART")
        page.get_by_text("accuracy/linear_r").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(folder / "mlflow_charts.png"))
        chromium.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}")
    parser.add_argument("--comparison", default="compare")
    parser.add_argument("--out", default=str(REPO / "docs" / "figures" / "mlflow_compare.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    experiment, parent, runs = comparison_runs(args.store, args.comparison, args.seed)
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health")
        query = urllib.parse.urlencode(
            {"runs": json.dumps(runs), "experiments": json.dumps([experiment])}
        )
        url = f"{base}/#/compare-runs?{query}"
        shoot(browser, url, Path(args.out), args.width, args.height)
        shoot_runs(browser, base, experiment, parent, Path(args.out).parent)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.out}: {len(runs)} runs of {args.comparison} compared")


if __name__ == "__main__":
    main()
