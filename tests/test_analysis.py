import numpy as np
import pytest
import torch

from directclr.analysis import (
    NumericalError,
    Spectrum,
    _eigenvalues,
    collapsed_dimensions,
    covariance_spectrum,
    effective_rank,
    embedding_spectrum,
    find_cliff,
    lidar,
    log_spectrum,
    nesum,
    normalised_std,
    participation_ratio,
    power_law_fit,
    spectrum_metrics,
    variance_share,
)


def _matrix_with_equal_singular_values(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return 3.0 * u @ v.T


@pytest.mark.parametrize("k", [1, 3, 7])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    sigma = np.zeros(10)
    sigma[:k] = 2.5
    assert effective_rank(sigma**2) == pytest.approx(k)


def test_effective_rank_is_between_one_and_dimension():
    lam = np.array([5.0, 1.0, 0.1, 0.0])
    assert 1 < effective_rank(lam) < 3
    assert effective_rank(np.zeros(4)) == 0.0


def test_spectrum_matches_numpy_covariance_of_normalised_rows():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.sort(np.linalg.eigvalsh(np.cov(u.T, bias=True)))[::-1]
    np.testing.assert_allclose(covariance_spectrum(x), expected, rtol=1e-10, atol=1e-14)
    assert covariance_spectrum(x).sum() == pytest.approx(np.trace(np.cov(u.T, bias=True)))


def test_low_rank_embeddings_show_collapsed_dimensions():
    # Rows in a 4-d subspace of 12-d space stay in it after normalising and centring.
    x = _matrix_with_equal_singular_values(400, 12, 4)
    spectrum = embedding_spectrum(x)
    assert collapsed_dimensions(spectrum) == 12 - 4
    assert spectrum.numerical_rank == 4 and spectrum.structural_zeros == 0


def _spectrum(eigenvalues: np.ndarray, n_samples: int = 100_000) -> Spectrum:
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return Spectrum(lam, lam, n_samples)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_a_smooth_power_law_is_not_collapse(alpha):
    """i^-2 spans 5.4 decades over 512 dimensions and i^-3 8.1: a fixed 4-decade threshold
    calls their tails collapsed; the cliff criterion does not."""
    lam = np.arange(1, 513, dtype=np.float64) ** -alpha
    spectrum = _spectrum(lam)
    assert spectrum.numerical_rank == 512
    assert find_cliff(lam) is None
    assert collapsed_dimensions(spectrum) == 0
    assert spectrum_metrics(spectrum)["collapsed_dimensions"] == 0


@pytest.mark.parametrize("k", [1, 12, 200])
def test_a_cliff_of_k_dimensions_gives_exactly_k(k):
    lam = np.arange(1, 513, dtype=np.float64) ** -1.5
    lam[512 - k :] *= 1e-6  # the last k fall six decades, still above the float64 floor
    spectrum = _spectrum(lam)
    assert spectrum.numerical_rank == 512
    assert find_cliff(lam) == 512 - k
    assert collapsed_dimensions(spectrum) == k
    exact_zeros = lam.copy()
    exact_zeros[512 - k :] = 0.0  # numerically zero: collapsed too, whether or not a cliff
    assert collapsed_dimensions(_spectrum(exact_zeros)) == k


def test_fewer_vectors_than_dimensions_give_structural_zeros_not_collapse():
    x = np.random.default_rng(7).standard_normal((100, 256))
    metrics = spectrum_metrics(embedding_spectrum(x))
    assert metrics["max_rank"] == 99
    assert metrics["structural_zeros"] == 256 - 100 + 1
    assert metrics["numerical_rank"] == 99
    assert metrics["collapsed_dimensions"] == 0


def test_spectrum_rejects_a_single_row():
    with pytest.raises(ValueError, match="at least 2 rows"):
        covariance_spectrum(np.ones((1, 3)))


def test_log_spectrum_floors_zeros():
    np.testing.assert_allclose(log_spectrum(np.array([100.0, 0.0]), floor=1e-10), [2.0, -10.0])


def _rows_on_k_axes(d: int, k: int, repeats: int = 25, seed: int = 0) -> np.ndarray:
    """Rows +-e_1 .. +-e_k of R^d, rotated at random: unit norm, mean zero, and a centred
    normalised matrix with k equal non-zero singular values."""
    axes = np.eye(d)[:k]
    rows = np.tile(np.concatenate([axes, -axes]), (repeats, 1))
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return rows @ rotation


@pytest.mark.parametrize("k", [1, 4, 9])
def test_k_equal_singular_values_give_k_live_dimensions_and_effective_rank_k(k):
    x = _rows_on_k_axes(d=12, k=k)
    spectrum = embedding_spectrum(x)
    metrics = spectrum_metrics(spectrum, top_k=k)
    assert metrics["dimensions"] == 12 and metrics["samples"] == len(x)
    assert metrics["max_rank"] == 12
    assert metrics["collapsed_dimensions"] == 12 - k
    assert metrics["effective_rank"] == pytest.approx(k, rel=1e-5)
    assert metrics["rankme"] == pytest.approx(k, rel=1e-5)  # the mean is zero: same matrix
    assert metrics["variance_share_top_k"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(spectrum.eigenvalues[:k], 1 / k, rtol=1e-5)
    np.testing.assert_allclose(spectrum.singular_values[:k], np.sqrt(len(x) / k), rtol=1e-5)
    # In float32 the dead directions keep a rounding floor (eigenvalues ~1e-8, singular
    # values ~1e-4 of the live ones): still collapsed, and the rank moves by well under 1%.
    single = spectrum_metrics(embedding_spectrum(x.astype(np.float32)))
    assert single["collapsed_dimensions"] == 12 - k
    assert single["effective_rank"] == pytest.approx(k, rel=0.01)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.3])
def test_exact_power_law_is_fitted_within_one_percent(alpha):
    lam = np.arange(1, 201, dtype=float) ** -alpha
    fitted, r2 = power_law_fit(lam, first=2, last=150)
    assert fitted == pytest.approx(alpha, rel=0.01)
    assert r2 == pytest.approx(1.0, abs=1e-9)
    # A tail that collapsed to zero is left out of the fit, not taken as log(0).
    lam[100:] = 0.0
    assert power_law_fit(lam)[0] == pytest.approx(alpha, rel=0.01)


def test_power_law_fit_of_too_few_ranks_is_undefined():
    assert all(np.isnan(power_law_fit(np.array([1.0, 0.0, 0.0]))))
    metrics = spectrum_metrics(embedding_spectrum(_rows_on_k_axes(d=6, k=1)))
    assert metrics["power_law_alpha"] is None and metrics["power_law_r2"] is None


def test_power_law_range_stops_at_the_last_live_rank_unless_given():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 10)) * np.arange(1, 11) ** -1.0
    x[:, 8:] = 0.0  # two dead dimensions
    spectrum = embedding_spectrum(x)
    assert spectrum_metrics(spectrum)["power_law_ranks"] == [1, 8]
    assert spectrum_metrics(spectrum, power_law_range=(2, 5))["power_law_ranks"] == [2, 5]
    assert spectrum_metrics(spectrum, power_law_range=(1, 50))["power_law_ranks"] == [1, 10]


def test_fewer_vectors_than_dimensions_cap_the_rank():
    x = np.random.default_rng(5).standard_normal((6, 20))
    metrics = spectrum_metrics(embedding_spectrum(x))
    assert metrics["max_rank"] == 5
    assert metrics["structural_zeros"] == 20 - 5
    assert metrics["collapsed_dimensions"] == 0


def test_variance_share_of_top_k():
    lam = np.array([4.0, 3.0, 2.0, 1.0])
    assert variance_share(lam, 1) == pytest.approx(0.4)
    assert variance_share(lam, 3) == pytest.approx(0.9)
    assert variance_share(lam, 10) == pytest.approx(1.0)


def test_both_spectra_match_the_svd_of_the_normalised_matrix():
    rng = np.random.default_rng(2)
    x = np.abs(rng.standard_normal((300, 7))) * np.array([4, 3, 2, 1, 1, 0.5, 0.1])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    spectrum = embedding_spectrum(x, chunk_rows=64)
    centred = np.linalg.svd(u - u.mean(axis=0), compute_uv=False)
    uncentred = np.linalg.svd(u, compute_uv=False)
    np.testing.assert_allclose(spectrum.singular_values, centred, rtol=1e-9)
    np.testing.assert_allclose(spectrum.uncentred_singular_values, uncentred, rtol=1e-9)
    assert spectrum_metrics(spectrum)["rankme"] == pytest.approx(effective_rank(uncentred**2))
    table = spectrum.table()
    assert list(table.columns) == ["index", "eigenvalue", "log10_eigenvalue", "singular_value",
                                   "uncentred_eigenvalue"]  # fmt: skip
    assert table["index"].tolist() == list(range(1, 8))


def test_float32_chunks_agree_with_float64_for_vectors_with_a_large_mean():
    # ReLU-like vectors share a large mean direction: centring by subtraction after the
    # Gram product would cancel most float32 digits; the shifted accumulation keeps them.
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((5000, 64)) * np.arange(1, 65) ** -0.5, 0) + 0.3
    reference = covariance_spectrum(x)
    x32 = torch.tensor(x, dtype=torch.float32)
    before = x32.clone()
    spectrum = embedding_spectrum(x32, chunk_rows=700)
    np.testing.assert_allclose(spectrum.eigenvalues, reference, atol=1e-6 * reference[0])
    torch.testing.assert_close(x32, before)  # the input is not normalised in place
    # Non-contiguous views (a slice of columns, a transpose) give the same spectrum.
    wide = torch.cat([x32, torch.zeros(5000, 3)], dim=1)[:, :64]
    np.testing.assert_allclose(embedding_spectrum(wide).eigenvalues, spectrum.eigenvalues,
                               atol=1e-7 * reference[0])  # fmt: skip
    transposed = x32.T.contiguous().T
    np.testing.assert_allclose(embedding_spectrum(transposed).eigenvalues, spectrum.eigenvalues,
                               atol=1e-7 * reference[0])  # fmt: skip


def _relu_like(rows: int, dim: int, seed: int) -> np.ndarray:
    """Non-negative vectors with a power-law spectrum and a large shared mean, as ReLU
    representations have, and a few exactly collapsed directions."""
    x = np.random.default_rng(seed).standard_normal((rows, dim)) * np.arange(1, dim + 1) ** -0.75
    x[:, -3:] = 0.0
    return np.abs(x) + 0.5


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_the_accelerator_path_gives_the_cpu_spectra(precision):
    # No GPU here: the torch path (what a CUDA device runs) on the CPU against BLAS and
    # LAPACK. In float64 every eigenvalue agrees to 1e-10 of the largest and, above 1e-6 of
    # it, to 1e-10 of itself; in float32 the two products round differently.
    from directclr import analysis

    x = _relu_like(3000, 48, seed=6)
    cpu = embedding_spectrum(x, chunk_rows=700, precision=precision)
    dtype = getattr(torch, precision)
    values = analysis._spectrum_torch(
        torch.from_numpy(x), torch.device("cpu"), 700, dtype, "x", NumericalError("x")
    )
    tolerance = 1e-10 if precision == "float64" else 1e-5
    for expected, got in zip(
        (cpu.eigenvalues, cpu.uncentred_eigenvalues, cpu.coordinate_variances), values,
        strict=True,
    ):  # fmt: skip
        assert np.max(np.abs(got - expected)) <= tolerance * expected.max()
        large = expected > 1e-6 * expected.max()
        if precision == "float64":
            np.testing.assert_allclose(got[large], expected[large], rtol=1e-10)
    # The Gram product itself, chunk by chunk, against BLAS's.
    by_blas = analysis._gram_numpy(x.astype(np.float32), rows=128, dtype=np.dtype("float32"))
    by_torch = analysis._gram_torch(torch.from_numpy(x).float(), rows=128, dtype=torch.float32)
    for a, b in zip(by_blas, by_torch, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


def test_the_accelerator_path_refuses_non_finite_vectors_and_restores_tf32():
    from directclr import analysis

    x = torch.from_numpy(_relu_like(200, 8, seed=1))
    x[5, 2] = float("nan")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as training sets it on CUDA
    try:
        with pytest.raises(NumericalError, match=r"embedding spectrum of r \(200 x 8\).*NaN"):
            analysis._spectrum_torch(
                x, torch.device("cpu"), 64, torch.float32, "the embedding spectrum of r",
                NumericalError("the embedding spectrum of r (200 x 8): NaN"),
            )  # fmt: skip
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_nesum_and_participation_ratio_of_k_equal_eigenvalues_are_k(k):
    lam = np.zeros(12)
    lam[:k] = 0.7
    assert nesum(lam) == pytest.approx(k) and participation_ratio(lam) == pytest.approx(k)
    assert nesum(np.zeros(4)) == 0.0 and participation_ratio(np.zeros(4)) == 0.0


def test_nesum_is_the_stable_rank_and_the_battery_on_an_exact_power_law():
    lam = np.arange(1, 101, dtype=np.float64) ** -1.0
    assert nesum(lam) == pytest.approx(np.sum(1 / np.arange(1, 101)))  # the harmonic number
    assert participation_ratio(lam) == pytest.approx(
        np.sum(1 / np.arange(1, 101)) ** 2 / np.sum(1 / np.arange(1, 101) ** 2)
    )
    x = np.random.default_rng(8).standard_normal((300, 20)) * np.linspace(3, 0.1, 20)
    centred = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = centred - centred.mean(axis=0)
    stable_rank = (centred**2).sum() / np.linalg.norm(centred, 2) ** 2
    assert nesum(embedding_spectrum(x).eigenvalues) == pytest.approx(stable_rank, rel=1e-9)


def test_normalised_std_is_one_over_root_d_when_spread_and_zero_when_collapsed():
    rng = np.random.default_rng(9)
    spread = spectrum_metrics(embedding_spectrum(rng.standard_normal((20000, 64))))
    assert spread["normalised_std"] == pytest.approx(1 / 8, rel=0.02)
    assert spread["normalised_std_uniform"] == pytest.approx(1 / 8)
    x = rng.standard_normal((50, 64))
    torch_std = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).std(dim=0).mean()
    assert normalised_std(embedding_spectrum(x)) == pytest.approx(float(torch_std), rel=1e-9)
    one_point = np.tile(rng.standard_normal((1, 64)), (30, 1))
    assert normalised_std(embedding_spectrum(one_point)) == pytest.approx(0.0, abs=1e-7)


# Vectors no numerical routine can handle: the project's message, never LAPACK's alone ---------


def _on_one_line(n: int, d: int, scale: float, seed: int = 0) -> np.ndarray:
    """n vectors a_i v (lengths a_i about ``scale``) plus a 1e-6 relative wobble: what a
    representation wrecked by lr 100 looks like (|r|^2 up to 1e39)."""
    rng = np.random.default_rng(seed)
    v = rng.random(d)
    v /= np.linalg.norm(v)
    lengths = scale * (1 + 0.1 * rng.standard_normal((n, 1)))
    return lengths * (v + 1e-6 * rng.standard_normal((n, d)))


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_spectrum_of_non_finite_vectors_names_them_and_what_to_do(precision, bad):
    x = np.random.default_rng(0).standard_normal((50, 8))
    x[7, 3] = bad
    with pytest.raises(
        NumericalError, match=r"embedding spectrum of r \(test split\) \(50 x 8\).*NaN or "
        r"infinite.*lower lr or raise temperature and train again.*rerun the stage"
    ):  # fmt: skip
        embedding_spectrum(x, precision=precision, vectors="r (test split)")


def test_an_eigendecomposition_of_a_non_finite_matrix_names_what_it_was_for():
    matrix = np.eye(4)
    matrix[1, 2] = matrix[2, 1] = np.inf
    with pytest.raises(NumericalError, match=r"LiDAR of z cannot be computed: its 4 x 4 matrix"):
        _eigenvalues(matrix, "LiDAR of z")


def test_lidar_of_views_too_large_for_float64_raises_the_projects_error_not_cholesky():
    # Sigma_w ~ 1e36, of rank 48 < d = 64: delta = 1e-4 is lost in its rounding and LAPACK's
    # Cholesky fails ("leading minor not positive definite"); no other delta would be LiDAR.
    views = _on_one_line(16 * 4, 64, 1e19).reshape(16, 4, 64)
    with pytest.raises(NumericalError, match=r"LiDAR of r \(augmented train views\) \(16 "
                       r"samples x 4 views x 64\).*not positive definite.*lower lr"):  # fmt: skip
        lidar(views, vectors="r (augmented train views)")
    views[3, 1, 0] = np.nan
    with pytest.raises(NumericalError, match=r"LiDAR of the views .*NaN or infinite"):
        lidar(views)
    assert lidar(_on_one_line(16 * 4, 64, 1.0).reshape(16, 4, 64)) >= 0  # the same shape, sane


def test_one_blas_thread_limits_numpys_blas_and_restores_it():
    from threadpoolctl import threadpool_info

    from directclr.threads import one_blas_thread

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    assert before, "numpy's BLAS is loaded"
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
