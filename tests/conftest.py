import os
import shutil
from pathlib import Path

from directclr.framework.environment import TRACKING_SWITCH, quiet

# Before MLflow can be imported by anything: no telemetry from the tests or what they start.
quiet()
# Runs are tracked only in the tests that ask for it (the `tracked` fixture), in one store.
os.environ[TRACKING_SWITCH] = "off"
os.environ.pop("MLFLOW_TRACKING_URI", None)
# precision: auto is fp32 in every test (and every process a test starts), so the suite stays
# deterministic whether or not the CPU running it has native bf16.
os.environ["DIRECTCLR_AUTO_PRECISION"] = "fp32"

import pytest  # noqa: E402
import torch  # noqa: E402

from directclr.data import DataConfig, prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """Tests that run Kedro sessions on a copy of the project are ``slow``: deselect them with
    ``pytest -m "not slow"`` for the unit tests alone."""
    for item in items:
        if "project" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits, split as data_prep does by default: (dataset, card)."""
    return prepare(DataConfig())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def project(tmp_path):
    """A copy of the project's configuration in a temporary folder, to run sessions in."""
    shutil.copytree(REPO / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copy(REPO / ".telemetry", tmp_path)
    (tmp_path / "src").mkdir()  # the package itself is installed
    return tmp_path


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory):
    """One SQLite MLflow store, created and migrated once, with the project's experiment
    (its artifacts beside it), shared by every test that tracks runs."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("directclr", artifact_location=str(folder / "artifacts"))
    return uri


@pytest.fixture
def tracked(monkeypatch, tracking_store):
    """Tracking on, into the shared store; returns a client of it."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(TRACKING_SWITCH, "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store)
    return MlflowClient(tracking_store)
