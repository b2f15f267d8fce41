"""Collapse analysis: the paper's embedding spectrum and rank metrics.

Convention (the paper's): for vectors x_i, L2-normalise each row, centre, and take the
eigenvalues of C = 1/N sum (x - mean)(x - mean)^T, sorted in decreasing order. These are the
squared singular values of the centred, normalised matrix divided by N. Cost: one d x d
Gram product and one d x d eigendecomposition; nothing quadratic in N.
"""

from __future__ import annotations

import numpy as np
import torch


def covariance_spectrum(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of the covariance of the L2-normalised rows of ``x``."""
    x = torch.as_tensor(x).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a 2-d matrix with at least 2 rows, got shape {tuple(x.shape)}")
    x = torch.nn.functional.normalize(x, dim=1)
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / x.shape[0]
    eigenvalues = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)
    return eigenvalues.numpy()


def effective_rank(eigenvalues: np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)) with p the normalised singular values.

    ``eigenvalues`` are covariance eigenvalues; the singular values are their square roots.
    A matrix with k equal non-zero singular values has effective rank k.
    """
    sigma = np.sqrt(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None))
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def collapsed_dimensions(eigenvalues: np.ndarray, gap_decades: float = 4.0) -> int:
    """Number of eigenvalues more than ``gap_decades`` powers of ten below the largest."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size == 0 or lam.max() <= 0:
        return int(lam.size)
    threshold = lam.max() * 10.0 ** (-gap_decades)
    return int((lam < threshold).sum())


def log_spectrum(eigenvalues: np.ndarray, floor: float = 1e-30) -> np.ndarray:
    """log10 of the eigenvalues, with exact zeros shown at ``floor``."""
    return np.log10(np.maximum(np.asarray(eigenvalues, dtype=np.float64), floor))
