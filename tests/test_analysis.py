import numpy as np
import pytest

from directclr.analysis import (
    collapsed_dimensions,
    covariance_spectrum,
    effective_rank,
    log_spectrum,
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
    lam = covariance_spectrum(x)
    assert collapsed_dimensions(lam, gap_decades=6) == 12 - 4
    assert collapsed_dimensions(np.ones(5)) == 0
    assert collapsed_dimensions(np.array([1.0, 1e-3, 1e-5, 0.0]), gap_decades=4) == 2


def test_spectrum_rejects_a_single_row():
    with pytest.raises(ValueError, match="at least 2 rows"):
        covariance_spectrum(np.ones((1, 3)))


def test_log_spectrum_floors_zeros():
    np.testing.assert_allclose(log_spectrum(np.array([100.0, 0.0]), floor=1e-10), [2.0, -10.0])
