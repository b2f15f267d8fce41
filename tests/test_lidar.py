"""LiDAR (Thilak et al., 2023) on views with a known discriminant structure."""

import math

import numpy as np
import pytest
import torch

from directclr.analysis import (
    LIDAR_DELTA,
    LIDAR_EPS,
    lidar,
    lidar_cap,
    lidar_eigenvalues,
    lidar_from_eigenvalues,
)
from directclr.export import (
    EmbeddingsConfig,
    LidarViewsConfig,
    export_embeddings,
    keep_rows,
    lidar_indices,
)
from directclr.models import build_model, model_artifact
from directclr.training import PretrainingConfig, pretrain


def _structured_views(k: int, d: int, spread: float, noise: float, rotate: int | None = None):
    """n = 2k classes with means at +-spread along k orthonormal directions (Sigma_b: k equal
    eigenvalues), and q = 2d views each at +-noise along every axis around the mean (Sigma_w:
    exactly isotropic). Optionally rotated by a random orthogonal matrix (seed ``rotate``)."""
    basis = np.eye(d)
    means = np.concatenate([spread * basis[:k], -spread * basis[:k]])  # (2k, d)
    offsets = np.concatenate([noise * basis, -noise * basis])  # (2d, d), mean zero
    views = means[:, None, :] + offsets[None, :, :]
    if rotate is not None:
        q, _ = np.linalg.qr(np.random.default_rng(rotate).standard_normal((d, d)))
        views = views @ q.T + 3.0  # a rotation and a common shift change nothing
    return views


def _direct(views: np.ndarray, delta: float = LIDAR_DELTA, eps: float = LIDAR_EPS) -> float:
    """The d x d route, as the paper writes it: Sigma_w^-1/2 from an eigendecomposition."""
    x = np.asarray(views, dtype=np.float64)
    n, q, d = x.shape
    means = x.mean(axis=1)
    centred = means - means.mean(axis=0)
    sigma_b = centred.T @ centred / (n - 1)
    within = (x - means[:, None]).reshape(-1, d)
    sigma_w = within.T @ within / (n * (q - 1)) + delta * np.eye(d)
    w, v = np.linalg.eigh(sigma_w)
    inv_sqrt = (v / np.sqrt(w)) @ v.T
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt), 0, None)
    p = (lam + eps) / (lam + eps).sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("rotate", [None, 0])
def test_k_equal_discriminant_directions_with_isotropic_noise_give_k(k, rotate):
    views = _structured_views(k, d=8, spread=2.0, noise=0.5, rotate=rotate)
    lam, d = lidar_eigenvalues(views)
    assert d == 8 and lam.size == min(2 * k, 8)
    # Sigma_b = 2 spread^2 / (n - 1) on k directions; Sigma_w = 2 noise^2 / (q - 1) I + delta I.
    expected = (2.0 * 2.0**2 / (2 * k - 1)) / (2 * 0.5**2 / (2 * 8 - 1) + LIDAR_DELTA)
    np.testing.assert_allclose(lam[:k], expected, rtol=1e-10)
    assert np.abs(lam[k:]).max(initial=0) < 1e-10 * expected
    assert lidar(views) == pytest.approx(k, rel=1e-6)
    assert lidar(views, eps=0) == pytest.approx(k, rel=1e-10)
    assert lidar(views) <= lidar_cap(2 * k, 8) + 1e-6


def test_random_gaussian_classes_read_about_their_discriminant_rank():
    """Sampled, not built: k between-class directions under isotropic noise read about k."""
    rng = np.random.default_rng(1)
    n, q, d, k = 400, 16, 12, 4
    means = np.zeros((n, d))
    means[:, :k] = rng.standard_normal((n, k)) * 3.0
    views = means[:, None, :] + rng.standard_normal((n, q, d))
    value = lidar(torch.from_numpy(views).float())
    assert k < value < k + 1.5  # the d - k noise directions add a little between-class spread


def test_identical_views_leave_delta_alone_and_stay_finite():
    """Sigma_w = 0: Sigma_lidar = Sigma_b / delta, so LiDAR is the entropy of Sigma_b's
    eigenvalues themselves: k equal directions still give k, however small delta."""
    means = _structured_views(3, d=8, spread=1.0, noise=0.0)[:, 0]
    views = np.repeat(means[:, None], 4, axis=1)
    lam, _ = lidar_eigenvalues(views, delta=1e-12)
    assert np.isfinite(lam).all()
    np.testing.assert_allclose(lam[:3], 2.0 / 5 / 1e-12, rtol=1e-8)
    assert lidar(views) == pytest.approx(3, rel=1e-6)
    assert lidar(views, delta=1e-12) == pytest.approx(3, rel=1e-6)


def test_complete_collapse_gives_zero_not_nan():
    views = np.full((50, 8, 16), 0.37)
    assert lidar(views) == 0.0
    assert lidar(torch.full((10, 4, 32), -2.5)) == 0.0
    # Collapsed to one point per class but the classes coincide up to rounding: no NaN.
    assert math.isfinite(lidar(views + 1e-300))


def test_one_discriminant_direction_gives_one():
    rng = np.random.default_rng(3)
    means = np.outer(rng.standard_normal(30), rng.standard_normal(10))  # rank one
    views = means[:, None, :] + np.zeros((30, 5, 10))
    assert lidar(views) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(("n", "q", "d"), [(20, 4, 50), (60, 3, 10), (11, 2, 11)])
def test_the_small_eigenproblem_equals_the_direct_d_by_d_route(n, q, d):
    rng = np.random.default_rng(n + d)
    views = rng.standard_normal((n, q, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    assert lidar(views) == pytest.approx(_direct(views), rel=1e-8)
    assert lidar(views, delta=0.3, eps=0) == pytest.approx(_direct(views, 0.3, 0), rel=1e-8)
    assert lidar(views) <= lidar_cap(n, d) + 1e-5


def test_cap_entropy_and_bad_input():
    assert lidar_cap(1000, 512) == 512 and lidar_cap(64, 512) == 63
    # Zeros left out of the eigenvalues still count through eps.
    assert lidar_from_eigenvalues(np.ones(3), 5) == pytest.approx(
        lidar_from_eigenvalues(np.r_[np.ones(3), 0, 0], 5), rel=1e-12
    )
    assert lidar_from_eigenvalues(np.zeros(4), 10) == 0.0
    with pytest.raises(ValueError, match="shaped"):
        lidar(np.zeros((10, 1, 4)))
    with pytest.raises(ValueError, match="delta"):
        lidar(np.zeros((10, 2, 4)), delta=0)


def test_lidar_in_the_training_history_leaves_training_unchanged(digits):
    """LiDAR's views come from a generator of their own: the run with LiDAR trains exactly
    as the run without it, and records LiDAR of r and z at every rank record."""
    dataset, card = digits
    images, labels = dataset["train_images"][:256], dataset["train_labels"][:256]
    settings = dict(width=4, d0=8, epochs=3, batch_size=64, warmup_epochs=1, rank_every=2,
                    projector_hidden_dim=16, projector_dim=8)  # fmt: skip
    runs = {}
    for samples in (0, 32):
        config = PretrainingConfig(**settings, lidar_samples=samples, lidar_views=3)
        runs[samples] = pretrain(images, labels, config, card["channel_mean"], card["channel_std"])
    (off, history_off, _), (on, history_on, _) = runs[0], runs[32]
    for (name, a), b in zip(off.state_dict().items(), on.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert history_off["loss"].tolist() == history_on["loss"].tolist()
    assert history_off[["lidar_r", "lidar_z"]].isna().all().all()
    recorded = history_on["epoch"].isin([2, 3])  # every rank_every epochs, and the last
    assert history_on.loc[~recorded, ["lidar_r", "lidar_z"]].isna().all().all()
    assert history_on.loc[recorded, "lidar_r"].between(1, lidar_cap(32, 32) + 1e-5).all()
    assert history_on.loc[recorded, "lidar_z"].between(1, lidar_cap(32, 8) + 1e-5).all()


def _artifact(digits) -> dict:
    dataset, card = digits
    config = PretrainingConfig(width=4, d0=8, projector_hidden_dim=16, projector_dim=8)
    model = build_model(config, 1, card["channel_mean"], card["channel_std"], seed=0)
    return model_artifact(model.eval(), config, 1)


def test_the_embeddings_stage_exports_fixed_augmented_views(digits):
    dataset, _ = digits
    params = EmbeddingsConfig(lidar={"samples": 50, "views": 3, "seed": 5}, batch_size=32)
    out = export_embeddings(_artifact(digits), dataset, params)
    assert out["lidar_r"].shape == (50, 3, 32) and out["lidar_z"].shape == (50, 3, 8)
    indices = out["lidar_indices"]
    assert len(set(indices.tolist())) == 50 and indices.max() < len(dataset["train_labels"])
    assert out["lidar_settings"]["views"] == 3 and out["lidar_settings"]["split"] == "train"
    # The views are augmented (they differ), and the same settings give the same views.
    assert not torch.equal(out["lidar_r"][:, 0], out["lidar_r"][:, 1])
    again = export_embeddings(_artifact(digits), dataset, params)
    torch.testing.assert_close(again["lidar_r"], out["lidar_r"], rtol=0, atol=0)
    # At most the train split; none below 2 samples.
    everything = EmbeddingsConfig(lidar={"samples": 10**6, "views": 2})
    assert len(export_embeddings(_artifact(digits), dataset, everything)["lidar_r"]) == len(
        dataset["train_labels"]
    )
    none = export_embeddings(_artifact(digits), dataset, EmbeddingsConfig(lidar={"samples": 1}))
    assert not any(key.startswith("lidar") for key in none)


def test_rows_are_kept_as_image_folder_batches_stream_by():
    images = torch.arange(23 * 2).reshape(23, 2)
    indices = torch.tensor([0, 4, 5, 9, 22])
    kept = []
    passed = list(keep_rows(iter(images.split(5)), indices, kept))
    torch.testing.assert_close(torch.cat(passed), images)
    torch.testing.assert_close(torch.cat(kept), images[indices])
    assert lidar_indices(23, LidarViewsConfig(samples=30)).tolist() == list(range(23))


def test_views_follow_the_augmentation_the_model_trained_with(digits):
    """A run's own augmentation (kept in its model file) makes its LiDAR views; a model file
    without one (an imported encoder) takes embeddings.lidar.augmentation."""
    dataset, card = digits
    config = PretrainingConfig(width=4, d0=8, projector_hidden_dim=16, projector_dim=8,
                               augmentation={"view1": {"crop_scale": [0.5, 1.0]}})  # fmt: skip
    model = build_model(config, 1, card["channel_mean"], card["channel_std"], seed=0)
    artifact = model_artifact(model.eval(), config, 1)
    params = EmbeddingsConfig(lidar={"samples": 8, "views": 2})
    used = export_embeddings(artifact, dataset, params)["lidar_settings"]["augmentation"]
    assert list(used["crop_scale"]) == [0.5, 1.0]
    imported = {k: v for k, v in artifact.items() if k != "augmentation"}
    used = export_embeddings(imported, dataset, params)["lidar_settings"]["augmentation"]
    assert list(used["crop_scale"]) == list(params.lidar.augmentation.crop_scale)
    assert list(used["crop_scale"]) != [0.5, 1.0]
