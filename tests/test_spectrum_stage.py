"""The spectrum stage (directclr.collapse, and its node) and figures, on embeddings with a
known structure."""

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import QuadMesh
from pydantic import ValidationError

from directclr.collapse import SpectrumConfig, measure_collapse, spectra_figure
from directclr.models import artifact_config
from directclr.pipelines.spectrum.nodes import compute_spectrum
from directclr.plots import alignment_figure, collapsed_vs_d0_figure, spectrum_history_figure

D0, DIM, TAIL_RANK = 8, 32, 3


def _embeddings(seed: int = 0) -> dict:
    """directclr-shaped embeddings: r is 32-d, z = r[:, :8] is full rank, and r[:, 8:] lives
    in a 3-d subspace, so 21 of its 24 dimensions are collapsed."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", 300), ("test", 200)):
        head = torch.randn(n, D0, generator=generator)
        tail = torch.randn(n, TAIL_RANK, generator=generator) @ torch.randn(
            TAIL_RANK, DIM - D0, generator=generator
        )
        r = torch.cat([head, tail], dim=1)
        out[f"{split}_r"], out[f"{split}_z"] = r, r[:, :D0].clone()
        out[f"{split}_labels"] = torch.zeros(n, dtype=torch.long)
    # LiDAR's views: 40 classes of 4 views with the same structure, under isotropic noise.
    head = torch.randn(40, 1, D0, generator=generator)
    tail = torch.randn(40, 1, TAIL_RANK, generator=generator) @ torch.randn(
        TAIL_RANK, DIM - D0, generator=generator
    )
    views = torch.cat([head, tail], dim=2) + 0.05 * torch.randn(40, 4, DIM, generator=generator)
    out["lidar_r"], out["lidar_z"] = views, views[..., :D0].clone()
    out["lidar_settings"] = {"split": "train", "samples": 40, "views": 4, "seed": 0,
                             "augmentation": {"strength": 1.0}}  # fmt: skip
    return out


def _history() -> pd.DataFrame:
    """What pretraining records: eigenvalues of r and z on a probe batch every few epochs."""
    rows = [
        {"epoch": epoch, "step": 10 * epoch, "vectors": vectors, "index": i,
         "eigenvalue": float(i ** -(1 + epoch / 4))}
        for epoch in (2, 4, 6)
        for vectors, dims in (("r", DIM), ("z", D0))
        for i in range(1, dims + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _model(method: str) -> dict:
    return {"config": {"method": method, "d0": D0}, "state_dict": {}}


def _measure(embeddings: dict, method: str, params: SpectrumConfig):
    """The eigenvalue table, the metrics and the figure of the spectra."""
    table, metrics = measure_collapse(embeddings, artifact_config(_model(method)), params)
    return table, metrics, spectra_figure(table, metrics)


@pytest.mark.parametrize("split", ["train", "test"])
def test_directclr_spectra_show_that_the_rest_of_the_representation_collapses(split):
    table, metrics, figure = _measure(_embeddings(), "directclr", SpectrumConfig(split=split))
    assert set(table["vectors"]) == {"r", "z", "r[:d0]", "r[d0:]"}
    assert set(table["split"]) == {split}  # one split, named by spectrum.split, everywhere
    assert metrics["split"] == split and not any(k.endswith("_val") for k in metrics)
    assert list(table.columns) == ["vectors", "split", "index", "eigenvalue", "log10_eigenvalue",
                                   "singular_value", "uncentred_eigenvalue"]  # fmt: skip
    tail = metrics[f"r[d0:]_{split}"]
    assert tail["dimensions"] == DIM - D0
    assert tail["collapsed_dimensions"] == DIM - D0 - TAIL_RANK
    assert metrics[f"r[:d0]_{split}"]["collapsed_dimensions"] == 0
    assert metrics[f"z_{split}"] == metrics[f"r[:d0]_{split}"]  # z is r[:, :d0]
    assert metrics[f"r_{split}"]["collapsed_dimensions"] == DIM - D0 - TAIL_RANK
    assert 1 < metrics[f"r_{split}"]["effective_rank"] < D0 + TAIL_RANK
    assert metrics["method"] == "directclr" and metrics["d0"] == D0
    assert "L2-normalised" in metrics["convention"] and "RankMe" in metrics["convention"]
    # LiDAR on the exported views, whatever the split: the tail's 3 discriminant directions.
    assert 2.5 < tail["lidar"] < 3.5 and tail["lidar_cap"] == DIM - D0
    assert (
        6 < metrics[f"r[:d0]_{split}"]["lidar"] <= D0 and metrics[f"r_{split}"]["lidar_cap"] == 32
    )
    # r's 11 directions: the tail's three, 24 times the head's variance, dominate (LiDAR's
    # entropy is of eigenvalues, not of singular values).
    assert TAIL_RANK < metrics[f"r_{split}"]["lidar"] < D0 + TAIL_RANK
    assert (metrics["lidar_samples"], metrics["lidar_views"]) == (40, 4)
    assert metrics["lidar_delta"] == 1e-4 and metrics["lidar_split"] == "train"
    assert "Sigma_w" in metrics["lidar_convention"]

    rows = table[table["vectors"] == "r"]
    n = len(_embeddings()[f"{split}_r"])
    np.testing.assert_allclose(rows["singular_value"], np.sqrt(n * rows["eigenvalue"]))

    lines = figure.axes[0].get_legend_handles_labels()[1]
    assert lines == ["r (32-d)", "z (8-d)", "r[:d0] (8-d)", "r[d0:] (24-d)"]
    assert not any(text.get_text() == " N - 1" for text in figure.axes[0].texts)
    assert figure.axes[0].get_title() == f"directclr: embedding spectrum ({split} split, N = {n})"


def test_the_node_measures_with_the_model_files_method_and_draws_both_figures():
    embeddings, params = _embeddings(), SpectrumConfig(split="test")
    table, metrics, figure, history_figure = compute_spectrum(
        embeddings, _model("directclr"), _history(), params
    )
    expected_table, expected_metrics, _ = _measure(embeddings, "directclr", params)
    pd.testing.assert_frame_equal(table, expected_table)
    assert metrics == expected_metrics and metrics["method"] == "directclr"
    assert figure.axes[0].get_legend_handles_labels()[1][-1] == "r[d0:] (24-d)"
    titles = [ax.get_title() for ax in history_figure.axes if ax.get_title()]
    assert titles == ["vectors r", "vectors z"]


def test_other_methods_get_r_and_z_only_and_the_configured_metrics():
    params = SpectrumConfig(split="test", power_law_range=(2, 6), top_k=3)
    embeddings = _embeddings()
    embeddings["test_r"], embeddings["test_z"] = (
        embeddings["test_r"][:20],
        embeddings["test_z"][:20],
    )
    table, metrics, figure = _measure(embeddings, "simclr", params)
    assert set(table["vectors"]) == {"r", "z"}
    assert set(metrics) >= {"r_test", "z_test"} and "r_train" not in metrics
    assert not any(key.startswith("r[") for key in metrics)
    assert metrics["r_test"]["power_law_ranks"] == [2, 6]
    assert metrics["r_test"]["top_k"] == 3
    assert metrics["power_law_range"] == [2, 6]
    # 20 test vectors span at most 19 of r's 32 dimensions: the figure marks where.
    assert metrics["r_test"]["max_rank"] == 19
    assert metrics["r_test"]["structural_zeros"] == 32 - 19
    # r lives in 8 + 3 dimensions: of the 19 twenty vectors can fill, 8 are collapsed; the
    # other 13 are structural zeros, not collapse.
    assert metrics["r_test"]["collapsed_dimensions"] == 19 - (D0 + TAIL_RANK)
    assert any(text.get_text() == " N - 1" for text in figure.axes[0].texts)
    assert TAIL_RANK < metrics["r_test"]["lidar"] < D0 + TAIL_RANK
    assert metrics["z_test"]["lidar_cap"] == D0 and metrics["z_test"]["lidar"] > 6


def test_embeddings_without_views_report_no_lidar():
    embeddings = {k: v for k, v in _embeddings().items() if not k.startswith("lidar_")}
    _, metrics, _ = _measure(embeddings, "directclr", SpectrumConfig())
    assert metrics["r_train"]["lidar"] is None and metrics["r[d0:]_train"]["lidar_cap"] is None
    assert metrics["lidar_samples"] is None and metrics["lidar_convention"] is None


def test_a_missing_split_names_the_splits_not_the_lidar_views():
    embeddings = {k: v for k, v in _embeddings().items() if not k.startswith("test_")}
    with pytest.raises(ValueError, match=r"they have train\)"):
        measure_collapse(
            embeddings, artifact_config(_model("simclr")), SpectrumConfig(split="test")
        )


@pytest.mark.parametrize(
    "bad",
    [{"power_law_range": [5, 2]}, {"power_law_range": [0, None]}, {"top_k": 0},
     {"cliff_decades": -1}, {"gap_decades": 4}, {"split": "unlabeled"}],
)  # fmt: skip
def test_bad_spectrum_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        SpectrumConfig.model_validate(bad)


def test_spectrum_history_heatmap_has_one_panel_per_vectors_with_index_by_epoch():
    history = _history()
    figure = spectrum_history_figure(history, "spectrum over training", time="epoch")
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["vectors r", "vectors z"]
    assert panels[0].get_xlabel() == "epoch"
    mesh = next(c for c in panels[1].collections if isinstance(c, QuadMesh))
    grid = np.asarray(mesh.get_array()).reshape(D0, 3)  # rows: index 1..8, columns: epochs
    expected = np.log10(np.arange(1, D0 + 1)[:, None] ** -(1 + np.array([2, 4, 6]) / 4))
    np.testing.assert_allclose(grid, expected)


def test_an_empty_spectrum_history_still_gives_a_figure():
    empty = pd.DataFrame(columns=["epoch", "step", "vectors", "index", "eigenvalue"])
    figure = spectrum_history_figure(empty, "spectrum over training")
    assert "no spectra" in figure.axes[0].texts[0].get_text()


def test_collapsed_against_d0_and_alignment_figures():
    runs = pd.DataFrame(
        {"d0": [64, 16, 32] * 2, "vectors": ["r"] * 3 + ["z"] * 3,
         "collapsed_dimensions": [100, 40, 70, 0, 1, 2]}
    )  # fmt: skip
    figure = collapsed_vs_d0_figure(runs, "collapse against d0")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "d0" and ax.get_ylabel() == "collapsed dimensions"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [16, 32, 64])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [40, 70, 100])

    figure = alignment_figure({"2 layers": np.eye(4), "3 layers": np.ones((4, 4)) / 2}, "align")
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["2 layers", "3 layers"]
    mesh = next(c for c in titled[0].collections if isinstance(c, QuadMesh))
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(4, 4), np.eye(4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without one")
def test_a_spectrum_asked_of_a_missing_gpu_is_refused_before_any_work():
    with pytest.raises(ValidationError, match="no CUDA GPU is present; use auto or cpu"):
        SpectrumConfig(device="cuda")
    from directclr.collapse import spectrum_device

    assert spectrum_device(SpectrumConfig().device) == torch.device("cpu")
