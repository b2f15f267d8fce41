import shutil
from pathlib import Path

import pytest
import torch

from directclr.data import DataConfig, prepare

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
