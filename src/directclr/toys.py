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
   there, the theory's matrix X (Lemma 2, :mod:`directclr.toy_theory`) has negative
   eigenvalues and W's singular values along them decay: the embedding collapses.
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

from directclr import toy_theory
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
    theory_every: int = Field(
        500, ge=1, description="steps between estimates of the theory's matrices (and the last)"
    )
    theory_batches: int = Field(
        128, ge=4, description="fresh batches each estimate averages (half choose, half measure)"
    )
    significance: float = Field(
        3.0, gt=0, description="an eigenvalue is negative below -significance standard errors"
    )

    @model_validator(mode="after")
    def _check(self) -> StrongAugmentationConfig:
        if self.noisy_dims >= self.dim:
            raise ValueError(f"noisy_dims={self.noisy_dims} must be below dim={self.dim}")
        if min(self.noise_levels) < 0:
            raise ValueError(f"noise_levels must be >= 0, got {self.noise_levels}")
        if self.theory_every % self.record_every:
            raise ValueError(
                f"theory_every={self.theory_every} must be a multiple of record_every="
                f"{self.record_every}: the theory is estimated at recordings"
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


def spectrum_note(config: ToyTraining) -> str:
    """What a toy's embedding spectrum is, in a figure's small print: which covariance, on
    which probe."""
    which = (
        "np.cov of raw z (centred, divided by N - 1)"
        if config.spectrum == "raw"
        else "the covariance of L2-normalised z"
    )
    probe = (
        f"{config.probe_size} fresh clean inputs at every recording"
        if config.probe_fresh
        else f"a fixed probe of {config.probe_size} clean inputs"
    )
    return f"eigenvalues of {which} on {probe}"


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


def _probe_generator(config: ToyTraining) -> torch.Generator:
    """The probe batch's own random stream, so that training draws do not depend on it."""
    return torch.Generator().manual_seed(config.seed + 2**32)


def _theory_generator(config: ToyTraining) -> torch.Generator:
    """The theory's batches' own random stream: estimating X changes no other draw."""
    return torch.Generator().manual_seed(config.seed + 2**33)


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


# The two matrices the strong-augmentation toy estimates: Lemma 2's X of the paper, and the
# exact matrix of the loss the toy trains (only the dot-product loss has one).
PAPER, TRAINED = "X", "X~"
# Each matrix's suffix in the tables' columns (negative_x, overlap_trained, ...).
COLUMN_KEYS = {PAPER: "x", TRAINED: "trained"}


class _Theory:
    """The theory's matrices for one noise level, estimated on ``theory_batches`` fresh
    batches of the training batch size (:func:`directclr.toy_theory.held_out_spectrum`),
    and the negative eigenspaces found at initialisation."""

    def __init__(self, config: StrongAugmentationConfig, amplitude: torch.Tensor) -> None:
        self.config, self.amplitude = config, amplitude
        self.generator = _theory_generator(config)
        self.initial: dict[str, np.ndarray] = {}

    def matrices(self) -> list[str]:
        return [PAPER, TRAINED] if self.config.loss == "dot_product" else [PAPER]

    def estimate(
        self, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> dict[str, toy_theory.HeldOutSpectrum]:
        config = self.config
        x = torch.randn(
            config.theory_batches, config.batch_size, config.dim, generator=self.generator
        )
        view1, view2 = two_views(x, self.amplitude, self.generator)
        per_batch = {PAPER: toy_theory.paper_matrix(weight, view1, view2, config.temperature)}
        if TRAINED in self.matrices():
            per_batch[TRAINED] = toy_theory.trained_loss_matrix(
                weight, view1, view2, config.temperature, bias
            )
        spectra = {
            name: toy_theory.held_out_spectrum(matrices / config.batch_size)
            for name, matrices in per_batch.items()
        }
        self.means = {name: matrices.mean(0).numpy() for name, matrices in per_batch.items()}
        if not self.initial:
            self.initial = {
                name: spectrum.negative_vectors(config.significance)
                for name, spectrum in spectra.items()
            }
        return spectra

    def cosine(self) -> float | None:
        """Cosine between the latest means of X~ (its x block) and X, or None without X~."""
        if TRAINED not in self.means:
            return None
        d = self.config.dim
        trained, paper = self.means[TRAINED][:d, :d], self.means[PAPER]
        return float((trained * paper).sum() / (np.linalg.norm(trained) * np.linalg.norm(paper)))


def _observed_directions(
    weight: torch.Tensor, bias: torch.Tensor | None, theory: _Theory
) -> dict[str, np.ndarray]:
    """For each matrix the theory estimates, the right singular basis (rows) of what it acts
    on and which of those directions have collapsed: W's for X, and for X~ all d + 1 of
    W~ = [W | b] (the null vector of a wide W~ included)."""
    observed = {}
    for name in theory.matrices():
        matrix = weight if name == PAPER else toy_theory.augmented_weight(weight, bias)
        squared, vh = toy_theory.right_singular_basis(matrix)
        observed[name] = (vh, collapsed_directions(squared, theory.config))
    return observed


def _prediction_row(theory: _Theory, observed: dict) -> dict[str, float]:
    """How the negative eigenspaces at initialisation overlap the directions of W (W~)
    collapsed now (:func:`_observed_directions`), and what random subspaces of the same
    sizes give."""
    row = {}
    for name, (basis, is_collapsed) in observed.items():
        key = COLUMN_KEYS[name]
        initial, collapsed = theory.initial[name], basis[is_collapsed].T
        row[f"collapsed_{key}_space"] = collapsed.shape[1]
        row[f"overlap_{key}"] = toy_theory.principal_cos2(initial, collapsed)
        row[f"chance_{key}"] = toy_theory.chance_cos2(
            initial.shape[1], collapsed.shape[1], len(basis)
        )
    return row


@one_cpu_thread()
def strong_augmentation_run(
    noise: float, config: StrongAugmentationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train one linear layer with noise ``noise`` on the last ``noisy_dims`` inputs.

    Returns the embedding spectrum over training (noise, step, index, eigenvalue); the
    theory's matrices every ``theory_every`` steps (noise, step, matrix, index, eigenvalue,
    standard_error, noisy_share: held-out estimates,
    :func:`directclr.toy_theory.held_out_spectrum`);
    predicted against observed collapse at every recording (noise, step, negative_x and
    negative_trained at the theory's steps, and for each matrix the size of the collapsed
    space of W or W~, the overlap of the initial negative eigenspace with it and the overlap
    random subspaces give); and a summary (:func:`noise_sweep_metrics` says what each entry
    means).
    """
    generator = torch.Generator().manual_seed(config.seed)
    d, clean = config.dim, config.dim - config.noisy_dims
    weight, bias = initial_layer(config, generator)
    amplitude = torch.zeros(d)
    amplitude[clean:] = noise
    probe_generator = _probe_generator(config)
    probe = _probe(config, probe_generator)
    theory = _Theory(config, amplitude)
    noisy = slice(clean, d)

    spectra, theory_rows, predictions, losses = [], [], [], []
    negative = {}
    for step, loss in train([weight], amplitude, config, generator, bias):
        if config.probe_fresh and step > 0:
            probe = _probe(config, probe_generator)
        with torch.no_grad():
            lam = toy_spectrum(embed(probe, [weight], bias), config)
        spectra += _spectrum_rows(lam, noise=noise, step=step)
        row = {"noise": noise, "step": step}
        if step % config.theory_every == 0 or step == config.steps:
            for name, estimate in theory.estimate(weight, bias).items():
                negative[name] = int(estimate.negative(config.significance).sum())
                row[f"negative_{COLUMN_KEYS[name]}"] = negative[name]
                theory_rows += [
                    {"noise": noise, "step": step, "matrix": name, "index": i + 1,
                     "eigenvalue": float(value), "standard_error": float(error),
                     "noisy_share": toy_theory.share_in(estimate.vectors[:, i : i + 1], noisy)}
                    for i, (value, error) in enumerate(
                        zip(estimate.values, estimate.standard_errors, strict=True)
                    )
                ]  # fmt: skip
        observed = _observed_directions(weight, bias, theory)
        predictions.append({**row, **_prediction_row(theory, observed)})
        losses.append(loss)
    prediction = pd.DataFrame(predictions)
    last = prediction.iloc[-1]
    trained = TRAINED in theory.matrices()
    predicted = {name: vectors.shape[1] for name, vectors in theory.initial.items()}
    w = weight.detach()
    summary = {
        "noise": noise,
        "predicted_collapsed": predicted[PAPER],
        "predicted_collapsed_trained_loss": predicted[TRAINED] if trained else None,
        "negative_x_noisy_share": toy_theory.share_in(theory.initial[PAPER], noisy),
        "observed_collapsed": observed_collapse(lam, config),
        "collapsed_w_final": int(last["collapsed_x_space"]),
        "collapsed_w_tilde_final": int(last["collapsed_trained_space"]) if trained else None,
        "overlap_x_final": _none_if_nan(last["overlap_x"]),
        "chance_x_final": _none_if_nan(last["chance_x"]),
        "overlap_trained_final": _none_if_nan(last["overlap_trained"]) if trained else None,
        "chance_trained_final": _none_if_nan(last["chance_trained"]) if trained else None,
        "negative_x_final": negative[PAPER],
        "negative_trained_final": negative[TRAINED] if trained else None,
        "cosine_trained_to_paper_final": theory.cosine(),
        "noisy_to_clean_weight_ratio": float(w[:, clean:].norm() / w[:, :clean].norm()),
        "effective_rank": effective_rank(lam),
        "smallest_to_largest_eigenvalue": float(lam[-1] / lam[0]) if lam[0] > 0 else None,
        "final_loss": losses[-1],
    }
    return pd.DataFrame(spectra), pd.DataFrame(theory_rows), prediction, summary


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
    summary), the settings, and what each entry means."""
    spectrum = "raw z (np.cov)" if config.spectrum == "raw" else "L2-normalised z"
    estimate = (
        f"estimated on {config.theory_batches} fresh batches of {config.batch_size} pairs: "
        "eigenvectors of the mean over half of them, each one's Rayleigh quotient averaged "
        f"over the other half; negative when below -{config.significance:g} standard errors"
    )
    meanings = {
        "x": "Lemma 2's X (the paper's Eq. 1 loss: squared-distance logits with the trained "
        f"tau={config.temperature:g}, negatives from the same branch); its -dL/dW = W X / tau",
        "predicted_collapsed": "significantly negative eigenvalues of X at initialisation, "
        + estimate,
        "negative_x_noisy_share": "mean share of those eigenvectors on the noisy inputs "
        f"(random directions: {config.noisy_dims / config.dim:g})",
        "observed_collapsed": f"eigenvalues of the covariance of {spectrum} on clean inputs, "
        "after training, numerically zero or below the deepest cliff of the log spectrum (a "
        f"drop of >= {config.cliff_decades} decades, steeper than i^-{config.cliff_slope})",
        "collapsed_w_final": "squared singular values of W collapsed by the same rule",
        "overlap_x_final": "mean cos^2 of the principal angles between X's negative "
        "eigenspace at initialisation and W's collapsed right singular directions at the end "
        "(None when either is empty); chance_x_final: what random subspaces of those sizes give",
        "negative_x_final": "significantly negative eigenvalues of X at the end",
    }
    if config.loss == "dot_product":
        meanings |= {
            "x~": "the exact matrix of the loss trained (dot-product logits, other-branch "
            "negatives, over [x; 1] with a bias): -dL/dW~ = W~ X~ / (N tau)",
            "predicted_collapsed_trained_loss": "significantly negative eigenvalues of X~ at "
            "initialisation, estimated the same way",
            "collapsed_w_tilde_final": "collapsed directions of W~ = [W | b], all d + 1 of "
            "them (a wide W~'s null vector counts as collapsed)",
            "overlap_trained_final": "as overlap_x_final, for X~ and W~",
            "cosine_trained_to_paper_final": "cosine between the means of X~ (its x block) and "
            "X at the end",
        }
    return {"runs": json_records(summary), "parameters": config.model_dump(), **meanings}


def prediction_note(config: StrongAugmentationConfig) -> str:
    """The collapse-prediction figure's small print: which matrices, how negative is
    decided, how collapse is observed."""
    trained = (
        "; X~: the exact matrix of the dot-product loss trained"
        if (config.loss == "dot_product")
        else ""
    )
    return (
        f"X: Lemma 2 (squared-distance logits, same-branch negatives, tau {config.temperature:g})"
        f"{trained}. Negative: held-out estimate below -{config.significance:g} SE over "
        f"{config.theory_batches} batches of {config.batch_size}. Collapsed: squared singular "
        "values zero or below the deepest cliff"
    )


def noise_sweep_lines(metrics: dict) -> list[str]:
    """One log line per noise level of :func:`noise_sweep_metrics`: collapse observed
    against predicted, and how much W still reads the noisy inputs."""
    dim = metrics["parameters"]["dim"]
    lines = []
    for run in metrics["runs"]:
        overlap = run["overlap_x_final"]
        overlap = (
            "n/a" if overlap is None else f"{overlap:.2f} (chance {run['chance_x_final']:.2f})"
        )
        lines.append(
            f"toy_strong_augmentation: noise {run['noise']:.2f} -> collapsed "
            f"{run['observed_collapsed']:d} of {dim:d}; Lemma 2's X predicts "
            f"{run['predicted_collapsed']:d} at the start, overlap with W's collapsed "
            f"directions {overlap}; noisy/clean weight ratio "
            f"{run['noisy_to_clean_weight_ratio']:.3g}"
        )
    return lines


def initial_weights(
    layers: int,
    dim: int,
    scale: float,
    decay: float,
    generator: torch.Generator,
    basis: str = "gaussian_qr",
    seed: int = 0,
) -> list[torch.Tensor]:
    """``layers`` matrices U diag(s) V^T, s_k = scale * decay^(k-1), U and V orthogonal,
    lowest layer first: from the QR of two Gaussian matrices drawn from ``generator``
    (``gaussian_qr``), or as the paper's case_2.py draws them (``uniform_svd``, with scale 1
    and decay exp(-0.35)): numpy's legacy stream seeded with ``seed``, one uniform matrix
    per layer, U and V^T from numpy's SVD of it."""
    if basis == "uniform_svd":
        stream = np.random.RandomState(seed)
        s = scale * decay ** np.arange(dim)
        weights = []
        for _ in range(layers):
            u, _, vh = np.linalg.svd(stream.random_sample((dim, dim)))
            weights.append(torch.from_numpy(u @ np.diag(s) @ vh).float())
        return weights
    s = scale * decay ** torch.arange(dim, dtype=torch.float32)
    weights = []
    for _ in range(layers):
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
        layers, config.dim, config.init_scale, config.init_decay, generator, config.init_basis,
        config.seed,
    )  # fmt: skip
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


def final_alignment(
    alignment: pd.DataFrame, summary: pd.DataFrame | None = None
) -> dict[str, np.ndarray]:
    """The alignment matrices |V_{l+1}^T U_l| of the last recorded step, one per depth and
    pair of adjacent layers, named ``"<layers> layers: |<pair>|"``; with the depth sweep's
    ``summary``, the name of each first pair also says where the rows of the collapsed
    directions peak (and which of them on the diagonal)."""
    collapsed = (
        {} if summary is None else dict(zip(summary["layers"], summary["collapsed"], strict=True))
    )
    last = alignment[alignment["step"] == alignment["step"].max()]
    matrices = {}
    for (layers, pair), run in last.groupby(["layers", "pair"]):
        matrix = run.pivot_table(index="row", columns="column", values="value").to_numpy()
        name = f"{layers} layers: |{pair}|"
        count = int(collapsed.get(layers, 0))
        if pair == "V2^T U1" and count:
            rows = np.arange(len(matrix) - count, len(matrix))
            peaks = matrix[rows].argmax(axis=1)
            diagonal = [str(row + 1) for row, peak in zip(rows, peaks, strict=True) if row == peak]
            name += (
                f"\ncollapsed rows {rows[0] + 1}-{rows[-1] + 1} peak at columns "
                f"{', '.join(str(peak + 1) for peak in peaks)}\n"
                f"on the diagonal: {', '.join(diagonal) or 'none'}"
            )
        matrices[name] = matrix
    return matrices
