"""Which label-free metric predicts accuracy: rank correlations with known answers, and the
selection pipeline on per-seed tables written into a copy of the project."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from scipy.stats import spearmanr

from directclr.comparison import CONTROL, comparison_row
from directclr.pipeline_registry import configured_comparisons, selection_comparisons
from directclr.pipelines.selection.nodes import make_gather_runs, rank_runs
from directclr.selection import (
    ALL,
    CONSTANT_METRIC,
    OK,
    TOO_FEW,
    SelectionConfig,
    bootstrap_spearman,
    catalog_runs,
    metric_columns,
    rank_metrics,
    rho_text,
    spearman,
    tracked_runs,
)
from tests.conftest import REPO
from tests.test_run import versions

ACCURACY = np.array([0.61, 0.55, 0.72, 0.68, 0.80, 0.59])


def test_a_metric_rising_with_accuracy_has_rho_one_and_interval_one():
    row = spearman(np.exp(3 * ACCURACY) + 2, ACCURACY)
    assert row["status"] == OK and row["runs"] == 6
    assert row["rho"] == pytest.approx(1.0)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert row["level"] == 0.95 and row["resamples"] <= 2000


def test_a_metric_falling_with_accuracy_has_rho_minus_one():
    row = spearman(-(ACCURACY**2), ACCURACY)
    assert row["rho"] == pytest.approx(-1.0)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(-1.0), pytest.approx(-1.0))


def test_four_runs_are_too_few_and_give_no_number():
    row = spearman(ACCURACY[:4], ACCURACY[:4])
    assert row["status"] == TOO_FEW and row["runs"] == 4 and math.isnan(row["rho"])
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert rho_text(row) == "too few (n = 4)"


def test_missing_values_are_dropped_and_not_counted():
    metric = [1.0, None, 3.0, float("nan"), 5.0, 6.0, 7.0]
    row = spearman(metric, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, None])
    assert row["runs"] == 4 and row["status"] == TOO_FEW


def test_a_constant_metric_gives_no_rho_and_says_why():
    row = spearman([3.0] * 6, ACCURACY)
    assert row["status"] == CONSTANT_METRIC and math.isnan(row["rho"])
    assert "3 for all 6 runs" in row["note"] and "ranks nothing" in row["note"]
    assert rho_text(row) == "constant metric (n = 6)"


def test_the_bootstrap_is_spearmanr_on_runs_resampled_with_replacement():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12), rng.normal(size=12)
    low, high, used = bootstrap_spearman(x, y, resamples=300, level=0.9, seed=7)
    draws = np.random.default_rng(7).integers(0, 12, size=(300, 12))
    rhos = [spearmanr(x[d], y[d]).statistic for d in draws]
    assert used == 300
    assert (low, high) == pytest.approx(tuple(np.quantile(rhos, [0.05, 0.95])))
    assert bootstrap_spearman(x, y, resamples=300, level=0.9, seed=7) == (low, high, used)
    point = spearman(x, y, resamples=300, level=0.9, seed=7)
    assert point["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert low <= point["rho"] <= high


def test_metric_columns_take_the_declared_stems_present_r_before_z():
    columns = ["run", "effective_rank_z", "effective_rank_r", "effective_rank_r_head", "rankme_r",
               "collapsed_dims_z", "lidar_r", "lidar_rank_z", "linear_probe_top1_r",
               "power_law_alpha_r", "knn_top1_r", "training_seconds"]  # fmt: skip
    assert metric_columns(columns) == [
        "effective_rank_r", "effective_rank_z", "rankme_r", "power_law_alpha_r",
        "collapsed_dims_z", "lidar_r", "lidar_rank_z",
    ]  # fmt: skip


def _two_methods() -> pd.DataFrame:
    """Within each method the metric rises with accuracy; across methods it falls (the
    better method has the lower metric): the within-method and overall answers differ."""
    return pd.DataFrame(
        {
            "run": [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)],
            "seed": 0,
            "method": ["a"] * 6 + ["b"] * 4,
            "effective_rank_r": [10, 11, 12, 13, 14, 15, 1, 2, 3, 4],
            "collapsed_dims_z": [0] * 10,
            "linear_probe_top1_r": [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.80, 0.81, 0.82, 0.83],
            "knn_top1_r": [0.55, 0.54, 0.53, 0.52, 0.51, 0.50, 0.9, 0.9, 0.9, 0.9],
        }
    )


def test_rho_is_given_over_all_runs_and_within_each_method_with_its_run_count():
    table = rank_metrics(_two_methods(), resamples=500)
    table = table.set_index(["metric", "accuracy", "group"]).sort_index()
    probe = table.loc["effective_rank_r", "linear_probe_top1_r"]
    assert probe["runs"].to_dict() == {ALL: 10, "a": 6, "b": 4}
    assert probe.loc["a", "rho"] == pytest.approx(1.0)
    assert probe.loc[ALL, "rho"] < 0  # the methods' difference, not the ranking within one
    assert probe.loc["b", "status"] == TOO_FEW and math.isnan(probe.loc["b", "rho"])
    knn = table.loc["effective_rank_r", "knn_top1_r"]
    assert knn.loc["a", "rho"] == pytest.approx(-1.0)
    assert table.loc[("collapsed_dims_z", "linear_probe_top1_r", ALL), "status"] == CONSTANT_METRIC


def test_the_node_leaves_the_control_out_unless_told_and_draws_one_figure_per_metric():
    runs = _two_methods()
    control = runs.iloc[[0]].assign(run=CONTROL, method="a", effective_rank_r=99.0)
    runs = pd.concat([runs, control], ignore_index=True)
    table, markdown, figures = rank_runs(runs, SelectionConfig(resamples=200))
    counts = table[table["metric"] == "effective_rank_r"].set_index(["accuracy", "group"])
    assert counts.loc[("linear_probe_top1_r", "a"), "runs"] == 6
    assert set(figures) == {"effective_rank_r.png", "collapsed_dims_z.png"}
    assert "too few (n = 4)" in markdown and "left out" in markdown
    table, markdown, _ = rank_runs(runs, SelectionConfig(resamples=200, keep_control=True))
    groups = table[table["metric"] == "effective_rank_r"].set_index(["accuracy", "group"])
    assert groups.loc[("linear_probe_top1_r", "a"), "runs"] == 6  # not among method a
    assert groups.loc[("linear_probe_top1_r", CONTROL), "runs"] == 1
    assert groups.loc[("linear_probe_top1_r", ALL), "runs"] == 11


def test_runs_are_gathered_with_their_comparison_namespace_and_temperature():
    table = pd.DataFrame({"run": [CONTROL, "a", "b", "gone"], "seed": [0, 0, 1, 0],
                          "method": ["directclr", "simclr", "simclr", "simclr"]})  # fmt: skip
    settings = {"seeds": [0, 1], CONTROL: {}, "a": {"pretraining": {"temperature": 0.5}},
                "b": {"pretraining": {"method": "simclr"}}}  # fmt: skip
    runs = catalog_runs({"sw": table}, {"sw": settings}, {"temperature": 0.1})
    assert runs.columns[:6].tolist() == ["comparison", "namespace", "run", "seed", "method",
                                         "temperature"]  # fmt: skip
    assert runs["namespace"].tolist()[1:3] == ["sw.a.seed_0", "sw.b.seed_1"]
    assert runs["temperature"].tolist()[1:3] == [0.5, 0.1]  # its own, else the recipe's
    assert runs["temperature"].iloc[[0, 3]].isna().all()  # never trained; not configured
    assert len(runs) == 4  # the control is kept here: ranking it is rank_runs' choice


def test_runs_from_the_tracking_store_count_each_finished_model_once():
    """From MLflow: every finished run of the comparison, across kedro runs; a rerun of the
    same settings (same namespace and checkpoint) is one run; runs of other comparisons and
    runs that never reached linear_eval are left out."""
    tracked = pd.DataFrame({
        "namespace": ["sw.a.seed_0", "sw.a.seed_0", "sw.a.seed_0", "sw.random_init.seed_1",
                      "other.a.seed_0", "sw.b.seed_2"],
        "checkpoint_key": ["k1", "k1", "k2", "", "k1", "k3"],
        "start_time": [30, 10, 20, 5, 40, 50],
        "method": ["simclr", "simclr", "simclr", "directclr", "simclr", "simclr"],
        "temperature": [0.5, 0.5, 0.2, 0.1, 0.5, 0.1],
        "linear_probe_top1_r": [0.9, 0.8, 0.7, 0.6, 0.5, None],
    })  # fmt: skip
    runs = tracked_runs(tracked, ["sw"])
    assert runs["namespace"].tolist() == ["sw.a.seed_0", "sw.a.seed_0", "sw.random_init.seed_1"]
    assert runs["linear_probe_top1_r"].tolist() == [0.9, 0.7, 0.6]  # the newest of k1
    assert runs["run"].tolist() == ["a", "a", CONTROL] and runs["seed"].tolist() == [0, 0, 1]
    assert math.isnan(runs["temperature"].iloc[2])  # the control never trained


def test_the_gather_node_reads_mlflow_when_tracking_is_on_else_the_tables():
    """The node's named inputs: ``auto`` reads the tracking store when tracking is on (the
    store's runs are not None), the catalog's tables when it is off; ``mlflow`` with
    tracking off is a clear refusal."""
    gather = make_gather_runs(["sw"])
    table = pd.DataFrame({"run": ["a"], "seed": [0], "method": ["simclr"]})
    tracked = pd.DataFrame({
        "namespace": ["sw.a.seed_0", "sw.b.seed_1"], "checkpoint_key": ["k1", "k2"],
        "start_time": [1, 2], "linear_probe_top1_r": [0.9, 0.8],
    })  # fmt: skip
    inputs = {"recipe": {}, "sw_table": table, "sw_settings": {}}
    auto = SelectionConfig(source="auto")
    from_store = gather(tracked=tracked, params=auto, **inputs)
    assert from_store["namespace"].tolist() == ["sw.b.seed_1", "sw.a.seed_0"]
    assert len(gather(tracked=None, params=auto, **inputs)) == 1
    assert len(gather(tracked=tracked, params=SelectionConfig(source="catalog"), **inputs)) == 1
    with pytest.raises(ValueError, match="tracking is off"):
        gather(tracked=None, params=SelectionConfig(source="mlflow"), **inputs)


def test_selection_reads_the_sweep_by_default():
    assert selection_comparisons({}) == ["sweep"]
    assert selection_comparisons({"selection": {"comparisons": "compare"}}) == ["compare"]
    sweep = configured_comparisons(REPO / "conf")["sweep"]
    assert sweep[0] == CONTROL
    for method in ("simclr", "directclr"):
        assert len([run for run in sweep if run.startswith(f"{method}_t")]) >= 5


# ---------------------------------------------------------------------------------------
# The pipeline, through a Kedro session on a copy of the project.


def _sweep_table() -> pd.DataFrame:
    """A per-seed table of the sweep as the comparison writes it, with made-up numbers: the
    effective rank of r rises with the probe's accuracy within each method."""
    rows = []
    for i, run in enumerate(configured_comparisons(REPO / "conf")["sweep"]):
        method = "simclr" if run.startswith("simclr") else "directclr"
        accuracy = 0.3 if run == CONTROL else 0.6 + 0.01 * i
        rank = {"effective_rank": 100.0 - i if run == CONTROL else 10.0 + i, "rankme": 5.0 + i,
                "nesum": 1.0 + i % 3, "participation_ratio": 2.0, "normalised_std": 0.1,
                "numerical_rank": 60, "collapsed_dimensions": 0, "structural_zeros": 0,
                "dimensions": 512}  # fmt: skip
        linear_eval = {
            "method": method,
            "d0": 64,
            "linear_probe_accuracy_r": accuracy,
            "linear_probe_accuracy_z": accuracy - 0.1,
            "knn_accuracy_r": accuracy,
        }
        spectrum = {"split": "train", "r_train": rank, "z_train": {**rank, "dimensions": 64}}
        history = pd.DataFrame({"seconds": [0.0 if run == CONTROL else 30.0]})
        rows.append(comparison_row(run, linear_eval, spectrum, history, seed=0))
    return pd.DataFrame(rows)


def _run_selection(project, params=None):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params or {}) as session:
        session.run(pipeline_names=["selection"])


def test_selection_ranks_the_metrics_of_a_finished_sweep(project, monkeypatch):
    monkeypatch.chdir(project)  # pipelines are registered from the current folder's conf
    folder = project / "data/08_reporting/sweep/per_seed_table.csv/2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    _sweep_table().to_csv(folder / "per_seed_table.csv", index=False)
    _run_selection(project)

    runs = pd.read_csv(versions(project, "08_reporting/selection/runs.csv")[-1] / "runs.csv")
    assert CONTROL in set(runs["run"]) and runs["comparison"].eq("sweep").all()
    temperatures = runs.set_index("run")["temperature"]
    assert temperatures["simclr_t0_05"] == 0.05 and math.isnan(temperatures[CONTROL])
    assert runs["namespace"].iloc[1] == f"sweep.{runs['run'].iloc[1]}.seed_0"

    name = "metric_table.csv"
    table = pd.read_csv(versions(project, f"08_reporting/selection/{name}")[-1] / name)
    table = table.set_index(["metric", "accuracy", "group"]).sort_index()
    probe = table.loc["effective_rank_r", "linear_probe_top1_r"]
    assert probe["runs"].to_dict() == {ALL: 10, "simclr": 5, "directclr": 5}  # control left out
    assert probe["rho"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert table.loc[("participation_ratio_r", "knn_top1_r", ALL), "status"] == CONSTANT_METRIC
    assert {"effective_rank_z", "rankme_r", "collapsed_dims_z"} <= set(table.index.levels[0])

    name = "metric_table.md"
    markdown = (versions(project, f"08_reporting/selection/{name}")[-1] / name).read_text()
    assert "| effective_rank_r | +1.00 [+1.00, +1.00] (n = 10) |" in markdown
    figures = versions(project, "08_reporting/selection/scatter")[-1] / "scatter"
    assert {"effective_rank_r.png", "rankme_r.png"} <= {p.name for p in figures.iterdir()}


def test_selection_of_a_comparison_that_never_ran_says_to_run_it_first(project, monkeypatch):
    monkeypatch.chdir(project)
    message = r"sweep has never run.*`kedro run --pipeline=sweep` first"
    with pytest.raises(ValueError, match=message):
        _run_selection(project)
    assert not (project / "data" / "08_reporting" / "selection").exists()


def test_selection_comparisons_changed_with_params_are_refused(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match=r"selection\.comparisons=\['compare'\], but .*registered"):
        _run_selection(project, {"selection": {"comparisons": ["compare"]}})
