import numpy as np
import pytest
import torch

from directclr.analysis import NumericalError
from directclr.comparison import PAPER_COLUMN, comparison_row, to_markdown
from directclr.evaluation import (
    LinearEvalConfig,
    evaluate_embeddings,
    evaluation_summary,
    knn_accuracy,
    linear_probe,
)
from directclr.models import ModelConfig


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 10
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + spread * rng.standard_normal((len(y), dim))
    order = rng.permutation(len(y))
    return x[order], y[order]


def test_linearly_separable_features_are_probed_perfectly():
    x, y = _blobs(60, 5, 16, 0.5)
    result = linear_probe(x[:200], y[:200], x[200:], y[200:], C_grid=(0.1, 1.0))
    assert result.top1 == 1.0
    assert result.top5 is None  # only 5 classes
    assert result.confusion.trace() == len(y) - 200


def test_shuffled_labels_give_about_chance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1500, 20))
    y = rng.integers(0, 10, 1500)
    result = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], C_grid=(0.01,))
    assert 0.03 < result.top1 < 0.2


def test_c_is_chosen_on_the_validation_split_from_the_grid():
    # Few samples in many dimensions: strong regularisation wins on held-out data.
    x, y = _blobs(30, 3, 400, 30.0, seed=2)
    result = linear_probe(x[:60], y[:60], x[60:], y[60:], C_grid=(1e-4, 1e-3, 1e3))
    assert set(result.validation_top1) == {"0.0001", "0.001", "1000.0"}
    best = max(result.validation_top1.values())
    assert result.validation_top1[str(result.C)] == best
    assert result.C in (1e-4, 1e-3, 1e3)


def test_top5_is_reported_beyond_ten_classes():
    x, y = _blobs(20, 12, 8, 4.0, seed=3)
    result = linear_probe(x[:180], y[:180], x[180:], y[180:], C_grid=(1.0,))
    assert result.top5 is not None and result.top5 >= result.top1


def test_knn_votes_with_cosine_similarity():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = np.array([0, 0, 1, 1])
    test = np.array([[5.0, 0.2], [0.3, 4.0]])  # scale does not matter for cosine
    assert knn_accuracy(train, train_y, test, np.array([0, 1]), k=2) == 1.0
    assert knn_accuracy(train, train_y, test, np.array([1, 0]), k=2) == 0.0
    x, y = _blobs(50, 4, 10, 1.0)
    assert knn_accuracy(x[:150], y[:150], x[150:], y[150:], k=5) == 1.0


def _directclr_embeddings(d0: int = 4) -> dict:
    """r of 12 dimensions whose head r[:, :d0] separates 3 classes and whose tail is noise;
    z = r[:, :d0] as DirectCLR's."""
    x, y = _blobs(40, 3, d0, 1.0, seed=4)
    noise = np.random.default_rng(5).standard_normal((len(y), 12 - d0))
    r = torch.from_numpy(np.hstack([x, noise])).float()
    out = {}
    for split, rows in (("train", slice(0, 90)), ("test", slice(90, None))):
        out[f"{split}_r"], out[f"{split}_z"] = r[rows], r[rows, :d0].clone()
        out[f"{split}_labels"] = torch.from_numpy(y[rows])
    return out


def test_the_stage_probes_r_z_directclrs_two_parts_and_raw_pixels():
    embeddings = _directclr_embeddings()
    pixels = {f"{split}_images": (embeddings[f"{split}_r"] * 10 + 128).clamp(0, 255).byte()
              for split in ("train", "test")}  # fmt: skip
    spectrum = {"split": "train", "r_train": {"effective_rank": 5.0, "dimensions": 12},
                "z_train": {"effective_rank": 3.5, "dimensions": 4}}  # fmt: skip
    params = LinearEvalConfig(C_grid=[1.0], knn_k=5)
    config = ModelConfig(method="directclr", width=4, d0=4)
    metrics, confusion = evaluate_embeddings(embeddings, pixels, config, spectrum, params)
    probes = metrics["probes"]
    assert list(probes) == ["r", "z", "r[:d0]", "r[d0:]", "raw_pixels"]
    head = linear_probe(embeddings["train_r"][:, :4], embeddings["train_labels"],
                        embeddings["test_r"][:, :4], embeddings["test_labels"], (1.0,))  # fmt: skip
    assert probes["r[:d0]"]["top1"] == head.top1 == probes["z"]["top1"] == 1.0
    assert probes["r[d0:]"]["top1"] < 0.7  # the tail is noise: about chance
    assert metrics["linear_probe_accuracy_raw_pixels"] == probes["raw_pixels"]["top1"]
    assert (metrics["method"], metrics["d0"], metrics["representation_dim"]) == ("directclr", 4, 12)
    assert metrics["effective_rank_z"] == 3.5 and confusion.shape == (3, 3)
    line = evaluation_summary(metrics)
    assert ", r[:d0] 1.0000, r[d0:] " in line and line.endswith("of 12 (train split)")

    simclr = ModelConfig(method="simclr", width=4, projector_hidden_dim=8, projector_dim=4)
    params = LinearEvalConfig(C_grid=[1.0], knn_k=5, raw_pixels=False)
    metrics, _ = evaluate_embeddings(embeddings, pixels, simclr, spectrum, params)
    assert list(metrics["probes"]) == ["r", "z"] and metrics["d0"] is None
    assert metrics["linear_probe_accuracy_raw_pixels"] is None
    assert "r[:d0]" not in evaluation_summary(metrics)
    assert "raw pixels -;" in evaluation_summary(metrics)


def test_comparison_row_and_markdown():
    import pandas as pd

    linear_eval = {"method": "directclr", "d0": 16, "linear_probe_accuracy_r": 0.95,
                   "linear_probe_accuracy_z": 0.9, "knn_accuracy_r": 0.93}  # fmt: skip
    metrics = {"effective_rank": 10.0, "collapsed_dimensions": 3, "dimensions": 64,
               "structural_zeros": 0}  # fmt: skip
    history = pd.DataFrame({"seconds": [1.5, 2.5]})
    spectrum = {"split": "train", "r_train": metrics, "z_train": metrics}
    row = comparison_row("directclr", linear_eval, spectrum, history)
    assert row["training_seconds"] == pytest.approx(4.0)
    assert row[PAPER_COLUMN] == 62.7 and row["d0"] == 16
    simclr = comparison_row("simclr", {**linear_eval, "method": "simclr"},
                            spectrum, history)  # fmt: skip
    assert simclr["d0"] is None and simclr[PAPER_COLUMN] == 66.5
    text = to_markdown(pd.DataFrame([row, simclr]))
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert "| directclr | – | directclr | 16 | 0.95 |" in lines[2]  # run, seed, method, d0
    assert "| – |" in lines[3]


def test_probes_refuse_non_finite_features_naming_them_not_with_scikit_learns_advice():
    x, y = _blobs(30, 3, 8, 0.5)
    x[4, 2] = np.nan
    with pytest.raises(NumericalError, match=r"linear probe on z \(train split\) cannot be "
                       r"computed: 1 of the 60 vectors hold NaN.*lower lr"):  # fmt: skip
        linear_probe(x[:60], y[:60], x[60:], y[60:], C_grid=(1.0,), features="z")
    x[4, 2] = np.inf
    with pytest.raises(NumericalError, match=r"kNN accuracy \(train vectors\).*1 of the 60"):
        knn_accuracy(x[:60], y[:60], x[60:], y[60:], k=5)
