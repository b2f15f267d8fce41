"""What MLflow tracking costs the default run: `kedro run --pipeline=directclr` with tracking
on (a warm SQLite store: the experiment exists) against the same command with
DIRECTCLR_TRACKING=off, each in its own copy of the project so that both train from scratch.

Timing: the two alternate (off, on, off, on, ...) ``--repeats`` times in one invocation; the
headline is the median over rounds of each round's tracked/untracked ratio, beside each one's
median wall time (the whole command: start-up, every node, the
store's writes), so a machine shared with other work slows both alike. The first-time
creation of a store (its tables made and migrated) is timed apart, once, before the
alternation: a user pays it on the first tracked run only.

The last line is ``ratio=<tracked / untracked median time>``; target: the tracked run takes
at most 10% (or 2 s) longer.

    python benchmarks/tracking.py [--repeats 3] [--params pretraining.epochs=2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).with_name("kedro")


def project_copy(into: Path) -> Path:
    """The project's configuration in a folder of its own (the package is installed)."""
    shutil.copytree(REPO / "conf", into / "conf", ignore=shutil.ignore_patterns("local"))
    (into / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO / name, into)
    (into / "src").mkdir()
    return into


def timed_run(project: Path, tracking: bool, store: str, params: list[str]) -> float:
    """Seconds of one `kedro run --pipeline=directclr` from scratch in ``project``."""
    shutil.rmtree(project / "data", ignore_errors=True)
    env = {**os.environ, "DIRECTCLR_TRACKING": "on" if tracking else "off",
           "MLFLOW_TRACKING_URI": store}  # fmt: skip
    command = [str(KEDRO), "run", "--pipeline=directclr", *(f"--params={p}" for p in params)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"kedro run failed (tracking {tracking}):\n{done.stdout[-3000:]}{done.stderr}")
    return seconds


def store_creation(folder: Path) -> float:
    """Seconds to make a new SQLite store with the project's experiment (in a fresh process,
    as a first tracked run does)."""
    code = (
        "import time; t = time.perf_counter(); from mlflow.tracking import MlflowClient; "
        f"MlflowClient('sqlite:///{folder}/new.db').create_experiment('directclr', "
        f"artifact_location='{folder}/new-artifacts'); print(time.perf_counter() - t)"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", action="append", default=[],
                        help="to kedro run as --params, e.g. pretraining.epochs=2")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        created = store_creation(root)
        print(f"first-time store creation (tables made and migrated): {created:.1f} s")
        store = f"sqlite:///{root}/mlflow.db"
        warm = project_copy(root / "warm-up")
        timed_run(warm, True, store, args.params)  # makes the store and the experiment
        off, on = project_copy(root / "off"), project_copy(root / "on")
        times: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for tracking, project in ((False, off), (True, on)):
                times[tracking].append(timed_run(project, tracking, store, args.params))
            print(f"repeat {repeat + 1}: off {times[False][-1]:.1f} s, on {times[True][-1]:.1f} s")
        untracked, tracked = statistics.median(times[False]), statistics.median(times[True])
        ratios = [on / off for off, on in zip(times[False], times[True], strict=True)]
        print(f"median of {args.repeats}: untracked {untracked:.1f} s, tracked {tracked:.1f} s "
              f"({tracked - untracked:+.1f} s); per-round ratios "
              f"{', '.join(f'{r:.3f}' for r in ratios)}")  # fmt: skip
        print(f"ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
