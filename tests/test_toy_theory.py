"""The theory's matrices held against the paper's formulas written as sums over pairs and
against autograd, and the estimate that decides which eigenvalues are negative."""

import math

import numpy as np
import pytest
import torch

from directclr.toy_theory import (
    augmented_weight,
    chance_cos2,
    held_out_spectrum,
    paper_matrix,
    principal_cos2,
    right_singular_basis,
    share_in,
    trained_loss_matrix,
)


def _pairs(seed: int, n: int = 6, d: int = 3, noise: float = 0.4):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, d, generator=generator, dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x_prime = x + noise * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return weight, x, x_prime


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_lemma_2s_x_is_the_papers_sum_over_pairs(tau):
    """X = sum_i [sum_{j != i} alpha_ij (x_i - x_j)(x_i - x_j)^T
    - (1 - alpha_ii)(x'_i - x_i)(x'_i - x_i)^T], written out entry by entry."""
    weight, x, x_prime = _pairs(0)
    n, d = x.shape
    z, z_prime = x @ weight.T, x_prime @ weight.T
    expected = np.zeros((d, d))
    for i in range(n):
        kernel = {j: math.exp(-float((z[i] - z[j]).square().sum()) / (2 * tau))
                  for j in range(n) if j != i}  # fmt: skip
        positive = math.exp(-float((z[i] - z_prime[i]).square().sum()) / (2 * tau))
        total = sum(kernel.values()) + positive
        for j, value in kernel.items():
            difference = (x[i] - x[j]).numpy()
            expected += value / total * np.outer(difference, difference)
        difference = (x_prime[i] - x[i]).numpy()
        expected -= (1 - positive / total) * np.outer(difference, difference)
    np.testing.assert_allclose(paper_matrix(weight, x, x_prime, tau).numpy(), expected,
                               rtol=1e-10, atol=1e-12)  # fmt: skip


def test_lemma_2s_x_is_exactly_the_gradient_of_the_papers_loss_and_ignores_a_bias():
    """-dL/dW = W X / tau for L = -sum_i log alpha_ii, the paper's Eq. 1 (same-branch
    negatives, squared-distance logits), held against autograd in float64."""
    weight, x, x_prime = _pairs(1, n=9, d=4)
    bias = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tau = 0.5
    weight.requires_grad_(True)
    z, z_prime = x @ weight.T + bias, x_prime @ weight.T + bias
    logits = -(torch.cdist(z, z) ** 2) / (2 * tau)
    logits = (
        logits
        - torch.diag(logits.diagonal())
        + torch.diag(-((z - z_prime) ** 2).sum(1) / (2 * tau))
    )
    torch.nn.functional.cross_entropy(logits, torch.arange(9), reduction="sum").backward()
    matrix = paper_matrix(weight, x, x_prime, tau)
    torch.testing.assert_close(weight.detach() @ matrix / tau, -weight.grad, rtol=1e-10, atol=0)


def test_lemma_2s_x_batched_is_each_batch_on_its_own():
    weight, x, x_prime = _pairs(2, n=5)
    other_x, other_prime = _pairs(3, n=5)[1:]
    stacked = paper_matrix(weight, torch.stack([x, other_x]), torch.stack([x_prime, other_prime]))
    torch.testing.assert_close(stacked[1], paper_matrix(weight, other_x, other_prime))


def test_the_trained_loss_matrix_is_its_sum_over_pairs():
    """X~ = sum_ij (delta_ij - P_ij)(a_i b_j^T + b_j a_i^T), P_ij = softmax_j(z_i . z'_j / tau)."""
    weight, x, x_prime = _pairs(4, n=5)
    bias = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    tau = 0.2
    a = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1)
    b = torch.cat([x_prime, torch.ones(5, 1, dtype=torch.float64)], 1)
    w = torch.cat([weight, bias[:, None]], 1)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(5):
        scores = torch.stack([(w @ a[i]) @ (w @ b[j]) / tau for j in range(5)])
        p = torch.softmax(scores, 0)
        for j in range(5):
            expected += (float(i == j) - p[j]) * (torch.outer(a[i], b[j]) + torch.outer(b[j], a[i]))
    torch.testing.assert_close(trained_loss_matrix(weight, x, x_prime, tau, bias), expected,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    paper = paper_matrix(weight, x, x_prime, tau).numpy()
    block = expected[:3, :3].numpy()
    cosine = (paper * block).sum() / (np.linalg.norm(paper) * np.linalg.norm(block))
    assert cosine < 0.99  # two losses, two matrices


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_paper_toys_loss_moves_w_by_exactly_w_x_over_n_tau(with_bias):
    """-dL/dW~ = W~ X~ / (N tau) for the dot-product loss the paper's toy trains, held
    against autograd in float64."""
    generator = torch.Generator().manual_seed(1)
    n, d, tau = 12, 5, 0.1
    weight = torch.randn(d, d, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = bias if with_bias else None
    x1 = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    z1, z2 = x1 @ weight.T, x2 @ weight.T
    if with_bias:
        z1, z2 = z1 + bias, z2 + bias
    torch.nn.functional.cross_entropy(z1 @ z2.T / tau, torch.arange(n)).backward()
    matrix = trained_loss_matrix(weight, x1, x2, tau, bias)
    predicted = augmented_weight(weight, bias) @ matrix / (n * tau)
    observed = -(torch.cat([weight.grad, bias.grad[:, None]], 1) if with_bias else weight.grad)
    assert (predicted - observed).norm() / observed.norm() < 1e-10
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-12)  # symmetric


def _noisy_stack(mean: torch.Tensor, noise: float, batches: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    d = len(mean)
    e = torch.randn(batches, d, d, generator=generator, dtype=torch.float64) * noise
    return mean + (e + e.mT) / 2


def test_held_out_estimate_finds_a_real_negative_eigenvalue_and_its_direction():
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64))  # fmt: skip
    mean = basis @ torch.diag(torch.tensor([-1.0, 1, 2, 3, 4, 5], dtype=torch.float64)) @ basis.T
    spectrum = held_out_spectrum(_noisy_stack(mean, 1.0, 256, seed=1))
    assert spectrum.negative(3.0).tolist() == [True] + [False] * 5
    assert spectrum.values[0] == pytest.approx(-1.0, abs=5 * spectrum.standard_errors[0])
    direction = spectrum.negative_vectors(3.0)
    assert principal_cos2(direction, basis[:, :1].numpy()) > 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_estimate_finds_no_negative_eigenvalue_in_noise_alone(seed):
    """A zero matrix seen through noise: the lowest eigenvalue of the noisy mean is far
    below zero (about -2 sqrt(d) standard errors), so counting on the same batches that
    chose the directions would find negatives that are not there."""
    stack = _noisy_stack(torch.zeros(12, 12, dtype=torch.float64), 1.0, 64, seed)
    lowest = torch.linalg.eigvalsh(stack.mean(0))[0]
    assert lowest < -3 * (1.0 / 64**0.5)  # the naive count would call this negative
    assert not held_out_spectrum(stack).negative(3.0).any()


def test_held_out_estimate_needs_batches_to_test_on():
    with pytest.raises(ValueError, match="at least 4 batches"):
        held_out_spectrum(torch.zeros(3, 2, 2))


def test_a_wide_matrix_has_all_its_right_singular_directions_null_vector_included():
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    squared, vh = right_singular_basis(wide)
    assert squared.shape == (5,) and vh.shape == (5, 5)
    assert squared[-1] == 0.0
    assert torch.linalg.norm(wide @ torch.from_numpy(vh[-1])) < 1e-12  # the null vector
    np.testing.assert_allclose(vh @ vh.T, np.eye(5), atol=1e-12)


def test_principal_cos2_compares_subspaces():
    basis = np.eye(4)
    assert principal_cos2(basis[:, :2], basis[:, :2]) == pytest.approx(1.0)
    assert principal_cos2(basis[:, :2], basis[:, 2:]) == pytest.approx(0.0)
    assert principal_cos2(basis[:, :1], basis[:, :3]) == pytest.approx(1.0)  # contained
    assert np.isnan(principal_cos2(basis[:, :0], basis[:, :2]))


@pytest.mark.parametrize(("first", "second", "dim"), [(3, 5, 16), (8, 8, 17), (1, 1, 4)])
def test_chance_overlap_is_the_mean_over_random_subspaces(first, second, dim):
    generator = torch.Generator().manual_seed(0)
    draws = [
        principal_cos2(
            torch.linalg.qr(torch.randn(dim, first, generator=generator))[0].numpy(),
            torch.linalg.qr(torch.randn(dim, second, generator=generator))[0].numpy(),
        )
        for _ in range(2000)
    ]
    assert chance_cos2(first, second, dim) == pytest.approx(np.mean(draws), abs=0.02)
    assert np.isnan(chance_cos2(0, second, dim))


def test_share_in_measures_where_directions_lie():
    vectors = np.array([[1.0, 0.0], [0.0, 0.6], [0.0, 0.8]])
    assert share_in(vectors, slice(1, 3)) == pytest.approx(0.5)  # (0 + 1) / 2
    assert np.isnan(share_in(vectors[:, :0], slice(1, 3)))
