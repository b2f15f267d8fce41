"""Two runs at once in one project folder: each reads back exactly what it wrote.

Kedro names a version folder after the session that wrote it (its start time) and loads the
newest; without the project's pinning (:mod:`directclr.framework.versions`), the run that
started first measured the model of the run that started second whenever that one had
saved it first. Two runs of the same settings and data at once are refused instead
(:meth:`directclr.checkpoints.CheckpointStore.hold`).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from directclr.batches import TensorBatches
from directclr.checkpoints import CheckpointInUseError, CheckpointStore
from directclr.data import DataConfig, prepare
from directclr.training import PretrainingConfig, pretrain, run_key

BATCH = 64
COMMON = (
    f"pretraining.width=4,pretraining.batch_size={BATCH},pretraining.warmup_epochs=0,"
    "pretraining.lidar_samples=0,linear_eval.C_grid=[1.0],linear_eval.max_iter=100,"
    "linear_eval.raw_pixels=false"
)
# A: the run that starts first. It reads the dataset already there (it does not prepare one)
# and trains long. B: started second (its versions are the newer), prepares a smaller
# dataset of its own and trains one short epoch, so it saves its dataset and model while A
# still trains. d0 tells their models apart.
RUN_A = [
    "--pipeline=directclr",
    "--from-nodes=directclr.pretraining.pretrain_model",
    f"--params={COMMON},pretraining.epochs=6,pretraining.seed=0,directclr.pretraining.d0=8",
]
RUN_B = [
    "--pipeline=directclr",
    f"--params={COMMON},data_prep.max_samples={2 * BATCH},pretraining.epochs=1,"
    "pretraining.seed=1,directclr.pretraining.d0=4",
]
EPOCHS = {8: 6, 4: 1}  # d0 -> the run's epochs
TRAIN_IMAGES = {8: 6 * BATCH, 4: 2 * BATCH}  # d0 -> the run's dataset: A's, prepared before it

# The `kedro` command, let go when a file appears: its imports (most of its start) are done
# before, so the test decides which run's session, and so its version, is made first.
LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import directclr.pipeline_registry, directclr.settings, kedro.framework.cli
    while not Path(sys.argv[1]).exists():
        time.sleep(0.02)
    sys.argv = ["kedro", "run", *sys.argv[2:]]
    kedro.framework.cli.main()
    """
)


def _launch(project: Path, go: Path, args: list[str], log: Path) -> subprocess.Popen:
    launcher = project / "launch.py"
    launcher.write_text(LAUNCHER)
    # One torch thread each (two runs share the cores), and log lines as wide as they are.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, str(launcher), str(go), *args], cwd=project,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.05)


def _version_file(project: Path, relative: str, version: str) -> Path:
    return project / "data" / relative / version / Path(relative).name


def _read(project: Path, relative: str, version: str):
    """The artifact at ``relative`` (under data/), version ``version``."""
    path = _version_file(project, relative, version)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    return pd.read_csv(path) if path.suffix == ".csv" else json.loads(path.read_text())


ARTIFACTS = (
    "06_models/directclr/model.pt",
    "07_model_output/directclr/training_history.csv",
    "07_model_output/directclr/embeddings.pt",
    "08_reporting/directclr/spectrum_metrics.json",
    "08_reporting/directclr/linear_eval_metrics.json",
)


def test_two_runs_at_once_each_measure_their_own_model_on_one_dataset(project):
    # The dataset already prepared, as an earlier data_prep run saved it.
    dataset, card = prepare(DataConfig(max_samples=TRAIN_IMAGES[8]))
    earlier = "2020-01-01T00.00.00.000Z"
    path = _version_file(project, "03_primary/dataset.pt", earlier)
    path.parent.mkdir(parents=True)
    torch.save(dataset, path)
    path = _version_file(project, "03_primary/dataset_card.json", earlier)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(card))

    logs = {run: project / f"{run}.log" for run in "AB"}
    runs = {
        run: _launch(project, project / f"go_{run}", args, logs[run])
        for run, args in (("A", RUN_A), ("B", RUN_B))
    }
    try:
        (project / "go_A").touch()
        _wait_for(logs["A"], "Kedro project", runs["A"])  # A's session (its version) is made
        (project / "go_B").touch()
        for run, process in runs.items():
            assert process.wait(timeout=300) == 0, logs[run].read_text()
    finally:
        for process in runs.values():
            process.kill()

    versions = sorted(p.name for p in (project / "data/06_models/directclr/model.pt").iterdir())
    assert len(versions) == 2
    for version in versions:
        model, history, embeddings, spectrum, probe = (
            _read(project, relative, version) for relative in ARTIFACTS
        )
        d0 = model["config"]["d0"]
        # The run's own model, trained and measured on one dataset: its embeddings are this
        # model's z (d0 wide), of as many training images as it trained on, and the metrics
        # describe those embeddings.
        assert len(history) == EPOCHS[d0], version
        assert embeddings["train_z"].shape[1] == d0, version
        steps_per_epoch = history["step"].iloc[-1] // len(history)
        assert steps_per_epoch == len(embeddings["train_r"]) // BATCH, version
        # A measured the dataset there when it started, not B's, saved while A ran.
        assert len(embeddings["train_r"]) == TRAIN_IMAGES[d0], version
        assert spectrum["z_train"]["dimensions"] == d0, version
        assert probe["d0"] == probe["embedding_dim"] == d0, version
    for log in logs.values():  # Kedro's own notice of a run that loaded another's version
        assert [line for line in log.read_text().splitlines() if "did not match" in line] == []


LOCK_HOLDER = textwrap.dedent(
    """
    import sys
    from directclr.checkpoints import CheckpointStore
    store = CheckpointStore(sys.argv[1])
    store.hold(sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_a_second_run_of_the_same_key_is_refused_while_the_first_trains(tmp_path, digits):
    dataset, card = digits
    images, labels = dataset["train_images"][:128], dataset["train_labels"][:128]
    config = PretrainingConfig(width=4, d0=8, epochs=1, batch_size=BATCH, warmup_epochs=0)
    key = run_key(config, TensorBatches(images, labels, BATCH, 0).fingerprint(), 1, "cpu")
    store = CheckpointStore(tmp_path)

    # The first run, in another process, holds its key while it trains.
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path), key],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(CheckpointInUseError) as refused:
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    message = str(refused.value)
    assert f"process {holder.pid}" in message
    assert str(store.lock_path(key)) in message and "pretraining.seed" in message
    assert not store.path(key).exists()  # the refused run wrote nothing

    # A killed holder leaves no claim behind: the run trains, and gives its key back.
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    assert torch.load(store.path(key), weights_only=True)["epoch"] == 1
    other = CheckpointStore(tmp_path)
    other.hold(key)
    other.release(key)
