"""The directclr pipeline end to end through a Kedro session, on a copy of the project."""

import json
import subprocess
import sys
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.conftest import REPO

TINY_TRAINING = {"epochs": 2, "batch_size": 128, "width": 8, "warmup_epochs": 1,
                 "projector_hidden_dim": 32, "projector_dim": 16}  # fmt: skip
TINY = {"directclr": {"pretraining": {**TINY_TRAINING, "d0": 16}},
        "simclr": {"pretraining": TINY_TRAINING}, "linear_eval": {"max_iter": 300}}  # fmt: skip


def run(project: Path, **kwargs) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=TINY) as session:
        session.run(**kwargs)


def versions(project: Path, relative: str) -> list[Path]:
    return sorted((project / "data" / relative).iterdir())


def load_json(project: Path, relative: str, index: int = -1) -> dict:
    folder = versions(project, relative)[index]
    return json.loads((folder / Path(relative).name).read_text())


def test_directclr_pipeline_writes_every_artifact_with_sane_metrics(project):
    run(project, pipeline_names=["directclr"])
    for relative in [
        "03_primary/dataset.pt",
        "03_primary/dataset_card.json",
        "06_models/directclr/model.pt",
        "07_model_output/directclr/training_history.csv",
        "07_model_output/directclr/spectrum_history.csv",
        "08_reporting/directclr/training_history.png",
        "07_model_output/directclr/embeddings.pt",
        "08_reporting/directclr/spectrum.csv",
        "08_reporting/directclr/spectrum_metrics.json",
        "08_reporting/directclr/spectrum.png",
        "08_reporting/directclr/linear_eval_metrics.json",
    ]:
        (version,) = versions(project, relative)
        assert (version / Path(relative).name).stat().st_size > 0, relative

    metrics = load_json(project, "08_reporting/directclr/linear_eval_metrics.json")
    assert 0.5 < metrics["linear_probe_accuracy_r"] <= 1.0
    assert 0.9 < metrics["linear_probe_accuracy_raw_pixels"] <= 1.0
    assert metrics["representation_dim"] == 64 and metrics["embedding_dim"] == 16
    assert 1.0 < metrics["effective_rank_r"] <= 64
    assert 1.0 < metrics["effective_rank_z"] <= 16

    spectrum = load_json(project, "08_reporting/directclr/spectrum_metrics.json")
    assert spectrum["split"] == "train"  # spectrum.split: one split for every rank and count
    assert set(spectrum) >= {"r_train", "z_train", "convention"} and "r_test" not in spectrum
    assert 0 <= spectrum["r_train"]["collapsed_dimensions"] < 64
    assert spectrum["r_train"]["structural_zeros"] == 0  # 1437 vectors fill 64 dimensions

    (checkpoint,) = (project / "data/06_models/directclr/checkpoints").glob("directclr-*.pt")
    assert checkpoint.stat().st_size > 0

    card = load_json(project, "03_primary/dataset_card.json")
    assert card["counts"] == {"train": 1437, "test": 360}

    # A second run with the same seed gives identical numbers, in a new version.
    run(project, pipeline_names=["directclr"])
    assert len(versions(project, "08_reporting/directclr/linear_eval_metrics.json")) == 2
    again = load_json(project, "08_reporting/directclr/linear_eval_metrics.json")
    assert again == metrics


def test_one_stage_reruns_from_persisted_inputs_and_versions_can_be_pinned(project):
    run(project, pipeline_names=["directclr"])
    run(project, pipeline_names=["directclr"], tags=["spectrum"])
    assert len(versions(project, "06_models/directclr/model.pt")) == 1
    assert len(versions(project, "07_model_output/directclr/embeddings.pt")) == 1
    assert len(versions(project, "08_reporting/directclr/spectrum_metrics.json")) == 2
    assert len(versions(project, "08_reporting/directclr/linear_eval_metrics.json")) == 1

    first_model = versions(project, "06_models/directclr/model.pt")[0].name
    run(project, pipeline_names=["directclr"], tags=["pretraining"])
    run(
        project,
        pipeline_names=["directclr"],
        from_nodes=["directclr.embeddings.export_embeddings"],
        load_versions={"directclr.model": first_model},
    )
    # The pinned (first) model gives exactly the first run's numbers.
    assert load_json(project, "08_reporting/directclr/linear_eval_metrics.json", 0) == load_json(
        project, "08_reporting/directclr/linear_eval_metrics.json", -1
    )
    assert len(versions(project, "06_models/directclr/model.pt")) == 2


def test_simclr_and_directclr_keep_their_artifacts_apart(project):
    run(project, pipeline_names=["simclr"])
    run(project, pipeline_names=["directclr"], tags=["pretraining"])
    assert versions(project, "06_models/simclr/model.pt")
    assert versions(project, "06_models/directclr/model.pt")
    metrics = load_json(project, "08_reporting/simclr/linear_eval_metrics.json")
    assert metrics["embedding_dim"] == 16  # the MLP projector's output


def test_registry_lists_the_method_and_stage_pipelines():
    from directclr.pipeline_registry import register_pipelines

    bootstrap_project(REPO)
    pipelines = register_pipelines()
    assert set(pipelines) >= {"__default__", "directclr", "simclr", "data_prep", "pretraining",
                              "embeddings", "spectrum", "linear_eval"}  # fmt: skip
    assert pipelines["__default__"].nodes == pipelines["directclr"].nodes
    tags = {tag for node in pipelines["directclr"].nodes for tag in node.tags}
    assert tags == {"data_prep", "pretraining", "embeddings", "spectrum", "linear_eval"}
    for stage in ("pretraining", "embeddings", "spectrum", "linear_eval"):
        assert [node.namespace for node in pipelines[stage].nodes] == [f"directclr.{stage}"]


def test_cli_overrides_parameters_and_rejects_bad_ones_before_any_work(project):
    kedro = [sys.executable, "-m", "kedro"]
    bad = subprocess.run(
        [*kedro, "run", "--pipeline=directclr", "--params=directclr.pretraining.temperature=0"],
        cwd=project, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "temperature" in bad.stdout + bad.stderr
    assert not (project / "data").exists() or not any((project / "data").rglob("*.pt"))

    params = ",".join(f"directclr.pretraining.{k}={v}" for k, v in TINY_TRAINING.items())
    ok = subprocess.run(
        [*kedro, "run", "--pipeline=directclr", "--tags=data_prep,pretraining",
         f"--params={params},directclr.pretraining.epochs=1"],
        cwd=project, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    history = versions(project, "07_model_output/directclr/training_history.csv")[0]
    assert len((history / "training_history.csv").read_text().splitlines()) == 1 + 1
