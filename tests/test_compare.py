"""The comparison pipelines, on tiny parameters, through a Kedro session."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from directclr.comparison import (
    CONTROL,
    PAPER_COLUMN,
    compare,
    comparison_summary,
    lookup,
    summarise,
    summary_markdown,
)
from directclr.pipeline_registry import comparison_layout, configured_comparisons
from directclr.pipelines.comparison import create_pipeline
from directclr.pipelines.comparison.nodes import run_artifacts
from directclr.selection import SelectionConfig
from directclr.tracking import NAMESPACE_TAG, PARENT_TAG
from tests.conftest import REPO
from tests.test_run import versions

TINY = {
    "data_prep": {"max_samples": 300},
    "pretraining": {"epochs": 1, "batch_size": 64, "width": 4, "warmup_epochs": 0,
                    "projector_hidden_dim": 16, "projector_dim": 16},
    "compare": {"directclr": {"pretraining": {"d0": 8}},
                "random_init": {"pretraining": {"d0": 8}}},
    "linear_eval": {"C_grid": [1.0], "max_iter": 200},
}  # fmt: skip
RUNS = ["random_init", "simclr", "simclr_linear", "no_projector", "directclr"]


def _two_seeds(project, monkeypatch) -> None:
    """The project's compare with two seeds, and selection over compare's runs. Both are read
    when pipelines are registered, from the configuration of the current folder: run from the
    project's copy."""
    monkeypatch.chdir(project)
    path = project / "conf" / "base" / "parameters_compare.yml"
    path.write_text(path.read_text().replace("seeds: [0, 1, 2]", "seeds: [0, 1]", 1))
    path = project / "conf" / "base" / "parameters_selection.yml"
    path.write_text(path.read_text().replace("comparisons: [sweep]", "comparisons: [compare]"))


def _run(project, params=TINY, **kwargs):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(**kwargs)


def _latest(project, name: str) -> pd.DataFrame:
    folder = versions(project, f"08_reporting/compare/{name}")[-1]
    return pd.read_csv(folder / name)


def test_comparisons_are_read_from_the_parameters_with_seeds_and_a_control():
    runs = configured_comparisons(REPO / "conf")
    assert runs["compare"] == RUNS
    assert runs["projector_ablation"] == ["random_init", "no_projector", "orthogonal",
                                          "simclr_linear", "diagonal", "fixed_low_rank",
                                          "directclr"]  # fmt: skip
    assert runs["d0_sweep"][0] == "random_init" and len(runs["d0_sweep"]) >= 4
    layout = comparison_layout({"compare": {"seeds": [2, 0, 2], "reference": "a", "a": {}}})
    assert layout == {"compare": (["a"], [2, 0])}


def test_compare_runs_every_method_over_seeds_with_the_untrained_control(
    project, monkeypatch, tracked
):
    _two_seeds(project, monkeypatch)
    _run(project, pipeline_names=["compare"])
    per_seed = _latest(project, "per_seed_table.csv")
    parent, children = _tracked_runs(tracked, project)
    _check_children_reproduce_the_table(tracked, parent, children, per_seed)
    assert parent.info.run_name == "compare seeds 0, 1"
    assert per_seed["run"].tolist() == [run for run in RUNS for _ in (0, 1)]
    assert per_seed["seed"].tolist() == [0, 1] * len(RUNS)
    assert per_seed["spectrum_split"].eq("train").all()
    numeric = ["linear_probe_top1_r", "linear_probe_top1_z", "knn_top1_r", "effective_rank_r",
               "effective_rank_z", "collapsed_dims_r", "collapsed_dims_z",
               "linear_probe_top1_raw_pixels", "nesum_r", "participation_ratio_r",
               "normalised_std_r"]  # fmt: skip
    assert per_seed[numeric].notna().all().all()
    control = per_seed[per_seed["run"] == "random_init"]
    assert control["training_seconds"].eq(0).all()  # never trained
    assert control[PAPER_COLUMN].isna().all()
    # Two seeds of the control are two random networks: different representations.
    assert control["effective_rank_r"].nunique() == 2
    # DirectCLR's two parts, probed and ranked apart, beside the control of the same shape.
    parts = ["linear_probe_top1_r_head", "linear_probe_top1_r_tail", "effective_rank_r_head",
             "effective_rank_r_tail"]  # fmt: skip
    for run in ("random_init", "directclr"):
        assert per_seed[per_seed["run"] == run][parts].notna().all().all()
    assert per_seed[per_seed["run"] == "simclr"][parts].isna().all().all()

    summary = _latest(project, "comparison_table.csv")
    assert summary["run"].tolist() == RUNS  # the control first
    by_run = summary.set_index("run")
    for run in RUNS:  # std over seeds, computed from the per-seed rows (ddof = 1)
        rows = per_seed[per_seed["run"] == run]["linear_probe_top1_r"]
        assert by_run.loc[run, "linear_probe_top1_r_mean"] == pytest.approx(rows.mean())
        assert by_run.loc[run, "linear_probe_top1_r_std"] == pytest.approx(rows.std(ddof=1))
    diffs = per_seed.pivot(index="seed", columns="run", values="effective_rank_r")
    paired = diffs["simclr"] - diffs["directclr"]
    assert by_run.loc["simclr", "effective_rank_r_diff_mean"] == pytest.approx(paired.mean())
    assert by_run.loc["simclr", "effective_rank_r_diff_se"] == pytest.approx(
        paired.std(ddof=1) / math.sqrt(2)
    )
    assert math.isnan(by_run.loc["directclr", "effective_rank_r_diff_mean"])
    assert by_run.loc["directclr", "dims_z"] == 8 and by_run.loc["no_projector", "dims_z"] == 32
    assert by_run[PAPER_COLUMN].tolist()[1:] == [66.5, 61.1, 51.5, 62.7]
    markdown = versions(project, "08_reporting/compare/comparison_table.md")[0]
    text = (markdown / "comparison_table.md").read_text()
    assert "± " in text and "reference" in text and "indicative" in text
    for figure in ("comparison_spectra.png", "collapse_vs_d0.png", "per_seed_table.md"):
        assert versions(project, f"08_reporting/compare/{figure}")

    # Redo one seed of one run with other settings: only its row changes.
    params = {**TINY, "compare": {**TINY["compare"], "simclr": {"pretraining": {"lr": 0.01}}}}
    _run(project, params, pipeline_names=["compare"],
         namespaces=["compare.simclr.seed_1", "compare.report"])  # fmt: skip
    again = _latest(project, "per_seed_table.csv")
    assert len(versions(project, "06_models/compare.simclr.seed_1/model.pt")) == 2
    assert len(versions(project, "06_models/compare.simclr.seed_0/model.pt")) == 1
    changed = (again["run"] == "simclr") & (again["seed"] == 1)
    pd.testing.assert_frame_equal(again[~changed], per_seed[~changed], check_exact=True)
    metrics = json.loads(
        next((project / "data/08_reporting/compare.simclr.seed_1").glob(
            "linear_eval_metrics.json/*/linear_eval_metrics.json")).read_text()
    )  # fmt: skip
    assert metrics["method"] == "simclr"
    # The redo is a kedro run of its own: a new parent with the one model it trained (its
    # first run finished, so training gets a new MLflow run), beside the report's artifacts.
    redo, redone = _tracked_runs(tracked, project)
    assert redo.info.run_id != parent.info.run_id
    assert [c.data.tags[NAMESPACE_TAG] for c in redone] == ["compare.simclr.seed_1"]
    assert redone[0].data.metrics["linear_probe_top1_r"] == pytest.approx(
        again[changed]["linear_probe_top1_r"].item()
    )

    # selection, with tracking on, reads every finished run of the comparison from MLflow:
    # both kedro runs, so simclr seed 1 counts twice (two settings), 11 runs in all.
    _run(project, pipeline_names=["selection"])
    runs = pd.read_csv(versions(project, "08_reporting/selection/runs.csv")[-1] / "runs.csv")
    assert len(runs) == 2 * len(RUNS) + 1
    assert (runs["namespace"] == "compare.simclr.seed_1").sum() == 2
    assert runs["mlflow_run_id"].nunique() == len(runs)


def _tracked_runs(client, project):
    """The newest parent run of this project copy, and its children by namespace."""
    experiment = client.get_experiment_by_name("directclr").experiment_id
    runs = client.search_runs([experiment], f"tags.project_path = '{project.as_posix()}'",
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    return parent, sorted(children, key=lambda c: c.data.tags[NAMESPACE_TAG])


def _check_children_reproduce_the_table(client, parent, children, per_seed) -> None:
    """Every run and seed is a child run whose metrics are its row of the per-seed table,
    and the comparison's tables and figures are artifacts of the parent."""
    spaces = [f"compare.{r.run}.seed_{r.seed}" for r in per_seed.itertuples()]
    assert [c.data.tags[NAMESPACE_TAG] for c in children] == sorted(spaces)
    by_space = {c.data.tags[NAMESPACE_TAG]: c for c in children}
    for space, (_, row) in zip(spaces, per_seed.iterrows(), strict=True):
        child = by_space[space]
        assert child.info.status == "FINISHED"
        assert child.info.run_name == space.split(".", 1)[1].replace(".seed_", " seed ")
        for column in ("linear_probe_top1_r", "effective_rank_r", "knn_top1_r", "nesum_r"):
            assert child.data.metrics[column] == pytest.approx(row[column]), (space, column)
        assert child.data.params["pretraining.seed"] == str(row["seed"])
    trained = by_space["compare.simclr.seed_0"].info.run_id
    assert len(client.get_metric_history(trained, "history/loss")) == 1  # epochs: 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    expected = {"comparison_table.csv", "comparison_table.md", "per_seed_table.csv",
                "comparison_spectra.png"}  # fmt: skip
    assert {f"compare/{name}" for name in expected} <= artifacts


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("seeds: [0, 1, 2]", "seeds: []", r"compare\.seeds=\[\]: give a non-empty list"),
     ("seeds: [0, 1, 2]", "seeds: [1, 1]", r"compare\.seeds=\[1, 1\] repeats a seed"),
     ("reference: directclr", "reference: nobody", r"compare\.reference='nobody' is not a run")],
)  # fmt: skip
def test_bad_seed_lists_and_references_fail_before_any_work(
    project, monkeypatch, old, new, message
):
    monkeypatch.chdir(project)
    path = project / "conf" / "base" / "parameters_compare.yml"
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ValueError, match=message):
        _run(project, pipeline_names=["compare"])
    assert not (project / "data" / "03_primary").exists()


def test_seeds_changed_with_params_are_refused_not_ignored(project):
    with pytest.raises(ValueError, match=r"compare\.seeds=\[0\], but .* registered with seeds"):
        _run(project, {**TINY, "compare": {**TINY["compare"], "seeds": [0]}},
             pipeline_names=["compare"])  # fmt: skip


def test_summary_marks_paired_differences_beyond_two_standard_errors():
    rows = []
    for seed in range(3):
        for run, acc, rank in (("a", 0.90, 10.0), ("b", 0.80, 10.0)):
            noise = [0.001, -0.002, 0.0015][seed]
            rows.append({"run": run, "seed": seed, "method": "m", "d0": None,
                         "spectrum_split": "train", "dims_r": 4, "dims_z": 4,
                         "structural_zeros_r": 0, PAPER_COLUMN: None,
                         "linear_probe_top1_r": acc + noise, "effective_rank_r": rank + noise,
                         **{m: 0.5 for m in ("linear_probe_top1_z", "knn_top1_r",
                                             "linear_probe_top1_r_head",
                                             "linear_probe_top1_r_tail", "effective_rank_r_head",
                                             "effective_rank_r_tail",
                                             "linear_probe_top1_raw_pixels", "effective_rank_z",
                                             "rankme_r", "nesum_r", "participation_ratio_r",
                                             "normalised_std_r", "lidar_r", "lidar_z",
                                             "numerical_rank_r",
                                             "collapsed_dims_r",
                                             "collapsed_dims_z", "training_seconds")}})  # fmt: skip
    rows[-1]["effective_rank_r"] += 0.5  # b's rank differs from a's on one seed only
    summary = summarise(pd.DataFrame(rows), reference="a").set_index("run")
    assert summary.loc["b", "linear_probe_top1_r_diff_mean"] == pytest.approx(-0.10)
    assert bool(summary.loc["b", "linear_probe_top1_r_beyond_2se"]) is True
    assert bool(summary.loc["b", "effective_rank_r_beyond_2se"]) is False
    assert summary.loc["a", "linear_probe_top1_r_beyond_2se"] is None
    assert np.isclose(summary.loc["b", "linear_probe_top1_r_std"], pd.Series(
        [0.801, 0.798, 0.8015]).std(ddof=1))  # fmt: skip
    text = summary_markdown(summary.reset_index(), "a")
    assert "-0.1000 ± 0.0000 (> 2 SE)" in text and "indicative" in text


def test_lookup_reads_dotted_settings_of_plain_and_typed_sections():
    params = {"compare": {"simclr": {"pretraining": {"temperature": 0.2}}},
              "selection": SelectionConfig(seed=3)}  # fmt: skip
    assert lookup(params, "compare.simclr.pretraining.temperature") == 0.2
    assert lookup(params, "compare.simclr") == {"pretraining": {"temperature": 0.2}}
    assert lookup(params, "compare.simclr.pretraining.lr") is None
    assert lookup(params, "compare.simclr.pretraining.temperature.x") is None
    assert lookup(params, "selection.seed") == 3  # a section Kedro has typed already


def _artifacts(run: str, method: str, seed: int) -> tuple:
    """What one run and seed writes for the comparison, with d0 = 4 of 8 dimensions."""
    parts = {"r": 1, "z": 0, "r[:d0]": 0, "r[d0:]": 1}
    spectrum_metrics = {"split": "train", "method": method, "d0": 4} | {
        f"{name}_train": {"effective_rank": 3.0 + seed, "collapsed_dimensions": collapsed,
                          "structural_zeros": 0, "dimensions": 8}
        for name, collapsed in parts.items()
    }  # fmt: skip
    linear_eval = {"method": method, "d0": 4, "linear_probe_accuracy_r": 0.5 + seed / 10,
                   "linear_probe_accuracy_z": 0.4, "probes": {"r[:d0]": {"top1": 0.3}}}  # fmt: skip
    spectrum = pd.DataFrame({"vectors": ["r", "z"], "split": "train", "index": [1, 1],
                             "eigenvalue": [0.5, 0.7]})  # fmt: skip
    return run, seed, linear_eval, spectrum_metrics, spectrum, pd.DataFrame({"seconds": [2.0]})


def test_a_comparisons_tables_come_from_its_runs_artifacts():
    runs = [_artifacts(run, "directclr", seed) for run in ("directclr", CONTROL) for seed in (0, 1)]
    per_seed, summary, spectra, by_d0 = compare(runs, reference="directclr")
    assert per_seed[["run", "seed"]].values.tolist() == [["directclr", 0], ["directclr", 1],
                                                         [CONTROL, 0], [CONTROL, 1]]  # fmt: skip
    assert per_seed["linear_probe_top1_r_head"].tolist() == [0.3] * 4
    assert summary["run"].tolist() == ["directclr", CONTROL]
    assert summary["linear_probe_top1_r_mean"].tolist() == pytest.approx([0.55, 0.55])
    assert len(spectra) == 8 and set(spectra.columns) >= {"run", "seed", "vectors"}
    # Collapse against d0 is a question about training: the control is left out.
    assert set(by_d0["run"]) == {"directclr"} and sorted(set(by_d0["seed"])) == [0, 1]
    assert by_d0.set_index(["seed", "vectors"]).loc[(0, "r[d0:]"), "collapsed_dimensions"] == 1

    assert comparison_summary("c", per_seed, summary) == (
        "comparison c: 2 runs x 2 seeds -> table (linear-probe top-1 on r, mean over seeds: "
        "directclr 0.5500, random_init 0.5500)"
    )


def test_the_report_node_reads_each_runs_artifacts_by_name():
    namespaces = {run: [f"c.{run}.seed_{seed}" for seed in (3, 5)]
                  for run in ("directclr", CONTROL)}  # fmt: skip
    (node,) = create_pipeline("c", namespaces).nodes
    assert node.name == "c.report.compare_runs"
    inputs = {"params:c.reference": "directclr"}
    for run, spaces in namespaces.items():
        for space in spaces:
            _, seed, *artifacts = _artifacts(run, "directclr", int(space.rsplit("_", 1)[1]))
            inputs |= dict(zip(run_artifacts(space), artifacts, strict=True))
    assert set(node.inputs) == set(inputs)
    outputs = node.run(inputs)
    per_seed = outputs["c.per_seed_table"]
    assert per_seed[["run", "seed"]].values.tolist() == [["directclr", 3], ["directclr", 5],
                                                         [CONTROL, 3], [CONTROL, 5]]  # fmt: skip
    # Each row holds its own run's and seed's artifacts: seed 5 probes at 0.5 + 5 / 10.
    assert per_seed["linear_probe_top1_r"].tolist() == pytest.approx([0.8, 1.0, 0.8, 1.0])
    assert outputs["c.comparison_table"]["run"].tolist() == ["directclr", CONTROL]
    assert "| directclr | 2 |" in outputs["c.comparison_markdown"]


def test_a_seed_namespace_splits_back_into_its_run_and_seed():
    from directclr.comparison import seed_namespace, split_seed_namespace

    space = seed_namespace("compare", "simclr_linear", 12)
    assert space == "compare.simclr_linear.seed_12"
    assert split_seed_namespace(space) == ("compare.simclr_linear", 12)
    assert split_seed_namespace("directclr") is None
    assert split_seed_namespace("compare.simclr.seed_x") is None
    assert split_seed_namespace(".seed_3") is None
