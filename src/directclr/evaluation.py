"""Evaluation of frozen features: a scikit-learn linear probe and a cosine kNN classifier,
and the linear_eval stage's use of them on a model's exported vectors
(:func:`evaluate_embeddings`, settings :class:`LinearEvalConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from directclr.analysis import NUMERICAL_ADVICE, NumericalError, require_finite
from directclr.data import materialize
from directclr.models import ModelConfig
from directclr.projectors import HEAD, TAIL, leading_parts
from directclr.threads import one_blas_thread


class LinearEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    C_grid: list[float] = Field(
        [0.01, 0.1, 1.0], min_length=1, description="inverse regularisation strengths to try"
    )
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    max_iter: int = Field(1000, ge=1)
    tol: float = Field(1e-4, gt=0)
    seed: int = 0
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    raw_pixels: bool = Field(True, description="also probe raw pixels, the no-pretraining floor")

    def model_post_init(self, __context) -> None:
        if any(c <= 0 for c in self.C_grid):
            raise ValueError(f"C_grid values must be positive, got {self.C_grid}")


@dataclass
class ProbeResult:
    """What a linear probe scored, and with which regularisation."""

    top1: float
    top5: float | None
    C: float
    validation_top1: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "C": self.C,
            "validation_top1": self.validation_top1,
        }


def _flat(x) -> np.ndarray:
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float32, copy=False)


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0),
    validation_fraction: float = 0.2,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int = 0,
    features: str = "the features",
) -> ProbeResult:
    """StandardScaler + multinomial LogisticRegression on frozen features.

    C is chosen from ``C_grid`` by top-1 on a stratified validation split of train (the
    smallest C among the best wins), then the probe is refit on all of train and scored on
    test: top-1, top-5 (when there are more than 10 classes) and the confusion matrix.
    The grid is walked from strong to weak regularisation, each fit starting from the
    previous solution (warm start), and the refit starts from the chosen one: the same
    optima, reached in far fewer L-BFGS iterations.

    Features that are not finite (``features`` names them), or so large that their
    standardisation is not, raise :class:`~directclr.analysis.NumericalError`, as does a
    LAPACK failure inside the solver.
    """
    train_x, test_x = _flat(train_x), _flat(test_x)
    what = f"the linear probe on {features}"
    require_finite(train_x, f"{what} (train split)")
    require_finite(test_x, f"{what} (test split)")
    # One BLAS thread: L-BFGS on a probe is memory-bound, and two threads were slower on 2
    # cores (27 s against 31 s for the grid on 40,000 x 2,048) and up to 40x slower on a
    # loaded machine, where OpenBLAS's waiting threads spin.
    try:
        with one_blas_thread():
            return _linear_probe(
                train_x, np.asarray(train_y), test_x, np.asarray(test_y), sorted(C_grid),
                validation_fraction, max_iter, tol, seed, what,
            )  # fmt: skip
    except np.linalg.LinAlgError as error:
        raise NumericalError(f"{what} failed in LAPACK ({error}); {NUMERICAL_ADVICE}") from error


def _standardised(scaler: StandardScaler, x: np.ndarray, what: str) -> np.ndarray:
    """``x`` standardised by ``scaler``; features too large for it (a variance that
    overflows) give NaN, refused here, naming ``what``."""
    z = scaler.transform(x)
    require_finite(z, f"{what} (standardised)")
    return z


def _linear_probe(train_x, train_y, test_x, test_y, grid, validation_fraction, max_iter, tol,
                  seed, what) -> ProbeResult:  # fmt: skip
    scores: dict[str, float] = {}
    model = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    start = None
    if len(grid) > 1:
        fit_idx, val_idx = train_test_split(
            np.arange(len(train_y)),
            test_size=validation_fraction,
            random_state=seed,
            stratify=train_y,
        )
        scaler = StandardScaler().fit(train_x[fit_idx])
        fit_z = _standardised(scaler, train_x[fit_idx], what)
        val_z = _standardised(scaler, train_x[val_idx], what)
        solutions = {}
        for C in grid:
            model.set_params(C=C).fit(fit_z, train_y[fit_idx])
            scores[str(C)] = float(model.score(val_z, train_y[val_idx]))
            solutions[C] = (model.coef_.copy(), model.intercept_.copy())
        best_C = max(grid, key=lambda c: (scores[str(c)], -c))
        start = solutions[best_C]
    else:
        best_C = grid[0]
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=best_C, max_iter=max_iter, tol=tol, warm_start=True)
    if start is not None and set(np.unique(train_y)) == set(np.unique(train_y[fit_idx])):
        model.coef_, model.intercept_ = start
    model.fit(_standardised(scaler, train_x, what), train_y)
    test_z = _standardised(scaler, test_x, what)
    predictions = model.predict(test_z)
    top5 = None
    if len(model.classes_) > 10:
        probabilities = model.predict_proba(test_z)
        best5 = model.classes_[np.argsort(-probabilities, axis=1)[:, :5]]
        top5 = float((best5 == test_y[:, None]).any(axis=1).mean())
    return ProbeResult(
        top1=float((predictions == test_y).mean()),
        top5=top5,
        C=float(best_C),
        validation_top1=scores,
        confusion=confusion_matrix(test_y, predictions, labels=model.classes_),
    )


def knn_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Top-1 of a weighted kNN vote on cosine similarity (Wu et al., 2018).

    Each test vector's k most similar training vectors vote for their label with weight
    exp(similarity / temperature). Works in chunks of test rows: memory O(chunk x N_train).
    Vectors that are not finite raise :class:`~directclr.analysis.NumericalError`.
    """
    train_x, test_x = _flat(train_x), _flat(test_x)
    require_finite(train_x, "the kNN accuracy (train vectors)")
    require_finite(test_x, "the kNN accuracy (test vectors)")
    train = F.normalize(torch.as_tensor(train_x).float(), dim=1)
    test = F.normalize(torch.as_tensor(test_x).float(), dim=1)
    train_y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    test_y = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    classes = int(max(train_y.max(), test_y.max())) + 1
    if k > len(train):
        raise ValueError(
            f"knn_k={k} is larger than the {len(train)} training vectors the kNN probe votes "
            f"with; set knn_k to at most {len(train)}"
        )
    correct = 0
    for start in range(0, len(test), chunk):
        similarity = test[start : start + chunk] @ train.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), classes)
        votes.scatter_add_(1, train_y[top_idx], torch.exp(top_sim / temperature))
        correct += int((votes.argmax(1) == test_y[start : start + chunk]).sum())
    return correct / len(test)


def evaluate_embeddings(
    embeddings: dict,
    dataset: dict,
    config: ModelConfig,
    spectrum_metrics: dict,
    params: LinearEvalConfig,
) -> tuple[dict, np.ndarray]:
    """The linear probe and kNN on r; the same probe on z, on the dataset's raw pixels (when
    ``params.raw_pixels``) and, for directclr, on each of r's two parts
    (:func:`~directclr.projectors.leading_parts`); with the effective ranks of the spectrum
    stage's split beside them. Returns the metrics and the confusion matrix of the probe
    on r on the test split."""
    split = spectrum_metrics["split"]
    train_y, test_y = embeddings["train_labels"].numpy(), embeddings["test_labels"].numpy()

    def probe(train_x, test_x, features: str) -> ProbeResult:
        return linear_probe(
            train_x, train_y, test_x, test_y, tuple(params.C_grid), params.validation_fraction,
            params.max_iter, params.tol, params.seed, features,
        )  # fmt: skip

    on_r = probe(embeddings["train_r"], embeddings["test_r"], "r")
    probes = {
        "r": on_r.as_dict(),
        "z": probe(embeddings["train_z"], embeddings["test_z"], "z").as_dict(),
    }
    # DirectCLR's two parts: the one the loss sees, and the rest, trained only through the
    # last block's identity path.
    train_parts = leading_parts(embeddings["train_r"], config.method, config.d0)
    test_parts = leading_parts(embeddings["test_r"], config.method, config.d0)
    for name, train_part in train_parts.items():
        probes[name] = probe(train_part, test_parts[name], name).as_dict()
    if params.raw_pixels:
        raw = probe(materialize(dataset, "train"), materialize(dataset, "test"), "raw pixels")
        probes["raw_pixels"] = raw.as_dict()
    knn = knn_accuracy(embeddings["train_r"], train_y, embeddings["test_r"], test_y,
                       params.knn_k, params.knn_temperature)  # fmt: skip
    metrics = {
        "method": config.method,
        "d0": config.d0,
        "linear_probe_accuracy_r": on_r.top1,
        "linear_probe_accuracy_z": probes["z"]["top1"],
        "linear_probe_accuracy_raw_pixels": probes.get("raw_pixels", {}).get("top1"),
        "knn_accuracy_r": knn,
        "spectrum_split": split,
        "effective_rank_r": spectrum_metrics[f"r_{split}"]["effective_rank"],
        "effective_rank_z": spectrum_metrics[f"z_{split}"]["effective_rank"],
        "representation_dim": spectrum_metrics[f"r_{split}"]["dimensions"],
        "embedding_dim": spectrum_metrics[f"z_{split}"]["dimensions"],
        "probes": probes,
        "probe": params.model_dump(),
    }
    return metrics, on_r.confusion


def evaluation_summary(metrics: dict) -> str:
    """One line on what :func:`evaluate_embeddings` measured, for the stage's log."""
    probes = metrics["probes"]
    parts = "".join(f", {name} {probes[name]['top1']:.4f}" for name in (HEAD, TAIL)
                    if name in probes)  # fmt: skip
    raw = metrics["linear_probe_accuracy_raw_pixels"]
    return (
        f"linear_eval: linear-probe test accuracy on r {metrics['linear_probe_accuracy_r']:.4f} "
        f"(z {probes['z']['top1']:.4f}{parts}, raw pixels {'-' if raw is None else f'{raw:.4f}'}; "
        f"kNN {metrics['knn_accuracy_r']:.4f}); effective rank of r "
        f"{metrics['effective_rank_r']:.1f} of {metrics['representation_dim']:d} "
        f"({metrics['spectrum_split']} split)"
    )
