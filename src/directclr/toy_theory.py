"""The theory of the strong-augmentation toy: which directions a linear layer loses.

For a linear embedding z = W x trained by gradient descent on a contrastive loss, the
gradient can be written -dL/dW = W X / c for a symmetric matrix X built from the inputs (c a
positive constant). W's singular values then shrink along eigenvectors of X with negative
eigenvalues (Theorem 1 of Jing et al., 2022). Two such matrices are computed here, both in
float64 and batched over a leading dimension:

* :func:`paper_matrix`, the X of Lemma 2, for the loss the paper analyses (its Eq. 1):
  logits -|z_i - z_j|^2 / 2 tau, negatives z_j from the *same* branch as z_i, positives
  z'_i, no bias. With alpha_ij the softmax of row i over {z_j, j != i} and {z'_i},

      X = Sigma0 - Sigma1,
      Sigma0 = sum_i sum_{j != i} alpha_ij (x_i - x_j)(x_i - x_j)^T,
      Sigma1 = sum_i (1 - alpha_ii) (x'_i - x_i)(x'_i - x_i)^T,

  and -dL/dW = W X / tau exactly for L = sum_i -log alpha_ii. The paper writes it for
  tau = 1; the toys put their own tau in alpha, which keeps the identity exact.
* :func:`trained_loss_matrix`, the X~ of the loss the paper's toy script *trains*
  (dot-product logits z_i . z'_j / tau, negatives from the other branch, one direction, a
  bias): -dL/dW~ = W~ X~ / (N tau) with W~ = [W | b] acting on x~ = [x; 1]. Also exact.

The two matrices describe different losses, so they need not agree (their cosine is
reported). A prediction from either is only as good as its estimate: :func:`held_out_spectrum`
averages the matrix over many batches and counts an eigenvalue as negative only when it is
significantly so on batches its eigenvectors were not chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for batches of row vectors (..., N, d) x (..., M, d)."""
    return (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * a @ b.mT


def paper_matrix(
    weight: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Lemma 2's X for batches of pairs (x_i, x'_i): ``view1`` and ``view2`` are (..., N, d),
    the result (..., d, d), summed over i (not divided by N). A bias would cancel in every
    difference, so only W enters."""
    x, x_prime = view1.double(), view2.double()
    w = weight.detach().double()
    z, z_prime = x @ w.T, x_prime @ w.T
    logits = -_squared_distances(z, z) / (2 * temperature)
    positive = -((z - z_prime) ** 2).sum(-1) / (2 * temperature)
    logits.diagonal(dim1=-2, dim2=-1).copy_(positive)  # row i: {z_j, j != i} and z'_i
    alpha = torch.softmax(logits, dim=-1)
    alpha_ii = alpha.diagonal(dim1=-2, dim2=-1).clone()
    negatives = alpha
    negatives.diagonal(dim1=-2, dim2=-1).zero_()
    # sum_ij a_ij (x_i - x_j)(x_i - x_j)^T = sum_i (row_i + column_i) x_i x_i^T - X^T (A + A^T) X
    weights = negatives.sum(-1) + negatives.sum(-2)
    sigma0 = x.mT @ (weights[..., None] * x) - x.mT @ (negatives + negatives.mT) @ x
    difference = x_prime - x
    sigma1 = difference.mT @ ((1 - alpha_ii)[..., None] * difference)
    return sigma0 - sigma1


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """x~ = [x; 1] for a batch of row vectors (..., N, d)."""
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def augmented_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W~ = [W | b] in float64 (just W without a bias)."""
    w = weight.detach().double()
    return w if bias is None else torch.cat([w, bias.detach().double()[:, None]], dim=1)


def trained_loss_matrix(
    weight: torch.Tensor,
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """X~ of the paper's toy loss L = 1/N sum_i [-s_ii + log sum_j exp(s_ij)],
    s_ij = z_i . z'_j / tau, z = W~ x~, for batches (..., N, d); (..., D, D) with D = d + 1
    with a bias, else d.

    With A the rows x~_i of the first view, B those of the second and P_ij = softmax_j(s_ij),
    dL/dz_i = (sum_j P_ij z'_j - z'_i) / (N tau) and dL/dz'_j = (sum_i P_ij z_i - z_j) /
    (N tau), so -dL/dW~ = W~ X~ / (N tau) with X~ = B^T A + A^T B - B^T P^T A - A^T P B.
    """
    a, b = view1.double(), view2.double()
    if bias is not None:
        a, b = with_ones(a), with_ones(b)
    w = augmented_weight(weight, bias)
    p = torch.softmax((a @ w.T) @ (b @ w.T).mT / temperature, dim=-1)
    return b.mT @ a + a.mT @ b - b.mT @ p.mT @ a - a.mT @ p @ b


@dataclass(frozen=True)
class HeldOutSpectrum:
    """A matrix's eigen-directions estimated on some batches and measured on others.

    ``vectors`` (columns, ascending by ``values``) are the eigenvectors of the mean matrix
    over half of the batches; ``values`` and ``standard_errors`` are the mean and standard
    error of each direction's Rayleigh quotient v^T X_k v over the other half. Choosing the
    directions and measuring them on the same batches would bias the smallest values down
    (the lowest eigenvalue of a noisy mean sits below every true one)."""

    values: np.ndarray
    standard_errors: np.ndarray
    vectors: np.ndarray

    def negative(self, significance: float) -> np.ndarray:
        """Which directions are negative beyond ``significance`` standard errors."""
        return self.values < -significance * self.standard_errors

    def negative_vectors(self, significance: float) -> np.ndarray:
        return self.vectors[:, self.negative(significance)]


def held_out_spectrum(matrices: torch.Tensor) -> HeldOutSpectrum:
    """:class:`HeldOutSpectrum` of a stack of per-batch matrices (K, D, D), K >= 4: the
    directions from the even-numbered batches, their values from the odd-numbered ones."""
    if matrices.shape[0] < 4:
        raise ValueError(f"need at least 4 batches to estimate and test, got {matrices.shape[0]}")
    chosen, measured = matrices[0::2].mean(0), matrices[1::2]
    _, vectors = torch.linalg.eigh(chosen)
    quotients = torch.einsum("dm,kde,em->km", vectors, measured, vectors)
    values = quotients.mean(0)
    order = torch.argsort(values)
    errors = quotients.std(0) / len(measured) ** 0.5
    return HeldOutSpectrum(values[order].numpy(), errors[order].numpy(), vectors[:, order].numpy())


def principal_cos2(first: np.ndarray, second: np.ndarray) -> float:
    """Mean cos^2 of the principal angles between the column spans of two orthonormal
    bases: ||Q1^T Q2||_F^2 / min(k1, k2); 1 when one span contains the other, NaN when
    either is empty."""
    if first.shape[1] == 0 or second.shape[1] == 0:
        return float("nan")
    overlap = first.T @ second
    return float((overlap**2).sum() / min(first.shape[1], second.shape[1]))


def chance_cos2(first: int, second: int, dim: int) -> float:
    """The mean of :func:`principal_cos2` for uniformly random subspaces of dimensions
    ``first`` and ``second`` in R^dim: E||Q1^T Q2||_F^2 = k1 k2 / dim, so max(k1, k2) / dim
    (NaN when either is empty)."""
    if first == 0 or second == 0:
        return float("nan")
    return max(first, second) / dim


def right_singular_basis(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """All right singular vectors of a (possibly wide) matrix, as rows, with their squared
    singular values (zero for the null directions of a wide matrix: a 16 x 17 W~ has 17
    directions, the last one its null vector)."""
    _, sigma, vh = torch.linalg.svd(weight.detach().double(), full_matrices=True)
    squared = np.zeros(vh.shape[0])
    squared[: sigma.numel()] = sigma.numpy() ** 2
    return squared, vh.numpy()


def share_in(vectors: np.ndarray, coordinates: slice) -> float:
    """The mean share of the columns' squared norm that lies on ``coordinates`` (NaN when
    there are no columns)."""
    if vectors.shape[1] == 0:
        return float("nan")
    return float((vectors[coordinates] ** 2).sum(0).mean())
