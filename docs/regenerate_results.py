"""Regenerate the README's results: run the pipelines with their default parameters, then copy
the latest figures to docs/figures/ and the latest tables to docs/results/.

    python docs/regenerate_results.py                     # everything (about 50 min on 2 cores)
    python docs/regenerate_results.py compare toy_strong_augmentation   # some of it
    python docs/regenerate_results.py --copy-only         # copy what the last runs wrote

Runs go through the project's own Kedro sessions from the project folder, so they write the
same versioned artifacts as ``kedro run``; the toys also run in the ``paper`` environment.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTING = ROOT / "data" / "08_reporting"
# (pipeline, environment, the figures and tables it gives, as (folder, file) under 08_reporting)
RUNS = {
    "directclr": (None, [("directclr", "spectrum.png"), ("directclr", "training_history.png"),
                         ("directclr", "spectrum_history.png"),
                         ("directclr", "linear_eval_metrics.json"),
                         ("directclr", "spectrum_metrics.json")]),
    "compare": (None, [("compare", "comparison_spectra.png"), ("compare", "comparison_table.md"),
                       ("compare", "per_seed_table.md"), ("compare", "collapse_vs_d0.png")]),
    "projector_ablation": (None, [("projector_ablation", "comparison_spectra.png"),
                                  ("projector_ablation", "comparison_table.md"),
                                  ("projector_ablation", "per_seed_table.md")]),
    "d0_sweep": (None, [("d0_sweep", "collapse_vs_d0.png"), ("d0_sweep", "comparison_table.md"),
                        ("d0_sweep", "comparison_spectra.png")]),
    "sweep": (None, [("sweep", "comparison_table.md"), ("sweep", "per_seed_table.md")]),
    # selection ranks the sweep's runs: run it after sweep.
    "selection": (None, [("selection", "metric_table.md"), ("selection", "scatter/rankme_r.png"),
                         ("selection", "scatter/lidar_z.png")]),
    "toy_strong_augmentation": (None, [
        ("toy_strong_augmentation", "spectrum_history.png"),
        ("toy_strong_augmentation", "final_spectrum.png"),
        ("toy_strong_augmentation", "collapse_prediction.png"),
        ("toy_strong_augmentation", "summary.csv")]),
    "toy_implicit_regularization": (None, [
        ("toy_implicit_regularization", "final_spectrum.png"),
        ("toy_implicit_regularization", "alignment.png"),
        ("toy_implicit_regularization", "summary.csv")]),
}  # fmt: skip
PAPER_TOYS = ("toy_strong_augmentation", "toy_implicit_regularization")


def run(pipeline: str, env: str | None) -> float:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    start = time.perf_counter()
    with KedroSession.create(project_path=ROOT, env=env) as session:
        session.run(pipeline_names=[pipeline])
    return time.perf_counter() - start


def latest(folder: str, file: str) -> Path:
    """The latest version of ``file`` (``scatter/x.png``: x.png in the latest ``scatter``)."""
    top, _, inner = file.partition("/")
    versions = sorted((REPORTING / folder / top).iterdir())
    return versions[-1] / top / inner if inner else versions[-1] / file


def copy(pipeline: str, env: str | None) -> None:
    figures, tables = ROOT / "docs" / "figures", ROOT / "docs" / "results"
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    suffix = f"_{env}" if env else ""
    for folder, file in RUNS[pipeline][1]:
        stem, ext = file.replace("/", "_").rsplit(".", 1)
        target = (figures if ext == "png" else tables) / f"{folder}_{stem}{suffix}.{ext}"
        shutil.copyfile(latest(folder, file), target)
        print(f"  {target.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", default=list(RUNS))
    parser.add_argument("--copy-only", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.pipelines) - set(RUNS))
    if unknown:
        sys.exit(f"unknown pipeline(s) {unknown}; choose from {sorted(RUNS)}")
    for pipeline in args.pipelines:
        for env in (None, "paper") if pipeline in PAPER_TOYS else (None,):
            if not args.copy_only:
                seconds = run(pipeline, env)
                print(f"{pipeline} ({env or 'base'}): {seconds:.0f} s")
            copy(pipeline, env)


if __name__ == "__main__":
    main()
