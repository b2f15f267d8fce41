import numpy as np
import pytest

from directclr.comparison import PAPER_COLUMN, comparison_row, to_markdown
from directclr.evaluation import knn_accuracy, linear_probe


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
