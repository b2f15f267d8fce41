"""Collapse analysis: the paper's embedding spectrum and rank metrics.

Convention (the paper's): for vectors x_i, L2-normalise each row, centre, and take the
eigenvalues of C = 1/N sum (x - mean)(x - mean)^T, sorted in decreasing order. These are the
squared singular values of the centred, normalised matrix divided by N. Cost: one d x d
Gram product and two d x d eigendecompositions (centred and un-centred); nothing quadratic
in N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

CONVENTION = (
    "eigenvalues of the covariance C = 1/N sum (u - mean)(u - mean)^T of the L2-normalised "
    "vectors u, descending; singular values of the centred normalised matrix are sqrt(N * "
    "eigenvalue); effective rank (Roy & Vetterli) of those centred singular values; RankMe: "
    "the same entropy of the singular values of the un-centred normalised matrix"
)


@dataclass(frozen=True)
class Spectrum:
    """Both spectra of one set of N vectors, from a single Gram product.

    ``eigenvalues``: the paper's spectrum, eigenvalues of the covariance of the L2-normalised
    rows, descending. ``uncentred_eigenvalues``: eigenvalues of their second-moment matrix
    1/N sum u u^T (no centring), descending; RankMe is taken on these.
    """

    eigenvalues: np.ndarray
    uncentred_eigenvalues: np.ndarray
    n_samples: int

    @property
    def singular_values(self) -> np.ndarray:
        """Singular values of the centred normalised N x d matrix: sigma_i = sqrt(N lambda_i)."""
        return np.sqrt(self.n_samples * self.eigenvalues)

    @property
    def uncentred_singular_values(self) -> np.ndarray:
        """Singular values of the normalised N x d matrix itself (no centring)."""
        return np.sqrt(self.n_samples * self.uncentred_eigenvalues)

    def table(self) -> pd.DataFrame:
        """One row per rank i (1-based): the covariance eigenvalue, its log10 (zeros at
        1e-30), the centred singular value sqrt(N lambda_i) and the un-centred eigenvalue."""
        return pd.DataFrame(
            {
                "index": np.arange(1, self.eigenvalues.size + 1),
                "eigenvalue": self.eigenvalues,
                "log10_eigenvalue": log_spectrum(self.eigenvalues),
                "singular_value": self.singular_values,
                "uncentred_eigenvalue": self.uncentred_eigenvalues,
            }
        )


def embedding_spectrum(x: torch.Tensor | np.ndarray, chunk_rows: int | None = None) -> Spectrum:
    """The covariance and second-moment spectra of the L2-normalised rows of ``x``.

    One pass over ``x`` in chunks of ``chunk_rows`` rows (default: about 64 MB per chunk):
    each chunk is copied, its rows u_i are normalised and shifted by a fixed vector c (the
    mean direction of the first rows), and G = sum (u_i - c)(u_i - c)^T and
    s = sum (u_i - c) are accumulated. With m = s / N,

        covariance      C = G / N - m m^T
        second moment   M = G / N + c m^T + m c^T + c c^T

    so both come from the one Gram product; the shift keeps the subtraction in C from
    cancelling digits when the vectors share a large mean (ReLU representations do). The
    product runs in the dtype of ``x`` (float32 or float64; anything else as float32); G, C,
    M and their eigenvalues are float64. ``x`` is not modified and no normalised or centred
    copy of it is made. On CPU the product is a BLAS symmetric rank-k update (half the work
    of x.T @ x) and nothing runs on torch's thread pool; on an accelerator it is a matmul.
    """
    on_cpu = not (isinstance(x, torch.Tensor) and x.device.type != "cpu")
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if on_cpu and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
    if on_cpu:
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a 2-d matrix with at least 2 rows, got shape {tuple(x.shape)}")
    n, d = x.shape
    rows = chunk_rows or max(1, (1 << 24) // d)
    gram, total, shift = (_gram_numpy if on_cpu else _gram_torch)(x, rows)
    g, m = gram / n, total / n
    covariance = g - np.outer(m, m)
    second_moment = g + np.outer(shift, m) + np.outer(m, shift) + np.outer(shift, shift)
    return Spectrum(_eigenvalues(covariance), _eigenvalues(second_moment), int(n))


def _gram_numpy(x: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G, s and c of :func:`embedding_spectrum` with numpy and BLAS syrk (upper triangle)."""
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    head = x[:1024].astype(np.float64)
    shift = (head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)).mean(axis=0)
    syrk = blas.ssyrk if dtype == np.float32 else blas.dsyrk
    upper = np.zeros((x.shape[1], x.shape[1]), dtype=dtype, order="F")
    total = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], rows):
        chunk = np.array(x[start : start + rows], dtype=dtype, order="C")
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        chunk /= np.maximum(norms, 1e-12)[:, None]
        chunk -= shift.astype(dtype)
        # chunk.T is a Fortran-ordered d x rows view: syrk adds chunk^T chunk to ``upper``.
        upper = syrk(1.0, chunk.T, beta=1.0, c=upper, trans=0, lower=0, overwrite_c=1)
        total += chunk.sum(axis=0, dtype=np.float64)
    gram = np.triu(upper).astype(np.float64)
    return gram + np.triu(gram, 1).T, total, shift


def _gram_torch(x: torch.Tensor, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G, s and c of :func:`embedding_spectrum` with torch on ``x``'s device."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    shift = torch.nn.functional.normalize(x[:1024].double(), dim=1).mean(dim=0)
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows].to(dtype, copy=True)
        chunk /= torch.linalg.vector_norm(chunk, dim=1, keepdim=True).clamp_min(1e-12)
        chunk -= shift.to(dtype)
        gram += (chunk.T @ chunk).double()
        total += chunk.sum(dim=0, dtype=torch.float64)
    return gram.cpu().numpy(), total.cpu().numpy(), shift.cpu().numpy()


def _eigenvalues(symmetric: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric float64 matrix, descending, clamped at zero.

    LAPACK's divide and conquer on one BLAS thread: the reduction to tridiagonal form is
    memory-bound, and a second BLAS thread mostly fights torch's thread pool for the cores
    (measured: 0.6 s on one thread against 1.2-2.0 s on two for d = 2048).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        lam = scipy.linalg.eigh(
            symmetric, eigvals_only=True, driver="evd", check_finite=False, overwrite_a=True
        )
    return np.clip(lam[::-1], 0.0, None)


def covariance_spectrum(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of the covariance of the L2-normalised rows of ``x``.

    Computed in float64 whatever the dtype of ``x``; see :func:`embedding_spectrum`.
    """
    return embedding_spectrum(torch.as_tensor(x).double()).eigenvalues


def effective_rank(eigenvalues: np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)) with p the normalised singular values.

    ``eigenvalues`` are covariance eigenvalues; the singular values are their square roots.
    A matrix with k equal non-zero singular values has effective rank k. Given the
    eigenvalues of the un-centred second-moment matrix it is RankMe (Garrido et al., 2023).
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


def power_law_fit(
    eigenvalues: np.ndarray, first: int = 1, last: int | None = None
) -> tuple[float, float]:
    """Exponent alpha and R^2 of the power law lambda_i ~ i^-alpha over ranks first..last.

    Least squares of log lambda_i = b - alpha log i for the 1-based ranks i from ``first`` to
    ``last`` (inclusive; ``None`` or a rank past the end means the last one). Exact zeros
    have no logarithm and are left out. With fewer than two points left, both are NaN.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    stop = lam.size if last is None else min(last, lam.size)
    ranks = np.arange(first, stop + 1)
    values = lam[first - 1 : stop]
    keep = values > 0
    if keep.sum() < 2:
        return math.nan, math.nan
    log_i, log_lam = np.log(ranks[keep]), np.log(values[keep])
    slope, intercept = np.polyfit(log_i, log_lam, 1)
    residual = log_lam - (slope * log_i + intercept)
    spread = ((log_lam - log_lam.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / spread if spread > 0 else 1.0
    return float(-slope), float(r2)


def variance_share(eigenvalues: np.ndarray, k: int) -> float:
    """Share of the variance in the top ``k`` eigenvalues: sum_{i<=k} lambda_i / sum_i lambda_i."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    total = lam.sum()
    return float(lam[:k].sum() / total) if total > 0 else math.nan


def spectrum_metrics(
    spectrum: Spectrum,
    gap_decades: float = 4.0,
    power_law_range: tuple[int, int | None] = (1, None),
    top_k: int = 10,
) -> dict[str, float | int | list[int] | None]:
    """The collapse metrics of one spectrum.

    ``effective_rank`` is Roy & Vetterli's on the centred singular values, ``rankme`` the
    same on the un-centred ones; ``collapsed_dimensions`` counts eigenvalues more than
    ``gap_decades`` decades below the largest; ``power_law_alpha`` and ``power_law_r2`` fit
    lambda_i ~ i^-alpha over ``power_law_range`` (1-based ranks; an open end stops at the
    last non-collapsed rank); ``variance_share_top_k`` is the variance in the top ``top_k``.
    ``max_rank`` = min(N - 1, d): N centred vectors span at most N - 1 dimensions, so with
    fewer vectors than dimensions d - max_rank of the collapsed ones say nothing about the
    model. A fit with fewer than two usable ranks gives ``None`` (JSON has no NaN).
    """
    lam = spectrum.eigenvalues
    collapsed = collapsed_dimensions(lam, gap_decades)
    first, last = power_law_range
    last = lam.size - collapsed if last is None else min(last, lam.size)
    alpha, r2 = power_law_fit(lam, first, last)
    return {
        "dimensions": int(lam.size),
        "samples": spectrum.n_samples,
        "max_rank": min(spectrum.n_samples - 1, int(lam.size)),
        "effective_rank": effective_rank(lam),
        "rankme": effective_rank(spectrum.uncentred_eigenvalues),
        "collapsed_dimensions": collapsed,
        "power_law_alpha": None if math.isnan(alpha) else alpha,
        "power_law_r2": None if math.isnan(r2) else r2,
        "power_law_ranks": [first, last],
        "variance_share_top_k": variance_share(lam, top_k),
        "top_k": min(top_k, int(lam.size)),
    }


def log_spectrum(eigenvalues: np.ndarray, floor: float = 1e-30) -> np.ndarray:
    """log10 of the eigenvalues, with exact zeros shown at ``floor``."""
    return np.log10(np.maximum(np.asarray(eigenvalues, dtype=np.float64), floor))
