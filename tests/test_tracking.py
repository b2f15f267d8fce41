"""Runs tracked in MLflow: read back with MlflowClient from the store the runs wrote."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.entities import RunStatus

from directclr.framework.environment import TRACKING_SWITCH, tracking_enabled
from directclr.framework.tracking import default_store, parent_run_name, recorded_sections
from directclr.pipeline_registry import is_node, model_namespace
from directclr.tracking import (
    CHECKPOINT_TAG,
    NAMESPACE_TAG,
    PARENT_TAG,
    PREVIOUS_PARENTS_TAG,
    RunRecorder,
    final_metrics,
    flatten,
    metric_name,
    run_name,
)
from tests.conftest import REPO
from tests.test_run import load_json, run, versions

# What MLflow reads as "this is a test or CI, stay quiet": removed, so the check below sees
# only what the project itself does.
CI_MARKERS = ("CI", "GITHUB_ACTIONS", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY",
              "DO_NOT_TRACK", "KEDRO_DISABLE_TELEMETRY", "BUILD_ID", "BUILD_NUMBER",
              "TF_BUILD", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL")  # fmt: skip

PROBE = """
import sys
from kedro.framework.cli import cli
sys.argv = ["kedro", "registry", "list"]
try:
    cli.main()
except SystemExit:
    pass
import os
from mlflow.telemetry import get_telemetry_client
print("MLFLOW_IMPORTED_BY_PLUGINS", "kedro_mlflow" in sys.modules)
print("TELEMETRY_CLIENT", get_telemetry_client())
print("SWITCH", os.environ.get("MLFLOW_DISABLE_TELEMETRY"))
"""


def test_the_kedro_command_switches_mlflow_telemetry_off_before_plugins_load(project):
    """`kedro ...` imports kedro-mlflow (hence MLflow, which decides on telemetry at import)
    before settings.py; the project's kedro.init entry point runs before that."""
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "MLFLOW_IMPORTED_BY_PLUGINS True" in done.stdout, done.stdout + done.stderr
    assert "TELEMETRY_CLIENT None" in done.stdout, done.stdout + done.stderr
    assert "SWITCH true" in done.stdout


def test_tracking_switch_and_default_store(monkeypatch, tmp_path):
    monkeypatch.setenv(TRACKING_SWITCH, "off")
    assert not tracking_enabled()
    monkeypatch.setenv(TRACKING_SWITCH, "on")
    assert tracking_enabled()
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 tracks
    assert not tracking_enabled()
    monkeypatch.setenv(TRACKING_SWITCH, "maybe")
    with pytest.raises(ValueError, match="set it to on or off"):
        tracking_enabled()
    assert default_store(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_names_and_flattening():
    assert model_namespace("compare.simclr.seed_0.spectrum.compute_spectrum") == (
        "compare.simclr.seed_0"
    )
    assert model_namespace("directclr.pretraining.pretrain_model") == "directclr"
    assert model_namespace("data_prep.prepare_dataset") is None
    assert model_namespace("compare.report.compare_runs") is None
    assert is_node("compare.simclr.seed_0.pretraining.pretrain_model", "pretrain_model")
    assert is_node("selection.gather_runs", "selection.gather_runs")
    assert not is_node("directclr.pretraining.pretrain_model_again", "pretrain_model")
    assert metric_name("spectrum.r[:d0]_train.nesum") == "spectrum.r_head_train.nesum"
    assert metric_name("r[d0:] top-1 (x)") == "r_tail top-1 _x_"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": [1, 2], "d": "x"}


def test_runs_are_named_for_what_they_are():
    assert run_name("compare.simclr_linear.seed_1") == "simclr_linear seed 1"
    assert run_name("d0_sweep.directclr_d0_32.seed_0") == "directclr_d0_32 seed 0"
    assert run_name("directclr") == "directclr"

    class Catalog:
        def exists(self, name):
            return name == "params:compare"

        def load(self, name):
            return {"seeds": [0, 1, 2], "simclr": {}}

    assert parent_run_name({"pipeline_names": ["compare"]}, Catalog()) == "compare seeds 0, 1, 2"
    assert parent_run_name({"pipeline_names": ["directclr"]}, Catalog()) == "directclr"
    assert parent_run_name({"pipeline_names": None}, Catalog()) == "__default__"


def test_final_numbers_are_metrics_and_how_they_were_measured_are_params():
    row = {"run": "simclr", "seed": 0, "method": "simclr", "d0": None, "dims_r": 512,
           "linear_probe_top1_r": 0.9, "rankme_r": 70.0, "spectrum_split": "train"}  # fmt: skip
    spectrum = {"split": "train", "cliff_decades": 1.0, "lidar_augmentation": {"crop": 0.5},
                "r_train": {"effective_rank": 100.0, "dimensions": 512, "top_k": 10,
                            "variance_share_top_k": 0.7, "power_law_ranks": [1, 512]}}  # fmt: skip
    metrics, params = final_metrics(row, spectrum)
    assert metrics == {"accuracy/linear_r": 0.9, "collapse/rankme_r": 70.0,
                       "linear_probe_top1_r": 0.9, "rankme_r": 70.0,
                       "spectrum.r_train.effective_rank": 100.0,
                       "spectrum.r_train.variance_share_top_k": 0.7}  # fmt: skip
    assert sorted(metrics)[:2] == ["accuracy/linear_r", "collapse/rankme_r"]  # sort first
    assert params == {"run": "simclr", "seed": 0, "method": "simclr", "dims_r": 512,
                      "spectrum_split": "train", "spectrum.r_train.dimensions": 512,
                      "spectrum.r_train.top_k": 10, "spectrum.r_train.power_law_ranks": [1, 512],
                      "spectrum.split": "train", "spectrum.cliff_decades": 1.0,
                      "spectrum.lidar_augmentation.crop": 0.5}  # fmt: skip


def test_a_model_run_records_the_sections_its_stages_read():
    shared = ["data_prep", "embeddings", "spectrum", "linear_eval"]
    assert recorded_sections("compare.simclr.seed_0") == shared
    assert recorded_sections("analyze") == [*shared, "analyze"]  # the imported encoder's


def test_every_node_is_found_by_the_name_its_module_exports():
    """The hooks find a node by the name its pipeline module exports, wherever the registry
    put it (``is_node``): every node has one, and no two modules export the same."""
    import pkgutil
    from importlib import import_module

    from directclr import pipeline_registry as registry
    from directclr import pipelines as stages

    exported = []
    for stage in pkgutil.iter_modules(stages.__path__):
        if stage.ispkg:
            module = import_module(f"{stages.__name__}.{stage.name}.pipeline")
            exported += [value for name, value in vars(module).items() if name.endswith("_NODE")]
    short = [name.rpartition(".")[2] for name in exported]
    assert len(short) == len(set(short))
    pipelines = [
        registry.comparison_pipeline("compare", ["random_init", "simclr"], [0, 1]),
        registry.data_prep_pipeline() + registry.run_pipeline("analyze", registry.ANALYZE_STAGES),
        stages.selection.create_pipeline(["compare"]),
        stages.toy_strong_augmentation.create_pipeline(),
        stages.toy_implicit_regularization.create_pipeline(),
    ]
    for node in (node for pipe in pipelines for node in pipe.nodes):
        assert len([name for name in exported if is_node(node.name, name)]) == 1, node.name


def test_resumed_training_continues_its_unfinished_run(tracked):
    experiment = tracked.get_experiment_by_name("directclr").experiment_id
    uri = tracked.tracking_uri
    first_parent = tracked.create_run(experiment).info.run_id
    second_parent = tracked.create_run(experiment).info.run_id
    key = "resume-test-key"
    rows = [{"epoch": 1, "step": 10, "loss": 2.0}, {"epoch": 2, "step": 20, "loss": 1.5}]

    first = RunRecorder(uri, experiment, first_parent, "ns", params={"pretraining.lr": 0.1})
    run_id = first.start(key, [])
    first.record(rows[0])
    tracked.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))  # the run died

    again = RunRecorder(uri, experiment, second_parent, "ns", params={"pretraining.lr": 0.1})
    assert again.start(key, rows[:1]) == run_id  # resumed from the checkpoint: same run
    again.record(rows[1])
    continued = tracked.get_run(run_id)
    assert continued.info.status == "RUNNING"
    assert continued.data.tags[PARENT_TAG] == second_parent
    assert continued.data.tags[PREVIOUS_PARENTS_TAG] == first_parent
    losses = tracked.get_metric_history(run_id, "history/loss")
    assert [(m.step, m.value) for m in losses] == [(1, 2.0), (2, 1.5)]

    # A finished run is never reopened: training that resumes from a completed checkpoint
    # gets a new run holding the whole history.
    tracked.set_terminated(run_id, "FINISHED")
    fresh = RunRecorder(uri, experiment, second_parent, "ns").start(key, rows)
    assert fresh != run_id
    assert len(tracked.get_metric_history(fresh, "history/loss")) == 2
    assert tracked.get_run(fresh).data.tags[CHECKPOINT_TAG] == key


@pytest.mark.slow
def test_a_run_is_a_parent_with_one_child_per_model(project, tracked):
    run(project, pipeline_names=["directclr"])
    experiment = tracked.get_experiment_by_name("directclr").experiment_id
    card = load_json(project, "03_primary/dataset_card.json")
    version = versions(project, "03_primary/dataset_card.json")[-1].name
    parents = tracked.search_runs(
        [experiment], f"tags.`directclr.catalog_version` = '{version}' and tags.pipeline_names"
        " LIKE '%directclr%'",
    )  # fmt: skip
    parent = next(r for r in parents if PARENT_TAG not in r.data.tags)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "directclr"
    kind = tracked.get_experiment(experiment).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # opens on its runs, not as a GenAI app
    assert parent.data.tags["directclr.dataset_content_hash"] == card["content_hash"]
    children = tracked.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert [c.data.tags[NAMESPACE_TAG] for c in children] == ["directclr"]
    child = children[0]
    assert child.info.status == "FINISHED"

    # The merged settings as flattened params (the run's d0 over the shared recipe).
    assert child.data.params["pretraining.d0"] == "16"
    assert child.data.params["pretraining.method"] == "directclr"
    assert child.data.params["pretraining.augmentation.view1.crop_scale"].startswith("[")
    assert "spectrum.split" in child.data.params

    # The training history as metric histories: one point per recorded row.
    history = pd.read_csv(versions(project, "07_model_output/directclr/training_history.csv")[-1]
                          / "training_history.csv")  # fmt: skip
    losses = tracked.get_metric_history(child.info.run_id, "history/loss")
    assert [m.step for m in losses] == history["epoch"].tolist()
    assert [m.value for m in losses] == pytest.approx(history["loss"].tolist())
    ranks = tracked.get_metric_history(child.info.run_id, "history/effective_rank_r")
    assert len(ranks) == history["effective_rank_r"].notna().sum()

    # Final metrics under the comparison tables' names, and the figures as artifacts.
    evaluation = load_json(project, "08_reporting/directclr/linear_eval_metrics.json")
    spectrum = load_json(project, "08_reporting/directclr/spectrum_metrics.json")
    metrics = child.data.metrics
    assert metrics["linear_probe_top1_r"] == pytest.approx(evaluation["linear_probe_accuracy_r"])
    assert metrics["effective_rank_r"] == pytest.approx(spectrum["r_train"]["effective_rank"])
    assert metrics["spectrum.r_head_train.nesum"] == pytest.approx(
        spectrum["r[:d0]_train"]["nesum"]
    )
    assert metrics["accuracy/linear_r"] == metrics["linear_probe_top1_r"]
    assert sorted(metrics)[0].startswith("accuracy/")  # the headline sorts first
    settings = {"spectrum.cliff_decades", "spectrum.top_k", "spectrum.lidar_seed", "d0",
                "spectrum.r_train.dimensions", "spectrum.r_train.top_k"}  # fmt: skip
    assert not settings & set(metrics)  # settings are parameters
    assert child.data.params["spectrum.r_train.dimensions"] == str(
        spectrum["r_train"]["dimensions"]
    )
    assert child.info.run_name == "directclr"
    artifacts = {a.path for a in tracked.list_artifacts(child.info.run_id)}
    assert {"spectrum.png", "training_history.png", "confusion_matrix.png"} <= artifacts
    assert child.data.tags["directclr.dataset_content_hash"] == card["content_hash"]


@pytest.mark.slow
def test_tracking_off_writes_no_store_and_keeps_every_artifact(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv(TRACKING_SWITCH, "off")
    run(project, pipeline_names=["directclr"], node_names=None)
    made = [p.name for p in project.iterdir() if p.name in ("mlflow.db", "mlruns", "mlartifacts")]
    assert made == []
    figure = versions(project, "08_reporting/directclr/spectrum.png")[-1] / "spectrum.png"
    assert figure.stat().st_size > 0
    assert json.loads((versions(project, "08_reporting/directclr/linear_eval_metrics.json")[-1]
                       / "linear_eval_metrics.json").read_text())  # fmt: skip


def test_mlflow_config_is_the_projects():
    text = (REPO / "conf" / "base" / "mlflow.yml").read_text()
    assert "mlflow_tracking_uri: null" in text
    assert "flatten: true" in text
