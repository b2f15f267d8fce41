import math

import pytest
import torch

from directclr.losses import info_nce


def test_info_nce_matches_hand_computed_value():
    # Two pairs of unit vectors: view 1 = (e1, e2), view 2 = (e1, e2) rotated by 90 degrees.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    # Rows of U = [e1, e2, e2, -e1]; similarities s_ij = u_i.u_j / t.
    # Row 0 (e1): others (e2, e2, -e1) -> (0, 0, -1)/t; positive is row 2 (e2) -> 0.
    # Row 1 (e2): others (e1, e2, -e1) -> (0, 1, 0)/t; positive is row 3 (-e1) -> 0.
    # Row 2 (e2): others (e1, e2, -e1) -> (0, 1, 0)/t; positive is row 0 (e1) -> 0.
    # Row 3 (-e1): others (e1, e2, e2) -> (-1, 0, 0)/t; positive is row 1 (e2) -> 0.
    row0 = math.log(2 + math.exp(-1 / t))
    row1 = math.log(2 + math.exp(1 / t))
    expected = (row0 + row1 + row1 + row0) / 4
    assert info_nce(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_scale_invariant_and_symmetric():
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    loss = info_nce(z1, z2, 0.2)
    assert info_nce(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(loss.item(), rel=1e-5)
    assert info_nce(z2, z1, 0.2).item() == pytest.approx(loss.item(), rel=1e-5)


def test_info_nce_is_low_for_identical_views_and_high_for_random_ones():
    z = torch.randn(64, 32)
    assert info_nce(z, z, 0.05).item() < 0.1
    assert info_nce(z, torch.randn(64, 32), 0.05).item() > math.log(2 * 64 - 1) - 1


def test_info_nce_is_finite_at_low_temperature_and_large_batch():
    z1 = torch.randn(4096, 16, requires_grad=True)
    z2 = torch.randn(4096, 16)
    loss = info_nce(z1, z2, 0.05)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all()


def test_loss_rejects_non_positive_temperature_and_mismatched_views():
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3), 0.1)


def test_shares_of_anchors_average_to_the_full_loss():
    z1, z2 = torch.randn(12, 6), torch.randn(12, 6)
    full = info_nce(z1, z2, 0.3)
    shares = [info_nce(z1, z2, 0.3, anchors=(a, a + 4)) for a in (0, 4, 8)]
    assert torch.stack(shares).mean().item() == pytest.approx(full.item(), rel=1e-6)
