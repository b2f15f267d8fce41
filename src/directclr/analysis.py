"""Collapse analysis: the paper's embedding spectrum and rank metrics.

Convention (the paper's): for vectors x_i, L2-normalise each row, centre, and take the
eigenvalues of C = 1/N sum (x - mean)(x - mean)^T, sorted in decreasing order. These are the
squared singular values of the centred, normalised matrix divided by N. Cost: one d x d
Gram product and two d x d eigendecompositions (centred and un-centred); nothing quadratic
in N.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from scipy.linalg import blas

from directclr.devices import to_device
from directclr.errors import UserFacingError
from directclr.threads import one_blas_thread

CONVENTION = (
    "eigenvalues of the covariance C = 1/N sum (u - mean)(u - mean)^T of the L2-normalised "
    "vectors u, descending; singular values of the centred normalised matrix are sqrt(N * "
    "eigenvalue); effective rank (Roy & Vetterli) of those centred singular values; RankMe: "
    "the same entropy of the singular values of the un-centred normalised matrix; "
    "structural zeros: the d - (N - 1) eigenvalues N centred vectors cannot fill (never "
    "counted as collapse); numerical rank: eigenvalues above the noise floor "
    "lambda_max * d * eps of the Gram product; collapsed dimensions: the numerically zero "
    "ones within min(N - 1, d), plus those below the largest cliff of the log spectrum (a "
    "drop of at least cliff_decades between neighbours, locally steeper than i^-cliff_slope)"
)

# What to do when a numerical routine cannot give an answer for a set of vectors.
NUMERICAL_ADVICE = (
    "such vectors come from a model gone bad (a learning rate too high: lower lr or raise "
    "temperature and train again) or from a damaged file (rerun the stage that wrote it)"
)


class NumericalError(UserFacingError, FloatingPointError):
    """A numerical routine (an eigendecomposition, a Cholesky factorisation, a solver) cannot
    give a meaningful answer for these vectors: they are not finite, or so large or so
    degenerate that float64 cannot tell their structure. The message names the measure, the
    vectors and what to do; LAPACK's own error (its cause) never reaches the user alone."""


def require_finite(x: np.ndarray, what: str) -> None:
    """Refuse vectors (the last axis) holding a NaN or an infinity before a numerical routine
    or a probe meets them, naming ``what`` was to be computed and how many are bad."""
    vectors = np.asarray(x).reshape(-1, np.shape(x)[-1])
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise NumericalError(
            f"{what} cannot be computed: {int(bad.sum())} of the {len(vectors)} vectors hold NaN "
            f"or infinite values; {NUMERICAL_ADVICE}"
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
    eps: float = float(np.finfo(np.float64).eps)  # machine epsilon of the Gram product
    coordinate_variances: np.ndarray | None = None  # the covariance's diagonal

    @property
    def max_rank(self) -> int:
        """min(N - 1, d): N centred vectors span at most N - 1 dimensions."""
        return min(self.n_samples - 1, int(self.eigenvalues.size))

    @property
    def structural_zeros(self) -> int:
        """The d - max_rank eigenvalues that are zero whatever the model: too few vectors."""
        return int(self.eigenvalues.size) - self.max_rank

    @property
    def noise_floor(self) -> float:
        """lambda_max * d * eps: eigenvalues below it cannot be told from zero."""
        lam = self.eigenvalues
        return float(lam.max()) * lam.size * self.eps if lam.size else 0.0

    @property
    def numerical_rank(self) -> int:
        """Eigenvalues above the noise floor of the Gram computation."""
        return int((self.eigenvalues > self.noise_floor).sum())

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


def embedding_spectrum(
    x: torch.Tensor | np.ndarray,
    chunk_rows: int | None = None,
    precision: str | None = None,
    vectors: str = "the vectors",
    device: torch.device | str | None = None,
) -> Spectrum:
    """The covariance and second-moment spectra of the L2-normalised rows of ``x``.

    One pass over ``x`` in chunks of ``chunk_rows`` rows (default: about 64 MB per chunk on
    the CPU, 32 MB on an accelerator): each chunk is copied, its rows u_i are normalised and
    shifted by a fixed vector c (the mean direction of the first rows), and
    G = sum (u_i - c)(u_i - c)^T and s = sum (u_i - c) are accumulated. With m = s / N,

        covariance      C = G / N - m m^T
        second moment   M = C + (m + c)(m + c)^T       (m + c: the mean of the u_i)

    so both come from the one Gram product; the shift keeps the subtraction in C from
    cancelling digits when the vectors share a large mean (ReLU representations do). The
    product runs in ``precision`` ("float32" or "float64"; default: the dtype of ``x``, and
    float32 for any other), chunk by chunk; G, C, M and their eigenvalues are float64. The
    product's machine epsilon sets the noise floor of :attr:`Spectrum.numerical_rank`.
    ``x`` is not modified and no normalised or centred copy of it is made.

    Where it runs: on ``device`` (default: ``x``'s CUDA device, else the CPU). On the CPU
    the product is a BLAS symmetric rank-k update (half the work of x.T @ x) and the
    eigenproblems are LAPACK's, and nothing runs on torch's thread pool. On a CUDA device
    the chunks travel there one at a time from pinned memory without waiting (``x`` may stay
    on the host), G is accumulated there in ``precision`` (never TF32) and both
    eigenproblems are solved there in float64; only the eigenvalues come back. Vectors
    holding a NaN or an infinity raise :class:`NumericalError` naming ``vectors``.
    """
    where = torch.device(device) if device is not None else _device_of(x)
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if where.type == "cpu" and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
    if where.type == "cpu":
        x = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a 2-d matrix with at least 2 rows, got shape {tuple(x.shape)}")
    n, d = x.shape
    name = precision or ("float64" if str(x.dtype).endswith("float64") else "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"precision must be float32 or float64, got {precision!r}")
    eps = float(np.finfo(np.dtype(name)).eps)
    what = f"the embedding spectrum of {vectors}"
    unfit = NumericalError(
        f"{what} ({n} x {d}) cannot be computed: they hold NaN or infinite values; "
        f"{NUMERICAL_ADVICE}"
    )
    if where.type != "cpu":
        rows = chunk_rows or max(1, (1 << 25) // (d * np.dtype(name).itemsize))
        lam_c, lam_m, variances = _spectrum_torch(
            torch.as_tensor(x), where, rows, getattr(torch, name), what, unfit
        )
        return Spectrum(lam_c, lam_m, int(n), eps, variances)
    gram, total, shift = _gram_numpy(x, chunk_rows or max(1, (1 << 24) // d), np.dtype(name))
    if not (np.isfinite(gram).all() and np.isfinite(total).all()):
        raise unfit
    covariance, second_moment = _moment_matrices(gram, total, shift, n)
    variances = np.clip(np.diag(covariance).copy(), 0.0, None)
    return Spectrum(
        _eigenvalues(covariance, what), _eigenvalues(second_moment, what), int(n), eps, variances
    )


def _device_of(x: torch.Tensor | np.ndarray) -> torch.device:
    """Where a spectrum of ``x`` runs by default: its CUDA device, else the CPU (Apple's MPS
    has no float64)."""
    on_cuda = isinstance(x, torch.Tensor) and x.device.type == "cuda"
    return x.device if on_cuda else torch.device("cpu")


def _moment_matrices(gram, total, shift, n: int):
    """C and M of :func:`embedding_spectrum` from G, s and c (numpy arrays or torch tensors)."""
    m = total / n
    covariance = gram / n - m[:, None] * m[None, :]
    mean = m + shift
    return covariance, covariance + mean[:, None] * mean[None, :]


def _spectrum_torch(
    x: torch.Tensor,
    device: torch.device,
    rows: int,
    dtype: torch.dtype,
    what: str,
    unfit: NumericalError,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both spectra and the covariance's diagonal of :func:`embedding_spectrum`, computed
    with torch on ``device`` (float64 for G and the eigenproblems). The host waits on the
    device for the finiteness check, for each eigensolver (torch checks its status) and for
    the result, not for the chunks."""
    gram, total, shift = _gram_torch(x, rows, dtype, device)
    if not bool(torch.isfinite(gram).all() & torch.isfinite(total).all()):
        raise unfit
    covariance, second_moment = _moment_matrices(gram, total, shift, x.shape[0])
    variances = torch.diagonal(covariance).clamp_min(0.0)
    lam_c = _eigenvalues_torch(covariance, what)
    lam_m = _eigenvalues_torch(second_moment, what)
    result = torch.stack([lam_c, lam_m, variances]).cpu().numpy()
    return result[0], result[1], result[2].copy()


def _eigenvalues_torch(symmetric: torch.Tensor, what: str) -> torch.Tensor:
    """:func:`_eigenvalues` with torch, on the matrix's device: descending, clamped at zero."""
    try:
        lam = torch.linalg.eigvalsh(symmetric)
    except torch.linalg.LinAlgError as error:
        raise NumericalError(
            f"{what} cannot be computed: the eigendecomposition of its {len(symmetric)} x "
            f"{len(symmetric)} matrix failed ({error}); {NUMERICAL_ADVICE}"
        ) from error
    return lam.flip(0).clamp_min(0.0)


def _gram_numpy(
    x: np.ndarray, rows: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G, s and c of :func:`embedding_spectrum` with numpy and BLAS syrk (upper triangle)."""
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


def _gram_torch(
    x: torch.Tensor, rows: int, dtype: torch.dtype, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G, s and c of :func:`embedding_spectrum` with torch on ``device`` (default: ``x``'s),
    as float64 tensors there. Chunks of ``rows`` rows travel to the device one at a time; a
    float64 product accumulates into G directly, a float32 one through a d x d buffer of its
    own, in true float32 (TF32 is switched off for it: its 10-bit mantissa would make the
    noise floor a lie)."""
    device = x.device if device is None else device
    d = x.shape[1]
    shift = torch.nn.functional.normalize(x[:1024].to(device, torch.float64), dim=1).mean(dim=0)
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    total = torch.zeros(d, dtype=torch.float64, device=device)
    product = None if dtype == torch.float64 else torch.empty(d, d, dtype=dtype, device=device)
    with _full_precision_matmul():
        for start in range(0, x.shape[0], rows):
            chunk = to_device(x[start : start + rows], device).to(dtype, copy=True)
            chunk /= torch.linalg.vector_norm(chunk, dim=1, keepdim=True).clamp_min(1e-12)
            chunk -= shift.to(dtype)
            if product is None:
                gram.addmm_(chunk.T, chunk)
            else:
                gram += torch.mm(chunk.T, chunk, out=product)
            total += chunk.sum(dim=0, dtype=torch.float64)
    return gram, total, shift


@contextmanager
def _full_precision_matmul() -> Iterator[None]:
    """Within it, float32 matmuls are true float32, whatever the process chose (training
    asks for TF32 with ``torch.set_float32_matmul_precision("high")``: the same switch is
    used here, so the two never mix torch's old and new precision settings)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _eigenvalues(symmetric: np.ndarray, what: str) -> np.ndarray:
    """Eigenvalues of a symmetric float64 matrix, descending, clamped at zero; a matrix that
    is not finite, or that LAPACK cannot decompose, raises :class:`NumericalError` naming
    ``what`` was being computed.

    LAPACK's divide and conquer on one BLAS thread: the reduction to tridiagonal form is
    memory-bound, and a second BLAS thread mostly fights torch's thread pool for the cores
    (measured: 0.6 s on one thread against 1.2-2.0 s on two for d = 2048).
    """
    if not np.isfinite(symmetric).all():
        raise NumericalError(
            f"{what} cannot be computed: its {len(symmetric)} x {len(symmetric)} matrix is not "
            f"finite in float64 (the vectors are too large); {NUMERICAL_ADVICE}"
        )
    try:
        with one_blas_thread():
            lam = scipy.linalg.eigh(
                symmetric, eigvals_only=True, driver="evd", check_finite=False, overwrite_a=True
            )
    except np.linalg.LinAlgError as error:
        raise NumericalError(
            f"{what} cannot be computed: LAPACK's eigendecomposition of its "
            f"{len(symmetric)} x {len(symmetric)} matrix failed ({error}); {NUMERICAL_ADVICE}"
        ) from error
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


def find_cliff(
    eigenvalues: np.ndarray, cliff_decades: float = 1.0, cliff_slope: float = 10.0
) -> int | None:
    """The rank k after which the log spectrum falls off a cliff, or None.

    A cliff between ranks k and k + 1 is a drop log10(lambda_k / lambda_{k+1}) of at least
    ``cliff_decades`` that is also locally steeper than a power law i^-``cliff_slope``
    (the drop over log10((k + 1) / k)). A smooth power law lambda_i ~ i^-alpha drops at most
    alpha log10(2) decades between neighbours and is exactly as steep as i^-alpha, so with
    alpha below ``cliff_slope`` it has no cliff. Of several cliffs the deepest is taken.
    ``eigenvalues`` must be positive (pass those above the noise floor).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size < 2 or (lam <= 0).any():
        return None
    log_lam = np.log10(lam)
    drops = log_lam[:-1] - log_lam[1:]
    ranks = np.arange(1, lam.size)
    slopes = drops / np.log10((ranks + 1) / ranks)
    candidates = np.flatnonzero((drops >= cliff_decades) & (slopes >= cliff_slope))
    if candidates.size == 0:
        return None
    return int(ranks[candidates[np.argmax(drops[candidates])]])


def collapsed_dimensions(
    spectrum: Spectrum, cliff_decades: float = 1.0, cliff_slope: float = 10.0
) -> int:
    """Dimensions the model has collapsed: within max_rank = min(N - 1, d), those that are
    numerically zero, plus those below the deepest cliff of the rest (:func:`find_cliff`).
    The structural zeros of a small set of vectors are never counted."""
    active = spectrum.eigenvalues[: spectrum.numerical_rank]
    cliff = find_cliff(active[: spectrum.max_rank], cliff_decades, cliff_slope)
    reachable = min(spectrum.numerical_rank, spectrum.max_rank)
    return spectrum.max_rank - (cliff if cliff is not None else reachable)


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


def nesum(eigenvalues: np.ndarray) -> float:
    """NESum (He & Ozay, 2022): sum_i lambda_i / lambda_1, the covariance eigenvalues over the
    largest. As lambda_i = sigma_i^2 / N for the centred matrix A, it equals A's stable rank
    ||A||_F^2 / ||A||_2^2, so it is reported once, under this name. k equal eigenvalues give
    k; a single direction gives 1; no variance gives 0."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return float(lam.sum() / lam[0]) if lam.size and lam[0] > 0 else 0.0


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """The participation ratio (sum_i lambda_i)^2 / sum_i lambda_i^2 of the covariance
    eigenvalues (Gao et al., 2017; Recanatesi et al., 2019): k for k equal eigenvalues,
    between 1 and the dimension otherwise; 0 when there is no variance."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    squares = float((lam**2).sum())
    return float(lam.sum() ** 2 / squares) if squares > 0 else 0.0


def normalised_std(spectrum: Spectrum) -> float | None:
    """The mean over coordinates of the standard deviation (ddof = 1) of the L2-normalised
    vectors: lightly's collapse indicator, about 1/sqrt(d) for vectors spread evenly over
    d dimensions and 0 for a complete collapse to one point. From the covariance's diagonal;
    None for a spectrum built without it."""
    if spectrum.coordinate_variances is None:
        return None
    n = spectrum.n_samples
    return float(np.sqrt(spectrum.coordinate_variances * n / (n - 1)).mean())


def variance_share(eigenvalues: np.ndarray, k: int) -> float:
    """Share of the variance in the top ``k`` eigenvalues: sum_{i<=k} lambda_i / sum_i lambda_i."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    total = lam.sum()
    return float(lam[:k].sum() / total) if total > 0 else math.nan


def spectrum_metrics(
    spectrum: Spectrum,
    cliff_decades: float = 1.0,
    cliff_slope: float = 10.0,
    power_law_range: tuple[int, int | None] = (1, None),
    top_k: int = 10,
) -> dict[str, float | int | list[int] | None]:
    """The collapse metrics of one spectrum.

    ``effective_rank`` is Roy & Vetterli's on the centred singular values, ``rankme`` the
    same on the un-centred ones; ``nesum``, ``participation_ratio`` and ``normalised_std``
    (beside its reference 1/sqrt(d), ``normalised_std_uniform``) are the other label-free
    measures of :func:`nesum`, :func:`participation_ratio` and :func:`normalised_std`.
    ``max_rank`` = min(N - 1, d): N centred vectors span at
    most N - 1 dimensions, so a set of fewer vectors than dimensions has ``structural_zeros``
    = d - max_rank eigenvalues that say nothing about the model and are never counted as
    collapse. ``numerical_rank`` counts eigenvalues above the noise floor of the Gram
    product; ``collapsed_dimensions`` (:func:`collapsed_dimensions`) those within max_rank
    that are numerically zero or below the spectrum's deepest cliff. ``power_law_alpha``
    and ``power_law_r2`` fit lambda_i ~ i^-alpha over ``power_law_range`` (1-based ranks;
    an open end stops at the last non-collapsed rank); ``variance_share_top_k`` is the
    variance in the top ``top_k``. A fit with fewer than two usable ranks gives ``None``
    (JSON has no NaN).
    """
    lam = spectrum.eigenvalues
    collapsed = collapsed_dimensions(spectrum, cliff_decades, cliff_slope)
    first, last = power_law_range
    active = spectrum.max_rank - collapsed
    last = active if last is None else min(last, lam.size)
    alpha, r2 = power_law_fit(lam, first, last)
    return {
        "dimensions": int(lam.size),
        "samples": spectrum.n_samples,
        "max_rank": spectrum.max_rank,
        "structural_zeros": spectrum.structural_zeros,
        "numerical_rank": spectrum.numerical_rank,
        "noise_floor": spectrum.noise_floor,
        "effective_rank": effective_rank(lam),
        "rankme": effective_rank(spectrum.uncentred_eigenvalues),
        "nesum": nesum(lam),
        "participation_ratio": participation_ratio(lam),
        "normalised_std": normalised_std(spectrum),
        "normalised_std_uniform": 1 / math.sqrt(lam.size) if lam.size else None,
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


# LiDAR (Thilak et al., 2023): the paper's regulariser of the within-class covariance and the
# constant that keeps the entropy's logarithm finite.
LIDAR_DELTA = 1e-4
LIDAR_EPS = 1e-8
LIDAR_CONVENTION = (
    "LiDAR (Thilak et al., 2023, arXiv:2312.04000): n samples are n classes, their q "
    "augmented views the members; on the vectors as they are (not L2-normalised), in float64. "
    "Sigma_b = 1/(n - 1) sum_i (mu_i - mu)(mu_i - mu)^T of the class means mu_i about their "
    "mean mu; Sigma_w = 1/(n (q - 1)) sum_ij (x_ij - mu_i)(x_ij - mu_i)^T + delta I; "
    "LiDAR = exp(-sum_k p_k log p_k) over the d eigenvalues lambda_k of "
    "Sigma_w^-1/2 Sigma_b Sigma_w^-1/2, with p_k = (lambda_k + eps) / sum_j (lambda_j + eps); "
    "at most lidar_cap = min(d, n - 1); 0 when the class means coincide"
)


def lidar_eigenvalues(
    views: torch.Tensor | np.ndarray, delta: float = LIDAR_DELTA, vectors: str = "the views"
) -> tuple[np.ndarray, int]:
    """Eigenvalues (descending, >= 0) of the LiDAR matrix of ``views`` (n, q, d): n classes
    of q members each, and the dimension d. See :func:`lidar`.

    Only the min(n, d) eigenvalues that can be non-zero are returned; the other d - min(n, d)
    are exactly zero (Sigma_b has rank at most n - 1). With L the Cholesky factor of
    Sigma_w = L L^T (delta included) and C the n x d matrix of centred class means over
    sqrt(n - 1), so that Sigma_b = C^T C, the matrix L^-1 Sigma_b L^-T = M M^T (M = L^-1 C^T,
    d x n) is similar to Sigma_w^-1/2 Sigma_b Sigma_w^-1/2, and its non-zero eigenvalues are
    those of the smaller of M^T M (n x n) and M M^T (d x d). Cost: one d x d product over
    the n q views, a Cholesky factorisation and a triangular solve, and one eigenproblem of
    size min(n, d); never a d x d inverse square root.

    Views that are not finite, or so large that Sigma_w + delta I is not positive definite
    in float64 (delta is lost in the rounding of variances many orders of magnitude above it;
    a run gone bad gives 1e38), raise :class:`NumericalError` naming ``vectors``. Raising delta to
    match would be another measure, not LiDAR, so no value is given for them.
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive (Sigma_w may be singular), got {delta}")
    if isinstance(views, torch.Tensor):
        views = views.detach().cpu().double().numpy()
    x = np.array(views, dtype=np.float64)  # a copy: shifted and centred in place below
    if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(
            f"LiDAR needs views shaped (n, q, d) with n >= 2 samples and q >= 2 views each, got "
            f"shape {tuple(x.shape)}"
        )
    n, q, d = x.shape
    what = f"LiDAR of {vectors} ({n} samples x {q} views x {d})"
    require_finite(x, what)
    # Covariances ignore a shift; removing one vector first keeps a large common mean (ReLU
    # representations) from cancelling digits, and makes identical vectors exactly zero.
    x -= x[0, 0].copy()
    means = x.mean(axis=1)
    x -= means[:, None, :]
    within = x.reshape(n * q, d)
    sigma_w = within.T @ within / (n * (q - 1))
    sigma_w[np.diag_indices(d)] += delta
    centred = (means - means.mean(axis=0)) / math.sqrt(n - 1)
    try:
        factor = scipy.linalg.cholesky(sigma_w, lower=True, check_finite=False)
    except np.linalg.LinAlgError as error:
        largest = float(np.max(np.diag(sigma_w)))
        raise NumericalError(
            f"{what} cannot be computed: the within-class covariance Sigma_w + delta I (largest "
            f"variance {largest:.3g}, delta {delta:g}) is not positive definite in float64 "
            f"({error}); {NUMERICAL_ADVICE}"
        ) from error
    m = scipy.linalg.solve_triangular(factor, centred.T, lower=True, check_finite=False)
    gram = m.T @ m if n <= d else m @ m.T
    return _eigenvalues(gram, what), d


def lidar_from_eigenvalues(
    eigenvalues: np.ndarray, dimensions: int, eps: float = LIDAR_EPS
) -> float:
    """exp of the entropy of p_k = (lambda_k + eps) / sum_j (lambda_j + eps) over ``dimensions``
    eigenvalues, of which those not given are zero; 0 when every eigenvalue is zero."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    zeros = dimensions - lam.size
    if zeros < 0:
        raise ValueError(f"{lam.size} eigenvalues given for {dimensions} dimensions")
    total = lam.sum()
    if total <= 0:
        return 0.0
    norm = total + dimensions * eps
    p = (lam + eps) / norm
    p = p[p > 0]
    entropy = -(p * np.log(p)).sum()
    if zeros and eps > 0:
        p0 = eps / norm
        entropy -= zeros * p0 * math.log(p0)
    return float(np.exp(entropy))


def lidar(
    views: torch.Tensor | np.ndarray,
    delta: float = LIDAR_DELTA,
    eps: float = LIDAR_EPS,
    vectors: str = "the views",
) -> float:
    """LiDAR (Thilak et al., 2023, "LiDAR: Sensing Linear Probing Performance in Joint
    Embedding SSL Architectures", arXiv:2312.04000): the effective rank of the linear
    discriminant matrix of ``views`` (n, q, d), where each of n samples is a class and its q
    augmented views are the class's members.

    With class means mu_i = 1/q sum_j x_ij and their mean mu,

        Sigma_b = 1/(n - 1) sum_i (mu_i - mu)(mu_i - mu)^T                (between classes)
        Sigma_w = 1/(n (q - 1)) sum_i sum_j (x_ij - mu_i)(x_ij - mu_i)^T + delta I  (within)
        Sigma_lidar = Sigma_w^-1/2 Sigma_b Sigma_w^-1/2

    and LiDAR = exp(-sum_k p_k log p_k) over the d eigenvalues lambda_k of Sigma_lidar, with
    p_k = (lambda_k + eps) / sum_j (lambda_j + eps). The normalisations and the defaults
    delta = 1e-4, eps = 1e-8 are the paper's (as its reference callback in stable-pretraining
    reads them; the paper writes p_k = lambda_k / ||lambda||_1 + eps, which differs by
    O(d eps)). Unlike the project's effective rank and RankMe, the entropy is of the
    eigenvalues themselves, not of singular values, and the vectors are used as they are,
    not L2-normalised (so delta is in their units).

    k equal discriminant directions give k; the value is at most min(d, n - 1)
    (:func:`lidar_cap`) up to O(d eps). Views that are all identical (Sigma_w = 0) leave
    Sigma_w = delta I, so LiDAR is the same entropy of the eigenvalues of Sigma_b itself:
    finite. Class means that all coincide (a complete collapse) leave no between-class
    scatter; LiDAR is then 0, as the effective rank of no variance (the eps formula would
    read d there). Computed in float64 as :func:`lidar_eigenvalues` says.
    """
    lam, d = lidar_eigenvalues(views, delta, vectors)
    return lidar_from_eigenvalues(lam, d, eps)


def lidar_cap(samples: int, dimensions: int) -> int:
    """The largest LiDAR n samples in d dimensions can give: min(d, n - 1), the rank of
    Sigma_b."""
    return min(dimensions, samples - 1)
