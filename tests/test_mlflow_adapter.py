"""The catalog's MLflow artifacts: kedro-mlflow's version the adapter was written for, and
the artifact entry versioned by the catalog, logged to the run it is pointed at."""

from importlib.metadata import version as installed

import pytest
from kedro.io.core import DatasetError, Version
from packaging.specifiers import SpecifierSet

from directclr.framework.environment import TRACKING_SWITCH
from directclr.framework.mlflow_adapter import KEDRO_MLFLOW_VERSIONS
from directclr.framework.tracking import TrackedArtifactDataset


def test_kedro_mlflow_is_the_version_the_adapter_was_written_for():
    """On an upgrade, read framework/mlflow_adapter.py against the new kedro-mlflow, then
    widen KEDRO_MLFLOW_VERSIONS."""
    assert installed("kedro-mlflow") in SpecifierSet(KEDRO_MLFLOW_VERSIONS)


SAVED_AS = "2024-01-01T00.00.00.000Z"


def _entry(tmp_path):
    """A catalog entry as catalog.yml writes one, given the run's version by the catalog."""
    definition = {"type": "text.TextDataset", "filepath": str(tmp_path / "table.md")}
    return TrackedArtifactDataset(definition, artifact_path="reports",
                                  metadata={"kedro-viz": {"layer": "reporting"}},
                                  version=Version(None, SAVED_AS))  # fmt: skip


def test_an_artifact_is_saved_under_the_catalogs_version_and_logged_to_its_run(tmp_path, tracked):
    experiment = tracked.get_experiment_by_name("directclr").experiment_id
    run_id = tracked.create_run(experiment).info.run_id
    entry = _entry(tmp_path)
    entry.run_id = run_id  # as the tracking hook points it
    entry.save("| a |")
    saved = tmp_path / "table.md" / SAVED_AS / "table.md"
    assert saved.read_text() == "| a |"
    assert [a.path for a in tracked.list_artifacts(run_id, "reports")] == ["reports/table.md"]
    assert entry.metadata == {"kedro-viz": {"layer": "reporting"}}


def test_with_tracking_off_an_artifact_is_the_dataset_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACKING_SWITCH, "off")
    entry = _entry(tmp_path)
    assert type(entry).__name__ == "TextDataset"
    assert not hasattr(entry, "run_id")  # the tracking hook leaves it alone
    entry.save("| a |")
    assert (tmp_path / "table.md" / SAVED_AS / "table.md").exists()
    assert entry.metadata == {"kedro-viz": {"layer": "reporting"}}

    memory = {"type": "kedro.io.MemoryDataset"}
    with pytest.raises(DatasetError, match="MemoryDataset cannot be versioned"):
        TrackedArtifactDataset(memory, version=Version(None, None))
