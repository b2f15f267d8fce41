"""The two toy mechanisms of collapse: the theory's X, the behaviour the paper describes with
fixed seeds, and both toy pipelines through a Kedro session on a copy of the project."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from pydantic import ValidationError

from directclr.toys import (
    ImplicitRegularizationConfig,
    StrongAugmentationConfig,
    alignment_matrix,
    depth_sweep,
    depth_sweep_lines,
    depth_sweep_metrics,
    final_alignment,
    initial_weights,
    noise_sweep,
    noise_sweep_lines,
    noise_sweep_metrics,
    prediction_note,
    spectrum_note,
)
from tests.conftest import REPO


def test_lemma_2_predicts_collapse_at_strong_noise_only_and_where_it_happens_in_the_papers_toy():
    """The paper's case_1 settings, shortened (lr 0.01 for 3,000 steps instead of 0.001 for
    10,000): at initialisation Lemma 2's X has no negative eigenvalue at weak noise and
    several, lying in the noisy half, at strong noise; they point where W~ collapses."""
    config = StrongAugmentationConfig(
        noise_levels=[0.01, 2.0], steps=3000, record_every=1000, theory_every=3000, lr=0.01,
        loss="dot_product", data_pool=10000, bias=True, init="pytorch_default", spectrum="raw",
        probe_size=1000, probe_fresh=True,
    )  # fmt: skip
    _, theory, prediction, summary = noise_sweep(config)
    weak, strong = summary.set_index("noise").loc[0.01], summary.set_index("noise").loc[2.0]
    assert weak["predicted_collapsed"] == 0 and weak["observed_collapsed"] == 0
    assert strong["predicted_collapsed"] >= 6
    assert strong["negative_x_noisy_share"] > 0.9  # random directions: 0.5
    assert strong["collapsed_w_tilde_final"] == 9  # the 8 noisy directions and the null vector
    assert strong["overlap_x_final"] > strong["chance_x_final"] + 0.3
    assert strong["overlap_trained_final"] > strong["chance_trained_final"] + 0.3
    # The exact matrix of the loss trained has negative eigenvalues at weak noise too.
    assert weak["predicted_collapsed_trained_loss"] >= 1
    assert set(theory["matrix"]) == {"X", "X~"} and set(theory["step"]) == {0, 3000}
    assert len(theory[theory["matrix"] == "X~"]) == 2 * 2 * 17  # over [x; 1]
    estimated = prediction.dropna(subset=["negative_x"])
    assert set(estimated["step"]) == {0, 3000} and len(prediction) == 2 * 4


def test_strong_noise_collapses_the_noisy_half_and_weak_noise_collapses_nothing():
    config = StrongAugmentationConfig(
        noise_levels=[0.01, 1.5], steps=600, record_every=300, theory_every=600
    )
    spectra, theory, prediction, summary = noise_sweep(config)
    weak, strong = summary.set_index("noise").loc[0.01], summary.set_index("noise").loc[1.5]

    final = spectra[spectra["step"] == 600]
    lam = final[final["noise"] == 1.5]["eigenvalue"].to_numpy()
    assert strong["observed_collapsed"] >= 1
    assert lam[-1] <= 1e-4 * lam[0]  # at least one eigenvalue 10^4 below the largest
    assert strong["noisy_to_clean_weight_ratio"] < 0.05  # W barely reads the noisy half
    assert strong["predicted_collapsed"] >= 4  # X has negative eigenvalues at the start
    assert strong["overlap_x_final"] > 0.9 > strong["chance_x_final"] + 0.3

    lam = final[final["noise"] == 0.01]["eigenvalue"].to_numpy()
    assert weak["observed_collapsed"] == 0 and lam[-1] > 1e-2 * lam[0]
    assert weak["predicted_collapsed"] == 0
    assert weak["noisy_to_clean_weight_ratio"] == pytest.approx(1.0, abs=0.1)

    assert sorted(spectra["step"].unique()) == [0, 300, 600]
    assert len(spectra) == 2 * 3 * config.dim and len(theory) == 2 * 2 * config.dim
    assert set(theory["matrix"]) == {"X"}  # the cosine loss has no exact matrix
    assert len(prediction) == 2 * 3 and set(prediction["step"]) == {0, 300, 600}


def test_the_theory_is_estimated_only_at_recordings():
    with pytest.raises(ValidationError, match="multiple of record_every"):
        StrongAugmentationConfig(record_every=300, theory_every=500)


def test_two_layers_collapse_along_aligned_directions_and_depth_adds_collapse():
    spectra, singular_values, alignment, summary = depth_sweep(
        ImplicitRegularizationConfig(record_every=1000)
    )
    by_depth = summary.set_index("layers")
    two = by_depth.loc[2]
    assert two["collapsed_at_init"] == 0
    assert two["collapsed"] >= 2
    # The rows of |V2^T U1| for the collapsed directions peak on the diagonal (seed 0).
    assert two["collapsed_rows_aligned_on_diagonal"] == two["collapsed"]
    assert two["collapsed_rows_aligned_within_collapsed"] == two["collapsed"]
    assert by_depth.loc[1, "collapsed"] < two["collapsed"] < by_depth.loc[3, "collapsed"]

    final = alignment[(alignment["layers"] == 2) & (alignment["step"] == 2000)]
    matrix = final.pivot_table(index="row", columns="column", values="value").to_numpy()
    collapsed = int(two["collapsed"])
    rows = matrix[-collapsed:]
    assert (rows.argmax(axis=1) == np.arange(16 - collapsed, 16)).all()
    assert set(alignment["pair"]) == {"V2^T U1", "V3^T U2"}
    assert set(singular_values[singular_values["layers"] == 3]["layer"]) == {1, 2, 3}


def test_alignment_matrix_of_aligned_layers_is_the_identity():
    generator = torch.Generator().manual_seed(1)
    u1, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))
    v1, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))
    u2, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))
    s = torch.diag(torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64))
    lower, upper = u1 @ s @ v1.T, u2 @ s @ u1.T  # the upper layer reads U1's directions
    np.testing.assert_allclose(alignment_matrix(lower, upper), np.eye(5), atol=1e-10)


def test_the_noise_sweeps_metrics_say_which_matrix_predicts_and_log_a_line_per_level():
    summary = pd.DataFrame({"noise": [0.01, 1.5], "observed_collapsed": [0, 8],
                            "predicted_collapsed": [0, 6], "overlap_x_final": [np.nan, 0.75],
                            "chance_x_final": [np.nan, 0.5],
                            "noisy_to_clean_weight_ratio": [1.0, 0.0123]})  # fmt: skip
    config = StrongAugmentationConfig(loss="dot_product", spectrum="raw")
    metrics = noise_sweep_metrics(summary, config)
    assert metrics["runs"][0]["overlap_x_final"] is None  # JSON has no NaN
    assert metrics["parameters"] == config.model_dump()
    assert metrics["x"].startswith("Lemma 2's X") and "same branch" in metrics["x"]
    assert metrics["x~"].startswith("the exact matrix of the loss trained")
    assert "below -3 standard errors" in metrics["predicted_collapsed"]
    assert "covariance of raw z (np.cov)" in metrics["observed_collapsed"]
    assert "x~" not in noise_sweep_metrics(summary, StrongAugmentationConfig())
    assert noise_sweep_lines(metrics) == [
        "toy_strong_augmentation: noise 0.01 -> collapsed 0 of 16; Lemma 2's X predicts 0 at "
        "the start, overlap with W's collapsed directions n/a; noisy/clean weight ratio 1",
        "toy_strong_augmentation: noise 1.50 -> collapsed 8 of 16; Lemma 2's X predicts 6 at "
        "the start, overlap with W's collapsed directions 0.75 (chance 0.50); noisy/clean "
        "weight ratio 0.0123",
    ]


def test_figures_say_which_spectrum_each_environment_shows():
    paper = ImplicitRegularizationConfig(spectrum="raw", probe_fresh=True, probe_size=1000)
    assert spectrum_note(paper) == (
        "eigenvalues of np.cov of raw z (centred, divided by N - 1) on 1000 fresh clean "
        "inputs at every recording"
    )
    assert spectrum_note(ImplicitRegularizationConfig()) == (
        "eigenvalues of the covariance of L2-normalised z on a fixed probe of 1024 clean inputs"
    )
    note = prediction_note(StrongAugmentationConfig(loss="dot_product"))
    assert "X: Lemma 2" in note and "X~: the exact matrix" in note
    assert "X~" not in prediction_note(StrongAugmentationConfig())


def test_case_2_draws_its_initial_layers_as_the_papers_script():
    """case_2.py: np.random.seed(0), then per layer (lowest first) the SVD of
    np.random.random((16, 16)) with its singular values replaced by exp(-0.35 k)."""
    layers = initial_weights(2, 16, 1.0, math.exp(-0.35), torch.Generator(), "uniform_svd", 0)
    np.random.seed(0)
    for layer in layers:
        u, _, v = np.linalg.svd(np.random.random((16, 16)))
        expected = torch.Tensor(u @ np.diag(np.exp(-np.arange(16) * 0.35)) @ v)
        torch.testing.assert_close(layer, expected, rtol=1e-6, atol=1e-7)


def test_the_depth_sweeps_metrics_and_the_final_alignment_matrices():
    aligned = pd.array([None, 3], "Int64")  # one layer has no pair to align
    summary = pd.DataFrame({"layers": [1, 2], "collapsed": [0, 3], "collapsed_at_init": [0, 0],
                            "collapsed_rows_aligned_on_diagonal": aligned})  # fmt: skip
    metrics = depth_sweep_metrics(summary, ImplicitRegularizationConfig(dim=4, probe_size=16))
    assert metrics["runs"][0]["collapsed_rows_aligned_on_diagonal"] is None
    assert "covariance of L2-normalised z" in metrics["collapsed"]
    assert depth_sweep_lines(metrics) == [
        "toy_implicit_regularization: 1 layer(s) -> collapsed 0 of 4 (0 at init)",
        "toy_implicit_regularization: 2 layer(s) -> collapsed 3 of 4 (0 at init)",
    ]
    rows = [{"layers": 2, "step": step, "pair": "V2^T U1", "row": i, "column": j,
             "value": step + 10 * i + j}
            for step in (0, 9) for i in (1, 2) for j in (1, 2)]  # fmt: skip
    matrices = final_alignment(pd.DataFrame(rows))
    assert list(matrices) == ["2 layers: |V2^T U1|"]  # the last step only
    np.testing.assert_array_equal(matrices["2 layers: |V2^T U1|"], [[20, 21], [30, 31]])
    # Row 2 (the one collapsed direction) peaks at column 2: on the diagonal.
    named = final_alignment(pd.DataFrame(rows), pd.DataFrame({"layers": [2], "collapsed": [1]}))
    assert list(named) == ["2 layers: |V2^T U1|\ncollapsed rows 2-2 peak at columns 2\n"
                           "on the diagonal: 2"]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "bad"),
    [(StrongAugmentationConfig, {"noisy_dims": 16}),
     (StrongAugmentationConfig, {"noise_levels": [-1.0]}),
     (StrongAugmentationConfig, {"theory_batches": 2}),  # nothing to test on
     (StrongAugmentationConfig, {"noise": 1.0}),
     (ImplicitRegularizationConfig, {"layers": [2, 2]}),
     (ImplicitRegularizationConfig, {"probe_size": 16}),  # structural zeros in the spectrum
     (ImplicitRegularizationConfig, {"init_decay": 1.5})],
)  # fmt: skip
def test_bad_toy_parameters_are_rejected(model, bad):
    with pytest.raises(ValidationError):
        model.model_validate(bad)


SMALL = {"steps": 40, "record_every": 20, "batch_size": 32, "probe_size": 64}
ARTIFACTS = {
    "toy_strong_augmentation": ["spectrum_history.csv", "theory_spectrum.csv", "summary.csv",
                                "metrics.json", "spectrum_history.png", "final_spectrum.png",
                                "collapse_prediction.csv", "collapse_prediction.png"],
    "toy_implicit_regularization": ["spectrum_history.csv", "singular_values.csv",
                                    "alignment.csv", "summary.csv", "metrics.json",
                                    "spectrum_history.png", "final_spectrum.png",
                                    "alignment.png"],
}  # fmt: skip


def test_toy_pipelines_run_in_a_kedro_session_and_write_versioned_artifacts(project):
    params = {
        "toy_strong_augmentation": {**SMALL, "noise_levels": [0.01, 1.5]},
        "toy_implicit_regularization": {**SMALL, "layers": [1, 2]},
    }
    bootstrap_project(project)
    for name in ARTIFACTS:
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=[name])
    for name, files in ARTIFACTS.items():
        for file in files:
            (version,) = (project / "data" / "08_reporting" / name / file).iterdir()
            assert (version / file).stat().st_size > 0, f"{name}/{file}"

    def latest(name: str, file: str) -> Path:
        (version,) = (project / "data" / "08_reporting" / name / file).iterdir()
        return version / file

    summary = pd.read_csv(latest("toy_strong_augmentation", "summary.csv"))
    assert summary["noise"].tolist() == [0.01, 1.5]
    metrics = json.loads(latest("toy_strong_augmentation", "metrics.json").read_text())
    assert [run["noise"] for run in metrics["runs"]] == [0.01, 1.5]
    assert metrics["parameters"]["steps"] == 40
    history = pd.read_csv(latest("toy_implicit_regularization", "spectrum_history.csv"))
    assert sorted(history["step"].unique()) == [0, 20, 40]
    assert set(history["layers"]) == {1, 2}
    metrics = json.loads(latest("toy_implicit_regularization", "metrics.json").read_text())
    assert metrics["runs"][0]["collapsed_rows_aligned_on_diagonal"] is None  # one layer


def test_registry_has_both_toys_tagged_with_their_names():
    from directclr.pipeline_registry import register_pipelines

    bootstrap_project(REPO)
    pipelines = register_pipelines()
    for name in ARTIFACTS:
        nodes = pipelines[name].nodes
        assert nodes and all(node.tags == {name} for node in nodes)
        assert all(node.namespace == name for node in nodes)
    assert not set(pipelines["__default__"].nodes) & set(pipelines["toy_strong_augmentation"].nodes)


def test_the_depth_sweeps_alignment_table_is_numeric_with_a_one_layer_run():
    # One layer has no adjacent pair: its empty table must not turn the sweep's columns
    # into objects (the in-memory table is plotted as it is).
    _, _, alignment, _ = depth_sweep(
        ImplicitRegularizationConfig(layers=[1, 2], steps=200, record_every=100)
    )
    assert alignment["value"].dtype == "float64" and alignment["step"].dtype == "int64"
    assert set(alignment["layers"]) == {2}


def test_a_diverged_toy_stops_with_the_setting_to_change_before_any_spectrum():
    from directclr.analysis import NumericalError
    from directclr.toys import train

    config = StrongAugmentationConfig(steps=4, record_every=2)
    weight = torch.full((config.dim, config.dim), float("nan"))
    steps = train([weight], torch.ones(config.dim), config, torch.Generator().manual_seed(0))
    assert next(steps) == (0, pytest.approx(float("nan"), nan_ok=True))
    with pytest.raises(NumericalError, match=r"diverged by step 2 .*Lower lr"):
        next(steps)
