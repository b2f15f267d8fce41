"""The paper's two mechanisms of dimensional collapse, each on a toy linear network.

Both toys train z = W_L ... W_1 x (+ b) on d-dimensional Gaussian data x ~ N(0, I) with plain
SGD. The two views of x are x + a * e1 and x + a * e2 with e1, e2 ~ N(0, I) and a
per-dimension noise amplitude a. Two settings of every choice exist, selected by the config
(the ``paper`` configuration environment selects the paper's scripts, toy_task/case_1.py and
case_2.py of facebookresearch/directclr, setting by setting):

* ``loss``: ``dot_product`` is the paper's toy loss, cross-entropy over the logits
  z1 . z2^T / tau of unnormalised z, one direction; ``cosine_symmetric`` is SimCLR's
  NT-Xent on L2-normalised z (:func:`directclr.losses.info_nce`).
* ``data_pool``: batches drawn without replacement from a fixed pool of samples (the
  paper's 10,000), or fresh samples every step (``null``).
* ``spectrum``: eigenvalues of the covariance of raw z (the paper's ``np.cov``) or of
  L2-normalised z (:func:`directclr.analysis.covariance_spectrum`), on a probe of clean
  inputs, fixed or drawn afresh at every recording (``probe_fresh``).

1. **Strong augmentation** (Sec. 4 of Jing et al., 2022): one layer, noise of amplitude
   ``noise`` on the last ``noisy_dims`` inputs. Once the noise outweighs the data variance
   there, the theory's matrix X (:func:`theory_matrix`) has negative eigenvalues and W's
   singular values along them decay: the embedding collapses.
2. **Implicit regularization** (Sec. 5): two or more layers initialised with small,
   decaying singular values and weak noise on every input. Adjacent layers align
   (|V_{l+1}^T U_l| tends to a permutation) and the small singular values of the product
   fall behind: more layers, more collapse, with no strong augmentation at all. The
   collapsed directions of the two layers read each other; when two collapsed singular
   values are close, their order (and so whether the pairing sits on the diagonal or is
   swapped) can change from seed to seed and over training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from directclr.analysis import (
    NumericalError,
    Spectrum,
    collapsed_dimensions,
    covariance_spectrum,
    effective_rank,
)
from directclr.losses import info_nce
from directclr.threads import one_cpu_thread


class ToyTraining(BaseModel):
    """What both toys share: data size, SGD, InfoNCE, how often to record, the seed."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(16, ge=2, description="input and embedding dimension")
    steps: int = Field(2000, ge=1, description="SGD steps per setting")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.1, gt=0, description="plain SGD learning rate")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    record_every: int = Field(50, ge=1, description="steps between spectrum recordings")
    probe_size: int = Field(1024, ge=2, description="clean inputs the spectrum is taken on")
    cliff_decades: float = Field(
        1.0, gt=0, description="collapsed: below a drop of this many decades between neighbours"
    )
    cliff_slope: float = Field(10.0, gt=0, description="... locally steeper than i^-cliff_slope")
    seed: int = 0
    loss: Literal["cosine_symmetric", "dot_product"] = Field(
        "cosine_symmetric",
        description="dot_product: the paper's toy loss (unnormalised z, one direction); "
        "cosine_symmetric: NT-Xent on L2-normalised z",
    )
    data_pool: int | None = Field(
        None, ge=2, description="draw batches from a fixed pool of this many samples; null: fresh"
    )
    spectrum: Literal["normalised", "raw"] = Field(
        "normalised", description="covariance of L2-normalised z, or of raw z (np.cov's)"
    )
    probe_fresh: bool = Field(False, description="draw the probe afresh at every recording")
    negative_eps: float = Field(
        1e-3, gt=0, description="X's eigenvalues below -eps * ||X|| predict collapse"
    )

    @model_validator(mode="after")
    def _check_pool(self) -> ToyTraining:
        if self.probe_size <= self.dim:
            raise ValueError(
                f"probe_size={self.probe_size} must exceed dim={self.dim}: fewer probe inputs "
                f"than dimensions leave structural zeros in the spectrum"
            )
        if self.data_pool is not None and self.data_pool < self.batch_size:
            raise ValueError(
                f"data_pool={self.data_pool} must hold at least batch_size={self.batch_size}"
            )
        return self


class StrongAugmentationConfig(ToyTraining):
    """One d x d linear layer; noise of each amplitude in ``noise_levels`` on the last
    ``noisy_dims`` input dimensions (the data variance is 1 in every dimension)."""

    noisy_dims: int = Field(8, ge=1, description="input dimensions the augmentation perturbs")
    noise_levels: list[float] = Field([0.01, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0], min_length=1)
    bias: bool = Field(False, description="the layer has a bias (the paper's nn.Linear does)")
    init: Literal["scaled_gaussian", "pytorch_default"] = Field(
        "scaled_gaussian",
        description="W ~ N(0, 1/d), or nn.Linear's default (uniform, bound 1/sqrt(d))",
    )

    @model_validator(mode="after")
    def _check(self) -> StrongAugmentationConfig:
        if self.noisy_dims >= self.dim:
            raise ValueError(f"noisy_dims={self.noisy_dims} must be below dim={self.dim}")
        if min(self.noise_levels) < 0:
            raise ValueError(f"noise_levels must be >= 0, got {self.noise_levels}")
        if self.probe_size < self.batch_size:
            raise ValueError(
                f"probe_size={self.probe_size} must be at least batch_size={self.batch_size}: "
                f"the theory's X is averaged over probe batches of the training batch size"
            )
        return self


class ImplicitRegularizationConfig(ToyTraining):
    """``layers`` d x d linear layers, each W = U diag(s) V^T with random orthogonal U, V
    and s_k = init_scale * init_decay^(k-1); weak noise of amplitude ``noise`` on every
    input dimension."""

    layers: list[int] = Field([1, 2, 3], min_length=1, description="depths to compare")
    init_scale: float = Field(0.1, gt=0, description="largest initial singular value")
    init_decay: float = Field(0.83, gt=0, le=1, description="ratio of consecutive ones")
    init_basis: Literal["gaussian_qr", "uniform_svd"] = Field(
        "gaussian_qr",
        description="U, V: QR of a Gaussian matrix, or the paper's SVD of a uniform one",
    )
    noise: float = Field(0.1, ge=0, description="weak augmentation on every input dimension")
    lr: float = Field(0.3, gt=0, description="plain SGD learning rate")

    @model_validator(mode="after")
    def _check(self) -> ImplicitRegularizationConfig:
        if min(self.layers) < 1 or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct depths >= 1, got {self.layers}")
        return self


def embed(
    x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """z = W_L ... W_1 x (+ b) for a batch of row vectors x."""
    for weight in weights:
        x = x @ weight.T
    return x if bias is None else x + bias


def toy_loss(z1: torch.Tensor, z2: torch.Tensor, config: ToyTraining) -> torch.Tensor:
    """The configured loss: the paper's toy cross-entropy over z1 . z2^T / tau (one
    direction, unnormalised), or NT-Xent on L2-normalised z."""
    if config.loss == "dot_product":
        logits = z1 @ z2.T / config.temperature
        return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))
    return info_nce(z1, z2, config.temperature)


def toy_spectrum(z: torch.Tensor, config: ToyTraining) -> np.ndarray:
    """Covariance eigenvalues (descending) of the probe's embeddings, as configured: of
    L2-normalised z, or of raw z with np.cov's convention (centred, divided by N - 1)."""
    if config.spectrum == "normalised":
        return covariance_spectrum(z)
    z = z.detach().double()
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (len(z) - 1)
    return np.clip(torch.linalg.eigvalsh(covariance).numpy()[::-1].copy(), 0.0, None)


# The toys train in float32; their spectra are computed in float64. What limits the smallest
# eigenvalue that can be told from zero is then the float32 rounding of the vectors (or
# weights) themselves: a relative error of eps32 in every entry adds about eps32^2 of the
# largest eigenvalue (squared singular value) in every direction, so the noise floor is
# lambda_max * d * eps32^2 (about 1e-14 of lambda_max), not float64's.
FLOAT32_SQUARED_EPS = float(np.finfo(np.float32).eps) ** 2


def _collapsed(values: np.ndarray, n_samples: int, config: ToyTraining) -> int:
    """How many of ``values`` (descending) have collapsed, by the project's one convention
    (:func:`directclr.analysis.collapsed_dimensions`): numerically zero, or below the
    deepest cliff of the log spectrum."""
    lam = np.asarray(values, dtype=np.float64)
    spectrum = Spectrum(lam, lam, n_samples, eps=FLOAT32_SQUARED_EPS)
    return collapsed_dimensions(spectrum, config.cliff_decades, config.cliff_slope)


def observed_collapse(eigenvalues: np.ndarray, config: ToyTraining) -> int:
    """Collapsed dimensions of an embedding spectrum taken on the probe (``probe_size`` >
    ``dim``, so the spectrum has no structural zeros)."""
    return _collapsed(eigenvalues, config.probe_size, config)


def collapsed_directions(squared: np.ndarray, config: ToyTraining) -> np.ndarray:
    """Which of ``squared`` (squared singular values, descending) have collapsed: the last
    ones, as many as :func:`_collapsed` counts."""
    collapsed = _collapsed(squared, squared.size + 1, config)
    return np.arange(squared.size) >= squared.size - collapsed


class _Data:
    """The toy's training inputs: fresh Gaussian samples every step, or batches drawn
    without replacement from a fixed pool (the paper's ``np.random.choice(..., False)``)."""

    def __init__(self, config: ToyTraining, generator: torch.Generator) -> None:
        self.config, self.generator = config, generator
        self.pool = (
            None
            if config.data_pool is None
            else torch.randn(config.data_pool, config.dim, generator=generator)
        )

    def batch(self) -> torch.Tensor:
        if self.pool is None:
            return torch.randn(self.config.batch_size, self.config.dim, generator=self.generator)
        rows = torch.randperm(len(self.pool), generator=self.generator)[: self.config.batch_size]
        return self.pool[rows]


def two_views(
    x: torch.Tensor, amplitude: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + a * e1 and x + a * e2 with e1, e2 ~ N(0, I) and per-dimension amplitude a."""
    e1 = torch.randn(x.shape, generator=generator)
    e2 = torch.randn(x.shape, generator=generator)
    return x + amplitude * e1, x + amplitude * e2


def train(
    weights: list[torch.Tensor],
    amplitude: torch.Tensor,
    config: ToyTraining,
    generator: torch.Generator,
    bias: torch.Tensor | None = None,
) -> Iterator[tuple[int, float]]:
    """Plain-SGD training of ``weights`` (and ``bias``) in place with the configured loss.

    Yields (step, mean loss since the last yield) before the first step (loss NaN), every
    ``record_every`` steps and after the last one, so the caller records what it needs.
    """
    parameters = weights + ([bias] if bias is not None else [])
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(parameters, lr=config.lr, weight_decay=0)
    data = _Data(config, generator)
    yield 0, float("nan")
    losses = []
    for step in range(1, config.steps + 1):
        view1, view2 = two_views(data.batch(), amplitude, generator)
        loss = toy_loss(embed(view1, weights, bias), embed(view2, weights, bias), config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if step % config.record_every == 0 or step == config.steps:
            mean_loss = float(torch.stack(losses).mean())
            _check_finite(parameters, mean_loss, step, config)
            yield step, mean_loss
            losses = []


def _check_finite(
    parameters: list[torch.Tensor], loss: float, step: int, config: ToyTraining
) -> None:
    """Stop a toy whose training diverged, before any eigendecomposition or SVD meets it."""
    if math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in parameters):
        return
    raise NumericalError(
        f"the toy's training diverged by step {step} (mean loss {loss:.3g}, lr {config.lr:.3g}): "
        f"its weights or loss are no longer finite, so their spectrum means nothing. Lower lr "
        f"(toy_strong_augmentation.lr or toy_implicit_regularization.lr) and run again"
    )


def theory_matrix(
    weight: torch.Tensor,
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float,
    normalise: bool = True,
    bias: torch.Tensor | None = None,
) -> np.ndarray:
    """The matrix X of Eq. 6 (Lemma 2 of Jing et al., 2022) on one batch, divided by its size.

    For a linear layer z = W x trained with InfoNCE, gradient flow gives dW/dt = W X with

        X = sum_i [ sum_{j != i} alpha_ij (x'_j - x_i)(x'_j - x_i)^T
                    - (1 - alpha_ii) (x'_i - x_i)(x'_i - x_i)^T ],
        alpha_ij = exp(-|z_i - z'_j|^2 / 2 tau) / sum_k exp(-|z_i - z'_k|^2 / 2 tau),

    x_i and x'_i the two views of sample i: the weighted covariance of negative pairs (data
    and augmentation) minus the weighted covariance of positive pairs (augmentation only).
    W's singular values along eigenvectors of X with negative eigenvalues decay
    exponentially (Theorem 1). The identity is exact for a loss whose logits are
    -|z_i - z'_j|^2 / 2 tau; for the toys' losses it is an approximation (see
    :func:`dot_product_theory_matrix` for the exact matrix of the paper's toy loss).
    ``normalise``: alpha from L2-normalised z (as the cosine loss sees them), else from raw
    z (with ``bias`` added; it cancels in the differences).
    """
    x1, x2 = view1.double(), view2.double()
    w = weight.detach().double()
    z1, z2 = x1 @ w.T, x2 @ w.T
    if bias is not None:
        z1, z2 = z1 + bias.detach().double(), z2 + bias.detach().double()
    if normalise:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    alpha = torch.softmax(-(torch.cdist(z1, z2) ** 2) / (2 * temperature), dim=1)
    negatives = alpha - torch.diag(alpha.diagonal())
    row, column = negatives.sum(dim=1), negatives.sum(dim=0)
    negative_pairs = (
        x2.T @ (column[:, None] * x2)
        - x2.T @ negatives.T @ x1
        - x1.T @ negatives @ x2
        + x1.T @ (row[:, None] * x1)
    )
    difference = x2 - x1
    positive_pairs = difference.T @ ((1 - alpha.diagonal())[:, None] * difference)
    return ((negative_pairs - positive_pairs) / len(x1)).numpy()


def _with_ones(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x~ = [x; 1] when the layer has a bias, else x."""
    return x if bias is None else torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def dot_product_theory_matrix(
    weight: torch.Tensor,
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float,
    bias: torch.Tensor | None = None,
) -> np.ndarray:
    """The exact matrix of the paper's toy loss, for one batch of N pairs.

    The loss is L = 1/N sum_i [ -s_ii + log sum_j exp(s_ij) ] with s_ij = z_i . z'_j / tau,
    z = W~ x~, W~ = [W | b] and x~ = [x; 1] (just W and x without a bias). With A the rows
    x~_i of the first view, B those of the second and P_ij = softmax_j(s_ij),

        dL/dz_i  = (sum_j P_ij z'_j - z'_i) / (N tau),
        dL/dz'_j = (sum_i P_ij z_i - z_j) / (N tau),

    and collecting dL/dW~ = sum_i dL/dz_i x~_i^T + sum_j dL/dz'_j x~'_j^T gives exactly

        -dL/dW~ = W~ X~ / (N tau),   X~ = B^T A + A^T B - B^T P^T A - A^T P B,

    symmetric, so gradient descent moves W~ by W~ X~: its singular values along
    eigenvectors of X~ with negative eigenvalues shrink. Returns X~ (float64, not divided).
    """
    a = _with_ones(view1.double(), bias)
    b = _with_ones(view2.double(), bias)
    w = weight.detach().double()
    if bias is not None:
        w = torch.cat([w, bias.detach().double()[:, None]], dim=1)
    p = torch.softmax((a @ w.T) @ (b @ w.T).T / temperature, dim=1)
    return (b.T @ a + a.T @ b - b.T @ p.T @ a - a.T @ p @ b).numpy()


def training_matrix(
    weight: torch.Tensor,
    view1: torch.Tensor,
    view2: torch.Tensor,
    config: ToyTraining,
    bias: torch.Tensor | None = None,
) -> np.ndarray:
    """The theory's matrix for the loss the toy trains, per pair: exact for ``dot_product``
    (:func:`dot_product_theory_matrix` / N, over [x; 1] with a bias), Eq. 6's approximation
    for ``cosine_symmetric`` (:func:`theory_matrix` on normalised z)."""
    if config.loss == "dot_product":
        x = dot_product_theory_matrix(weight, view1, view2, config.temperature, bias)
        return x / len(view1)
    return theory_matrix(weight, view1, view2, config.temperature, normalise=True, bias=bias)


def _mean_over_batches(function, view1: torch.Tensor, view2: torch.Tensor, size: int):
    """``function(a, b)`` averaged over the probe views cut into batches of ``size``."""
    batches = max(1, len(view1) // size)
    return np.mean(
        [
            function(a, b)
            for a, b in zip(
                view1[: batches * size].split(size), view2[: batches * size].split(size),
                strict=True,
            )
        ],
        axis=0,
    )  # fmt: skip


def principal_cos2(first: np.ndarray, second: np.ndarray) -> float:
    """Mean cos^2 of the principal angles between the column spans of two orthonormal
    bases: ||Q1^T Q2||_F^2 / min(k1, k2); 1 when one span contains the other, NaN when
    either is empty."""
    if first.shape[1] == 0 or second.shape[1] == 0:
        return float("nan")
    overlap = first.T @ second
    return float((overlap**2).sum() / min(first.shape[1], second.shape[1]))


def collapse_prediction(
    matrix: np.ndarray, weight: torch.Tensor, config: ToyTraining, bias: torch.Tensor | None
) -> dict[str, float | int]:
    """Predicted against observed collapse at one moment of training.

    Predicted: the eigenvectors of the theory's matrix with an eigenvalue below
    -``negative_eps`` times its largest absolute eigenvalue. Observed: the right singular
    vectors of W (W~ = [W | b] with a bias) whose squared singular value has collapsed
    (:func:`collapsed_directions`). ``principal_cos2`` compares the two subspaces
    (:func:`principal_cos2`)."""
    values, vectors = np.linalg.eigh(matrix)
    scale = np.abs(values).max() if values.size else 0.0
    negative = vectors[:, values < -config.negative_eps * scale]
    w = weight.detach().double()
    if bias is not None and matrix.shape[0] == w.shape[1] + 1:  # the matrix covers [x; 1]
        w = torch.cat([w, bias.detach().double()[:, None]], dim=1)
    _, sigma, vh = torch.linalg.svd(w, full_matrices=False)
    sigma, vh = sigma.numpy(), vh.numpy()
    collapsed = vh[collapsed_directions(sigma**2, config)].T
    return {
        "negative_eigenvalues": int(negative.shape[1]),
        "collapsed_singular_values": int(collapsed.shape[1]),
        "principal_cos2": principal_cos2(negative, collapsed),
    }


def _probe_generator(config: ToyTraining) -> torch.Generator:
    """The probe batch's own random stream, so that training draws do not depend on it."""
    return torch.Generator().manual_seed(config.seed + 2**32)


def json_records(table: pd.DataFrame) -> list[dict]:
    """Rows of a summary table as dicts, missing values as None (JSON has no NaN)."""
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def _spectrum_rows(lam: np.ndarray, **keys) -> list[dict]:
    return [{**keys, "index": i + 1, "eigenvalue": float(v)} for i, v in enumerate(lam)]


def _probe(config: ToyTraining, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(config.probe_size, config.dim, generator=generator)


def initial_layer(
    config: StrongAugmentationConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one layer's W (and b, with ``bias``): N(0, 1/d) entries, or nn.Linear's default
    uniform(-1/sqrt(d), 1/sqrt(d)) for both W and b."""
    d = config.dim
    if config.init == "pytorch_default":
        bound = 1 / d**0.5
        weight = (torch.rand(d, d, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(d, generator=generator) * 2 - 1) * bound if config.bias else None
        return weight, bias
    weight = torch.randn(d, d, generator=generator) / d**0.5
    return weight, torch.zeros(d) if config.bias else None


@one_cpu_thread()
def strong_augmentation_run(
    noise: float, config: StrongAugmentationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train one linear layer with noise ``noise`` on the last ``noisy_dims`` inputs.

    Returns the embedding spectrum over training (noise, step, index, eigenvalue), the
    eigenvalues of the theory's matrix for the loss trained over training (same columns;
    :func:`training_matrix`), predicted against observed collapse at every recording
    (:func:`collapse_prediction`: noise, step, negative_eigenvalues,
    collapsed_singular_values, principal_cos2), and a summary: collapse predicted at
    initialisation and at the end against the collapse observed at the end, how much of W
    acts on the noisy half of the input (||W[:, noisy]||_F / ||W[:, clean]||_F) and, for the
    paper's dot-product loss, the cosine between its exact matrix and Eq. 6's X.
    """
    generator = torch.Generator().manual_seed(config.seed)
    d, clean = config.dim, config.dim - config.noisy_dims
    weight, bias = initial_layer(config, generator)
    amplitude = torch.zeros(d)
    amplitude[clean:] = noise
    probe_generator = _probe_generator(config)
    probe = _probe(config, probe_generator)

    spectra, theory, predictions, losses = [], [], [], []
    for step, loss in train([weight], amplitude, config, generator, bias):
        if config.probe_fresh and step > 0:
            probe = _probe(config, probe_generator)
        probe1, probe2 = two_views(probe, amplitude, probe_generator)
        with torch.no_grad():
            lam = toy_spectrum(embed(probe, [weight], bias), config)
        matrix = _mean_over_batches(
            lambda a, b: training_matrix(weight, a, b, config, bias),
            probe1, probe2, config.batch_size,
        )  # fmt: skip
        spectra += _spectrum_rows(lam, noise=noise, step=step)
        theory += _spectrum_rows(np.linalg.eigvalsh(matrix)[::-1], noise=noise, step=step)
        predictions.append(
            {"noise": noise, "step": step, **collapse_prediction(matrix, weight, config, bias)}
        )
        losses.append(loss)
    spectra, theory = pd.DataFrame(spectra), pd.DataFrame(theory)
    prediction = pd.DataFrame(predictions)
    w = weight.detach()
    cosine = None
    if config.loss == "dot_product":
        exact = _mean_over_batches(
            lambda a, b: dot_product_theory_matrix(weight, a, b, config.temperature, bias)[:d, :d],
            probe1, probe2, config.batch_size,
        )  # fmt: skip
        eq6 = _mean_over_batches(
            lambda a, b: theory_matrix(weight, a, b, config.temperature, False, bias),
            probe1, probe2, config.batch_size,
        )  # fmt: skip
        cosine = float((exact * eq6).sum() / (np.linalg.norm(exact) * np.linalg.norm(eq6)))
    summary = {
        "noise": noise,
        "predicted_collapsed": int(prediction["negative_eigenvalues"].iloc[0]),
        "observed_collapsed": observed_collapse(lam, config),
        "negative_x_eigenvalues_final": int(prediction["negative_eigenvalues"].iloc[-1]),
        "collapsed_singular_values_final": int(prediction["collapsed_singular_values"].iloc[-1]),
        "principal_cos2_final": _none_if_nan(prediction["principal_cos2"].iloc[-1]),
        "cosine_exact_to_eq6_final": cosine,
        "noisy_to_clean_weight_ratio": float(w[:, clean:].norm() / w[:, :clean].norm()),
        "effective_rank": effective_rank(lam),
        "smallest_to_largest_eigenvalue": float(lam[-1] / lam[0]) if lam[0] > 0 else None,
        "final_loss": losses[-1],
    }
    return spectra, theory, prediction, summary


def _none_if_nan(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def noise_sweep(
    config: StrongAugmentationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`strong_augmentation_run` for every noise level: spectra, theory spectra,
    predicted against observed collapse over training, and the summary."""
    runs = [strong_augmentation_run(noise, config) for noise in config.noise_levels]
    spectra, theory, predictions, summaries = zip(*runs, strict=True)
    return (
        pd.concat(spectra, ignore_index=True),
        pd.concat(theory, ignore_index=True),
        pd.concat(predictions, ignore_index=True),
        pd.DataFrame(summaries),
    )


def noise_sweep_metrics(summary: pd.DataFrame, config: StrongAugmentationConfig) -> dict:
    """The noise sweep's metrics file: one record per noise level (:func:`noise_sweep`'s
    summary), the settings, and what each count means: which matrix predicts collapse, which
    rule observes it, what the principal angles compare."""
    matrix = (
        "the exact matrix X~ of the dot-product loss trained (-dL/dW~ = W~ X~ / (N tau))"
        if config.loss == "dot_product"
        else "Eq. 6's X on L2-normalised z (an approximation for the cosine loss trained)"
    )
    spectrum = "raw z (np.cov)" if config.spectrum == "raw" else "L2-normalised z"
    return {
        "runs": json_records(summary),
        "parameters": config.model_dump(),
        "theory_matrix": matrix,
        "predicted_collapsed": f"eigenvalues of {matrix} below -{config.negative_eps} times its "
        "largest absolute eigenvalue",
        "observed_collapsed": f"eigenvalues of the covariance of {spectrum} on clean inputs, "
        "after training, numerically zero or below the deepest cliff of the log spectrum (a "
        f"drop of >= {config.cliff_decades} decades, steeper than i^-{config.cliff_slope})",
        "principal_cos2": "mean cos^2 of the principal angles between the predicted "
        "eigenvectors and W's right singular vectors whose squared singular value collapsed "
        "by the same rule (NaN/None when either set is empty)",
    }


def noise_sweep_lines(metrics: dict) -> list[str]:
    """One log line per noise level of :func:`noise_sweep_metrics`: collapse observed
    against predicted, and how much W still reads the noisy inputs."""
    dim = metrics["parameters"]["dim"]
    return [
        f"toy_strong_augmentation: noise {run['noise']:.2f} -> collapsed "
        f"{run['observed_collapsed']:d} of {dim:d} (X predicts {run['predicted_collapsed']:d} "
        f"at the start, {run['negative_x_eigenvalues_final']:d} at the end; cos^2 "
        f"{run['principal_cos2_final']}); noisy/clean weight ratio "
        f"{run['noisy_to_clean_weight_ratio']:.3g}"
        for run in metrics["runs"]
    ]


def initial_weights(
    layers: int,
    dim: int,
    scale: float,
    decay: float,
    generator: torch.Generator,
    basis: str = "gaussian_qr",
) -> list[torch.Tensor]:
    """``layers`` matrices U diag(s) V^T, s_k = scale * decay^(k-1), U and V orthogonal:
    from the QR of two Gaussian matrices (``gaussian_qr``), or the singular vectors of one
    uniform random matrix (``uniform_svd``, the paper's case_2.py, with scale 1 and decay
    exp(-0.35))."""
    s = scale * decay ** torch.arange(dim, dtype=torch.float32)
    weights = []
    for _ in range(layers):
        if basis == "uniform_svd":
            u, _, vh = torch.linalg.svd(
                torch.rand(dim, dim, generator=generator, dtype=torch.float64)
            )
            weights.append((u @ torch.diag(s.double()) @ vh).float())
            continue
        u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        weights.append(u @ torch.diag(s) @ v.T)
    return weights


def alignment_matrix(lower: torch.Tensor, upper: torch.Tensor) -> np.ndarray:
    """|V^T U| for lower = U S1 W^T and upper = Z S2 V^T (singular values descending).

    Entry (i, j) is |<v_i, u_j>|: how much the upper layer's i-th input direction reads the
    lower layer's j-th output direction. Aligned layers give a permutation matrix.
    """
    u = torch.linalg.svd(lower.detach().double())[0]
    v = torch.linalg.svd(upper.detach().double())[2].T
    return (v.T @ u).abs().numpy()


# The alignment table of the implicit-regularization toy: one row per matrix entry.
ALIGNMENT_COLUMNS = {
    "layers": "int64", "step": "int64", "pair": "object", "row": "int64", "column": "int64",
    "value": "float64",
}  # fmt: skip


@one_cpu_thread()
def implicit_regularization_run(
    layers: int, config: ImplicitRegularizationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train ``layers`` linear layers with weak augmentation from a small decaying init.

    Returns the embedding spectrum over training (layers, step, index, eigenvalue), every
    layer's singular values (layers, step, layer, index, singular_value), the alignment
    matrices |V_{l+1}^T U_l| of adjacent layers (layers, step, pair, row, column, value),
    and a summary: collapsed dimensions at initialisation and at the end, and of the rows of
    |V_2^T U_1| for the collapsed directions (the last ones, smallest singular values), how
    many have their largest entry on the diagonal and how many among the collapsed columns
    (the collapsed directions of the two layers read each other, in some order).
    """
    generator = torch.Generator().manual_seed(config.seed)
    weights = initial_weights(
        layers, config.dim, config.init_scale, config.init_decay, generator, config.init_basis
    )
    amplitude = torch.full((config.dim,), config.noise)
    probe_generator = _probe_generator(config)
    probe = _probe(config, probe_generator)

    spectra, singular_values, alignments, collapsed, losses = [], [], [], [], []
    for step, loss in train(weights, amplitude, config, generator):
        if config.probe_fresh and step > 0:
            probe = _probe(config, probe_generator)
        with torch.no_grad():
            lam = toy_spectrum(embed(probe, weights), config)
            spectra += _spectrum_rows(lam, layers=layers, step=step)
            for number, weight in enumerate(weights, start=1):
                sigma = torch.linalg.svdvals(weight.double())
                singular_values += [
                    {"layers": layers, "step": step, "layer": number, "index": i + 1,
                     "singular_value": float(value)}
                    for i, value in enumerate(sigma)
                ]  # fmt: skip
            for number in range(1, layers):
                matrix = alignment_matrix(weights[number - 1], weights[number])
                alignments += [
                    {"layers": layers, "step": step, "pair": f"V{number + 1}^T U{number}",
                     "row": i + 1, "column": j + 1, "value": float(matrix[i, j])}
                    for i in range(config.dim)
                    for j in range(config.dim)
                ]  # fmt: skip
        collapsed.append(observed_collapse(lam, config))
        losses.append(loss)

    on_diagonal = within_collapsed = None
    if layers >= 2 and collapsed[-1]:
        first = config.dim - collapsed[-1]
        best = alignment_matrix(weights[0], weights[1])[first:].argmax(axis=1)
        on_diagonal = int((best == np.arange(first, config.dim)).sum())
        within_collapsed = int((best >= first).sum())
    summary = {
        "layers": layers,
        "collapsed_at_init": collapsed[0],
        "collapsed": collapsed[-1],
        "collapsed_rows_aligned_on_diagonal": on_diagonal,
        "collapsed_rows_aligned_within_collapsed": within_collapsed,
        "effective_rank": effective_rank(lam),
        "smallest_to_largest_eigenvalue": float(lam[-1] / lam[0]),
        "final_loss": losses[-1],
    }
    return (
        pd.DataFrame(spectra),
        pd.DataFrame(singular_values),
        # Typed columns, so that one layer's empty table leaves the sweep's concatenation
        # numeric (with object columns the in-memory table would not plot).
        pd.DataFrame(alignments, columns=list(ALIGNMENT_COLUMNS)).astype(ALIGNMENT_COLUMNS),
        summary,
    )


def depth_sweep(
    config: ImplicitRegularizationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`implicit_regularization_run` for every depth: spectra, singular values,
    alignment matrices and the summary table."""
    runs = [implicit_regularization_run(layers, config) for layers in config.layers]
    spectra, singular_values, alignments, summaries = zip(*runs, strict=True)
    return (
        pd.concat(spectra, ignore_index=True),
        pd.concat(singular_values, ignore_index=True),
        pd.concat(alignments, ignore_index=True),
        pd.DataFrame(summaries).astype(
            {
                "collapsed_rows_aligned_on_diagonal": "Int64",
                "collapsed_rows_aligned_within_collapsed": "Int64",
            }
        ),
    )


def depth_sweep_metrics(summary: pd.DataFrame, config: ImplicitRegularizationConfig) -> dict:
    """The depth sweep's metrics file: one record per depth (:func:`depth_sweep`'s summary),
    the settings, and what each count means."""
    spectrum = "raw" if config.spectrum == "raw" else "L2-normalised"
    return {
        "runs": json_records(summary),
        "parameters": config.model_dump(),
        "collapsed": f"embedding eigenvalues (covariance of {spectrum} z, clean inputs) that "
        "are numerically zero or below the deepest cliff of the log spectrum (a drop of >= "
        f"{config.cliff_decades} decades, steeper than i^-{config.cliff_slope})",
        "collapsed_rows_aligned_on_diagonal": "of the rows of |V2^T U1| for the collapsed "
        "directions (the smallest singular values), how many have their largest entry on "
        "the diagonal",
        "collapsed_rows_aligned_within_collapsed": "... how many have it in a collapsed column",
    }


def depth_sweep_lines(metrics: dict) -> list[str]:
    """One log line per depth of :func:`depth_sweep_metrics`: collapse at the end and at
    initialisation."""
    dim = metrics["parameters"]["dim"]
    return [
        f"toy_implicit_regularization: {run['layers']:d} layer(s) -> collapsed "
        f"{run['collapsed']:d} of {dim:d} ({run['collapsed_at_init']:d} at init)"
        for run in metrics["runs"]
    ]


def final_alignment(alignment: pd.DataFrame) -> dict[str, np.ndarray]:
    """The alignment matrices |V_{l+1}^T U_l| of the last recorded step, one per depth and
    pair of adjacent layers, named ``"<layers> layers: |<pair>|"``."""
    last = alignment[alignment["step"] == alignment["step"].max()]
    return {
        f"{layers} layers: |{pair}|": run.pivot_table(
            index="row", columns="column", values="value"
        ).to_numpy()
        for (layers, pair), run in last.groupby(["layers", "pair"])
    }
