"""The two toy mechanisms of collapse: the theory's X, the behaviour the paper describes with
fixed seeds, and both toy pipelines through a Kedro session on a copy of the project."""

import json
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
    collapse_prediction,
    depth_sweep,
    depth_sweep_lines,
    depth_sweep_metrics,
    dot_product_theory_matrix,
    final_alignment,
    noise_sweep,
    noise_sweep_lines,
    noise_sweep_metrics,
    principal_cos2,
    theory_matrix,
)
from tests.conftest import REPO


def test_theory_matrix_is_the_papers_sum_over_pairs():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3, generator=generator)
    x, x_prime = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    tau = 0.5
    x64, x_prime64, w = x.double(), x_prime.double(), weight.double()
    z = torch.nn.functional.normalize(x64 @ w.T, dim=1)
    z_prime = torch.nn.functional.normalize(x_prime64 @ w.T, dim=1)
    kernel = torch.exp(-(torch.cdist(z, z_prime) ** 2) / (2 * tau))
    alpha = kernel / kernel.sum(dim=1, keepdim=True)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            if j != i:
                d = x_prime64[j] - x64[i]
                expected += alpha[i, j] * torch.outer(d, d)
        d = x_prime64[i] - x64[i]
        expected -= (1 - alpha[i, i]) * torch.outer(d, d)
    np.testing.assert_allclose(theory_matrix(weight, x, x_prime, tau), expected / 5, rtol=1e-10)


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_paper_toys_loss_moves_w_by_exactly_w_x_over_n_tau(with_bias):
    """-dL/dW~ = W~ X~ / (N tau) for the dot-product loss the paper's toy trains, held
    against autograd in float64."""
    generator = torch.Generator().manual_seed(1)
    n, d, tau = 12, 5, 0.1
    weight = torch.randn(d, d, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = bias if with_bias else None
    x1 = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    z1, z2 = x1 @ weight.T, x2 @ weight.T
    if with_bias:
        z1, z2 = z1 + bias, z2 + bias
    loss = torch.nn.functional.cross_entropy(z1 @ z2.T / tau, torch.arange(n))
    loss.backward()
    matrix = torch.from_numpy(dot_product_theory_matrix(weight, x1, x2, tau, bias))
    w_tilde = torch.cat([weight, bias[:, None]], 1) if with_bias else weight
    predicted = w_tilde.detach() @ matrix / (n * tau)
    observed = -(torch.cat([weight.grad, bias.grad[:, None]], 1) if with_bias else weight.grad)
    error = (predicted - observed).norm() / observed.norm()
    assert error < 1e-10
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-12)  # symmetric


def test_eq6_is_exact_for_squared_distance_logits_and_an_approximation_otherwise():
    generator = torch.Generator().manual_seed(2)
    n, d, tau = 10, 4, 0.5
    weight = torch.randn(d, d, generator=generator, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x2 = x1 + 0.2 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    logits = -(torch.cdist(x1 @ weight.T, x2 @ weight.T) ** 2) / (2 * tau)
    torch.nn.functional.cross_entropy(logits, torch.arange(n)).backward()
    eq6 = torch.from_numpy(theory_matrix(weight, x1, x2, tau, normalise=False))
    torch.testing.assert_close(weight.detach() @ eq6 / tau, -weight.grad, rtol=1e-10, atol=0)
    exact = dot_product_theory_matrix(weight, x1, x2, tau)
    cosine = (exact * eq6.numpy()).sum() / (np.linalg.norm(exact) * np.linalg.norm(eq6.numpy()))
    assert -1 <= cosine < 0.9999  # related, not the same matrix


def test_a_biased_layer_trained_with_the_cosine_loss_tracks_prediction_on_w_alone():
    config = StrongAugmentationConfig(dim=6, noisy_dims=3, noise_levels=[2.0], steps=20,
                                      record_every=10, bias=True, probe_size=256)  # fmt: skip
    _, theory, prediction, _ = noise_sweep(config)
    assert len(theory) == 3 * 6  # Eq. 6's X is d x d: it has no bias coordinate
    assert prediction["principal_cos2"].dropna().between(0, 1).all()


def test_principal_cos2_compares_subspaces():
    basis = np.eye(4)
    assert principal_cos2(basis[:, :2], basis[:, :2]) == pytest.approx(1.0)
    assert principal_cos2(basis[:, :2], basis[:, 2:]) == pytest.approx(0.0)
    assert principal_cos2(basis[:, :1], basis[:, :3]) == pytest.approx(1.0)  # contained
    assert np.isnan(principal_cos2(basis[:, :0], basis[:, :2]))


def test_collapse_prediction_compares_negative_directions_of_x_with_collapsed_ones_of_w():
    config = StrongAugmentationConfig(dim=4, noisy_dims=2, noise_levels=[1.0])
    matrix = np.diag([-1.0, -1.0, 1.0, 1.0])
    along = torch.diag(torch.tensor([1e-6, 1e-6, 1.0, 1.0]))  # W collapsed where X < 0
    across = torch.diag(torch.tensor([1.0, 1.0, 1e-6, 1e-6]))  # ... where X > 0
    for weight, cos2 in ((along, 1.0), (across, 0.0)):
        result = collapse_prediction(matrix, weight, config, bias=None)
        assert result["negative_eigenvalues"] == 2 and result["collapsed_singular_values"] == 2
        assert result["principal_cos2"] == pytest.approx(cos2, abs=1e-9)
    healthy = collapse_prediction(matrix, torch.eye(4), config, bias=None)
    assert healthy["collapsed_singular_values"] == 0 and np.isnan(healthy["principal_cos2"])


def test_the_papers_toy_loss_collapses_the_noisy_half_and_tracks_the_prediction():
    """The paper's case_1 settings, shortened (lr 0.01 for 3,000 steps instead of 0.001 for
    10,000): strong noise collapses the 8 noisy directions."""
    config = StrongAugmentationConfig(
        noise_levels=[0.01, 2.0], steps=3000, record_every=1000, lr=0.01, loss="dot_product",
        data_pool=10000, bias=True, init="pytorch_default", spectrum="raw", probe_size=1000,
        probe_fresh=True,
    )  # fmt: skip
    _, _, prediction, summary = noise_sweep(config)
    strong, weak = summary.set_index("noise").loc[2.0], summary.set_index("noise").loc[0.01]
    assert strong["observed_collapsed"] == 8
    assert strong["collapsed_singular_values_final"] == 8
    assert strong["predicted_collapsed"] >= 1  # X~ has negative eigenvalues from the start
    assert 0.0 <= strong["principal_cos2_final"] <= 1.0
    assert -1.0 <= strong["cosine_exact_to_eq6_final"] < 0.9999  # Eq. 6 approximates X~
    assert weak["observed_collapsed"] == 0 and pd.isna(weak["principal_cos2_final"])
    assert list(prediction["step"].unique()) == [0, 1000, 2000, 3000]


def test_strong_noise_collapses_the_noisy_half_and_weak_noise_collapses_nothing():
    config = StrongAugmentationConfig(noise_levels=[0.01, 1.5], steps=600, record_every=300)
    spectra, theory, prediction, summary = noise_sweep(config)
    weak, strong = summary.set_index("noise").loc[0.01], summary.set_index("noise").loc[1.5]

    final = spectra[spectra["step"] == 600]
    lam = final[final["noise"] == 1.5]["eigenvalue"].to_numpy()
    assert strong["observed_collapsed"] >= 1
    assert lam[-1] <= 1e-4 * lam[0]  # at least one eigenvalue 10^4 below the largest
    assert strong["noisy_to_clean_weight_ratio"] < 0.05  # W barely reads the noisy half
    assert strong["predicted_collapsed"] >= 1  # X has negative eigenvalues at the start

    lam = final[final["noise"] == 0.01]["eigenvalue"].to_numpy()
    assert weak["observed_collapsed"] == 0 and lam[-1] > 1e-2 * lam[0]
    assert weak["predicted_collapsed"] == 0
    assert weak["noisy_to_clean_weight_ratio"] == pytest.approx(1.0, abs=0.1)

    assert sorted(spectra["step"].unique()) == [0, 300, 600]
    assert len(spectra) == len(theory) == 2 * 3 * config.dim
    assert len(prediction) == 2 * 3 and set(prediction["step"]) == {0, 300, 600}


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
                            "predicted_collapsed": [0, 6], "negative_x_eigenvalues_final": [0, 8],
                            "principal_cos2_final": [np.nan, 0.75],
                            "noisy_to_clean_weight_ratio": [1.0, 0.0123]})  # fmt: skip
    config = StrongAugmentationConfig(loss="dot_product", spectrum="raw")
    metrics = noise_sweep_metrics(summary, config)
    assert metrics["runs"][0]["principal_cos2_final"] is None  # JSON has no NaN
    assert metrics["parameters"] == config.model_dump()
    assert metrics["theory_matrix"].startswith("the exact matrix X~ of the dot-product loss")
    assert "covariance of raw z (np.cov)" in metrics["observed_collapsed"]
    cosine = noise_sweep_metrics(summary, StrongAugmentationConfig())
    assert cosine["theory_matrix"].startswith("Eq. 6's X on L2-normalised z")
    assert noise_sweep_lines(metrics) == [
        "toy_strong_augmentation: noise 0.01 -> collapsed 0 of 16 (X predicts 0 at the start, 0 "
        "at the end; cos^2 None); noisy/clean weight ratio 1",
        "toy_strong_augmentation: noise 1.50 -> collapsed 8 of 16 (X predicts 6 at the start, 8 "
        "at the end; cos^2 0.75); noisy/clean weight ratio 0.0123",
    ]


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


@pytest.mark.parametrize(
    ("model", "bad"),
    [(StrongAugmentationConfig, {"noisy_dims": 16}),
     (StrongAugmentationConfig, {"noise_levels": [-1.0]}),
     (StrongAugmentationConfig, {"probe_size": 64, "batch_size": 128}),
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
