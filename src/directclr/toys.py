"""The paper's two mechanisms of dimensional collapse, each on a toy linear network.

Both toys train z = W_L ... W_1 x on d-dimensional Gaussian data x ~ N(0, I) with InfoNCE
(:func:`directclr.losses.info_nce`) and plain SGD. The two views of x are
x + a * e1 and x + a * e2 with e1, e2 ~ N(0, I) and a per-dimension noise amplitude a.
The embedding spectrum (covariance eigenvalues of the L2-normalised z of a fixed batch of
clean inputs, :func:`directclr.analysis.covariance_spectrum`) is recorded during training.

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

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from directclr.analysis import covariance_spectrum, dimensions_below, effective_rank
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
    gap_decades: float = Field(4.0, gt=0, description="collapsed: this many decades down")
    seed: int = 0


class StrongAugmentationConfig(ToyTraining):
    """One d x d linear layer; noise of each amplitude in ``noise_levels`` on the last
    ``noisy_dims`` input dimensions (the data variance is 1 in every dimension)."""

    noisy_dims: int = Field(8, ge=1, description="input dimensions the augmentation perturbs")
    noise_levels: list[float] = Field([0.01, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0], min_length=1)

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
    noise: float = Field(0.1, ge=0, description="weak augmentation on every input dimension")
    lr: float = Field(0.3, gt=0, description="plain SGD learning rate")

    @model_validator(mode="after")
    def _check(self) -> ImplicitRegularizationConfig:
        if min(self.layers) < 1 or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct depths >= 1, got {self.layers}")
        return self


def embed(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """z = W_L ... W_1 x for a batch of row vectors x."""
    for weight in weights:
        x = x @ weight.T
    return x


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
) -> Iterator[tuple[int, float]]:
    """Plain-SGD InfoNCE training of ``weights`` in place, on fresh Gaussian batches.

    Yields (step, mean loss since the last yield) before the first step (loss NaN), every
    ``record_every`` steps and after the last one, so the caller records what it needs.
    """
    for weight in weights:
        weight.requires_grad_(True)
    optimizer = torch.optim.SGD(weights, lr=config.lr)
    yield 0, float("nan")
    losses = []
    for step in range(1, config.steps + 1):
        x = torch.randn(config.batch_size, config.dim, generator=generator)
        view1, view2 = two_views(x, amplitude, generator)
        loss = info_nce(embed(view1, weights), embed(view2, weights), config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if step % config.record_every == 0 or step == config.steps:
            yield step, float(torch.stack(losses).mean())
            losses = []


def theory_matrix(
    weight: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, temperature: float
) -> np.ndarray:
    """The matrix X of Eq. 6 (Lemma 2 of Jing et al., 2022) on one batch, divided by its size.

    For a linear layer z = W x trained with InfoNCE, gradient flow gives dW/dt = W X with

        X = sum_i [ sum_{j != i} alpha_ij (x'_j - x_i)(x'_j - x_i)^T
                    - (1 - alpha_ii) (x'_i - x_i)(x'_i - x_i)^T ],
        alpha_ij = exp(-|z_i - z'_j|^2 / 2 tau) / sum_k exp(-|z_i - z'_k|^2 / 2 tau),

    x_i and x'_i the two views of sample i: the weighted covariance of negative pairs (data
    and augmentation) minus the weighted covariance of positive pairs (augmentation only).
    W's singular values along eigenvectors of X with negative eigenvalues decay
    exponentially (Theorem 1). Here z is L2-normalised as in the InfoNCE that trains the
    toy, so alpha is that loss's softmax over the other view; like the paper, X leaves out
    the Jacobian of the normalisation.
    """
    x1, x2 = view1.double(), view2.double()
    u1 = F.normalize(x1 @ weight.detach().double().T, dim=1)
    u2 = F.normalize(x2 @ weight.detach().double().T, dim=1)
    # -|u_i - u'_j|^2 / 2 tau = (u_i . u'_j - 1) / tau: the same softmax as u_i . u'_j / tau.
    alpha = torch.softmax(u1 @ u2.T / temperature, dim=1)
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


def _mean_theory_matrix(
    weight: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, config: ToyTraining
) -> np.ndarray:
    """X averaged over the probe split into batches of the training batch size."""
    batches = len(view1) // config.batch_size
    return np.mean(
        [
            theory_matrix(weight, a, b, config.temperature)
            for a, b in zip(
                view1[: batches * config.batch_size].split(config.batch_size),
                view2[: batches * config.batch_size].split(config.batch_size),
                strict=True,
            )
        ],
        axis=0,
    )


def _probe_generator(config: ToyTraining) -> torch.Generator:
    """The probe batch's own random stream, so that training draws do not depend on it."""
    return torch.Generator().manual_seed(config.seed + 2**32)


def json_records(table: pd.DataFrame) -> list[dict]:
    """Rows of a summary table as dicts, missing values as None (JSON has no NaN)."""
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def _spectrum_rows(lam: np.ndarray, **keys) -> list[dict]:
    return [{**keys, "index": i + 1, "eigenvalue": float(v)} for i, v in enumerate(lam)]


@one_cpu_thread()
def strong_augmentation_run(
    noise: float, config: StrongAugmentationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Train one linear layer with noise ``noise`` on the last ``noisy_dims`` inputs.

    Returns the embedding spectrum over training (noise, step, index, eigenvalue), the
    eigenvalues of the theory's X over training (same columns), and a summary: collapse
    predicted by X at initialisation (its negative eigenvalues) against the collapse
    observed at the end, and how much of W acts on the noisy half of the input,
    ||W[:, noisy]||_F / ||W[:, clean]||_F.
    """
    generator = torch.Generator().manual_seed(config.seed)
    d, clean = config.dim, config.dim - config.noisy_dims
    weight = torch.randn(d, d, generator=generator) / d**0.5
    amplitude = torch.zeros(d)
    amplitude[clean:] = noise
    probe_generator = _probe_generator(config)
    probe = torch.randn(config.probe_size, d, generator=probe_generator)
    probe1, probe2 = two_views(probe, amplitude, probe_generator)

    spectra, theory, losses = [], [], []
    for step, loss in train([weight], amplitude, config, generator):
        with torch.no_grad():
            lam = covariance_spectrum(embed(probe, [weight]))
        x_lam = np.linalg.eigvalsh(_mean_theory_matrix(weight, probe1, probe2, config))[::-1]
        spectra += _spectrum_rows(lam, noise=noise, step=step)
        theory += _spectrum_rows(x_lam, noise=noise, step=step)
        losses.append(loss)
    spectra, theory = pd.DataFrame(spectra), pd.DataFrame(theory)
    first, last = theory[theory["step"] == 0], theory[theory["step"] == config.steps]
    w = weight.detach()
    summary = {
        "noise": noise,
        "predicted_collapsed": int((first["eigenvalue"] < 0).sum()),
        "observed_collapsed": dimensions_below(lam, config.gap_decades),
        "negative_x_eigenvalues_final": int((last["eigenvalue"] < 0).sum()),
        "noisy_to_clean_weight_ratio": float(w[:, clean:].norm() / w[:, :clean].norm()),
        "effective_rank": effective_rank(lam),
        "smallest_to_largest_eigenvalue": float(lam[-1] / lam[0]),
        "final_loss": losses[-1],
    }
    return spectra, theory, summary


def noise_sweep(
    config: StrongAugmentationConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`strong_augmentation_run` for every noise level: spectra, X spectra, summary."""
    runs = [strong_augmentation_run(noise, config) for noise in config.noise_levels]
    spectra, theory, summaries = zip(*runs, strict=True)
    return (
        pd.concat(spectra, ignore_index=True),
        pd.concat(theory, ignore_index=True),
        pd.DataFrame(summaries),
    )


def initial_weights(
    layers: int, dim: int, scale: float, decay: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """``layers`` matrices U diag(s) V^T, s_k = scale * decay^(k-1), U and V random orthogonal."""
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
    weights = initial_weights(layers, config.dim, config.init_scale, config.init_decay, generator)
    amplitude = torch.full((config.dim,), config.noise)
    probe = torch.randn(config.probe_size, config.dim, generator=_probe_generator(config))

    spectra, singular_values, alignments, collapsed, losses = [], [], [], [], []
    for step, loss in train(weights, amplitude, config, generator):
        with torch.no_grad():
            lam = covariance_spectrum(embed(probe, weights))
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
        collapsed.append(dimensions_below(lam, config.gap_decades))
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
        pd.DataFrame(alignments, columns=["layers", "step", "pair", "row", "column", "value"]),
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
