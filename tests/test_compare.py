"""The comparison pipelines, on tiny parameters, through a Kedro session."""

import json

import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from directclr.comparison import PAPER_COLUMN
from directclr.pipeline_registry import configured_comparisons, register_pipelines
from tests.conftest import REPO
from tests.test_run import versions

TINY = {
    "data_prep": {"max_samples": 300},
    "pretraining": {"epochs": 1, "batch_size": 64, "width": 4, "warmup_epochs": 0,
                    "projector_hidden_dim": 16, "projector_dim": 16},
    "compare": {"directclr": {"pretraining": {"d0": 8}}},
    "linear_eval": {"C_grid": [1.0], "max_iter": 200, "raw_pixels": False},
}  # fmt: skip


def _run(project, **kwargs):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=TINY) as session:
        session.run(**kwargs)


def _table(project, index=-1) -> pd.DataFrame:
    folder = versions(project, "08_reporting/compare/comparison_table.csv")[index]
    return pd.read_csv(folder / "comparison_table.csv")


def test_comparisons_are_read_from_the_parameters():
    runs = configured_comparisons(REPO / "conf")
    assert runs["compare"] == ["simclr", "simclr_linear", "no_projector", "directclr"]
    assert runs["projector_ablation"] == ["no_projector", "orthogonal", "simclr_linear",
                                          "diagonal", "fixed_low_rank", "directclr"]  # fmt: skip
    assert len(runs["d0_sweep"]) >= 3
    bootstrap_project(REPO)
    pipelines = register_pipelines()
    namespaces = {n.namespace.split(".")[1] for n in pipelines["compare"].nodes
                  if n.namespace.startswith("compare.")}  # fmt: skip
    assert namespaces == {"simclr", "simclr_linear", "no_projector", "directclr", "report"}


def test_compare_writes_one_complete_row_per_run_and_one_run_can_be_redone(project):
    _run(project, pipeline_names=["compare"])
    table = _table(project)
    assert table["run"].tolist() == ["simclr", "simclr_linear", "no_projector", "directclr"]
    numeric = [
        "linear_probe_top1_r", "linear_probe_top1_z", "knn_top1_r", "effective_rank_r",
        "effective_rank_z", "collapsed_dims_r", "collapsed_dims_z", "training_seconds",
    ]  # fmt: skip
    assert table[numeric].notna().all().all()
    assert table["linear_probe_top1_r"].between(0, 1).all()
    assert table.set_index("run").loc["directclr", "dims_z"] == 8
    assert table.set_index("run").loc["no_projector", "dims_z"] == 32
    assert table[PAPER_COLUMN].tolist() == [66.5, 61.1, 51.5, 62.7]
    markdown = versions(project, "08_reporting/compare/comparison_table.md")[0]
    assert (markdown / "comparison_table.md").read_text().count("\n") == 2 + 4
    assert versions(project, "08_reporting/compare/comparison_spectra.png")
    assert versions(project, "08_reporting/compare/collapse_vs_d0.png")

    # Redo one run with another seed: only its row changes.
    bootstrap_project(project)
    params = {**TINY, "compare": {"directclr": {"pretraining": {"d0": 8}},
                                  "simclr": {"pretraining": {"seed": 7}}}}  # fmt: skip
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["compare"], namespaces=["compare.simclr", "compare.report"])
    again = _table(project)
    assert len(versions(project, "06_models/compare.simclr/model.pt")) == 2
    assert len(versions(project, "06_models/compare.directclr/model.pt")) == 1
    pd.testing.assert_frame_equal(again.drop(index=0), table.drop(index=0), check_exact=True)
    assert again.loc[0, "linear_probe_top1_r"] != table.loc[0, "linear_probe_top1_r"] or (
        again.loc[0, "effective_rank_r"] != table.loc[0, "effective_rank_r"]
    )
    metrics = json.loads(
        next(
            (project / "data/08_reporting/compare.simclr/linear_eval_metrics.json").glob(
                "*/linear_eval_metrics.json"
            )
        ).read_text()  # fmt: skip
    )
    assert metrics["method"] == "simclr"
