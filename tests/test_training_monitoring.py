"""The pieces that watch a pretraining run: the non-finite watch, the epoch's row and its
end-of-epoch measures."""

import math

import pytest
import torch

from directclr.models import build_model
from directclr.training import PretrainingConfig
from directclr.training.monitoring import (
    DIRECTION_SPREAD_MIN,
    LIDAR_COLUMNS,
    RANK_METRICS,
    NonFiniteWatch,
    check_not_constant,
    direction_spread,
    end_of_epoch_measures,
    epoch_record,
)

CPU = torch.device("cpu")
NAN, INF = float("nan"), float("inf")


def _watch(losses: list[float], first_step: int = 0, total: int = 100) -> NonFiniteWatch:
    watch = NonFiniteWatch(CPU, total)
    for i, loss in enumerate(losses):
        watch.update(first_step + i, torch.tensor(loss), lr=0.01 * (first_step + i + 1))
    return watch


def test_a_finite_epoch_passes_the_watch():
    _watch([2.0, 1.5, 1.2]).check(epoch=0)


def test_the_watch_names_the_first_non_finite_step_and_its_lr():
    watch = _watch([2.0, 1.9, NAN, INF, 1.0], first_step=10)
    with pytest.raises(FloatingPointError, match=r"at step 12 \(epoch 4, lr 0\.13\)"):
        watch.check(epoch=3)


def test_an_infinite_loss_is_caught_as_a_nan_is():
    with pytest.raises(FloatingPointError, match=r"at step 1 \(epoch 1"):
        _watch([1.0, -INF]).check(epoch=0)


def test_the_watch_keeps_the_first_bad_step_after_later_good_ones():
    watch = _watch([NAN, 1.0, 1.0, 1.0])
    with pytest.raises(FloatingPointError, match="at step 0 "):
        watch.check(epoch=0)


def test_the_epoch_record_averages_over_steps_and_leaves_unmeasured_columns_nan():
    row = epoch_record(
        epoch=3, step=12, loss_sum=8.0, correct=30.0, labelled=40.0, lr=0.5, steps=4,
        images=512, seconds=2.0,
    )  # fmt: skip
    assert row["epoch"] == 3 and row["step"] == 12 and row["lr"] == 0.5
    assert row["loss"] == 2.0
    assert row["online_probe_accuracy"] == 0.75
    assert row["images_per_s"] == 256.0 and row["seconds"] == 2.0
    measured = [f"{m}_{k}" for k in ("r", "z") for m in RANK_METRICS] + list(LIDAR_COLUMNS)
    assert all(math.isnan(row[name]) for name in measured)


def test_an_unlabelled_epoch_has_probe_accuracy_zero_not_a_division_error():
    row = epoch_record(1, 4, 4.0, 0.0, 0.0, 0.1, steps=4, images=256, seconds=1.0)
    assert row["online_probe_accuracy"] == 0.0


def _model_and_images(config: PretrainingConfig):
    model = build_model(config, 1, [0.5], [0.25], config.seed)
    probe = torch.nn.Linear(model.backbone.output_dim, 10)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    return model, probe, images


def test_end_of_epoch_measures_on_record_epochs_only():
    config = PretrainingConfig(width=4, d0=8, epochs=5, rank_every=2, lidar_views=2)
    model, probe, images = _model_and_images(config)
    measures, record = end_of_epoch_measures(model, probe, images, None, config, 1, 4, 0.1)
    assert measures == {} and record is None
    measures, record = end_of_epoch_measures(model, probe, images, images[:8], config, 2, 8, 0.1)
    assert record["epoch"] == 2 and record["step"] == 8
    assert len(record["r"]) == model.backbone.output_dim and len(record["z"]) == 8
    assert 1 <= measures["effective_rank_r"] <= model.backbone.output_dim
    assert math.isfinite(measures["lidar_r"]) and math.isfinite(measures["lidar_z"])
    # The last epoch is always a record, whatever rank_every says.
    _, record = end_of_epoch_measures(model, probe, images, None, config, 5, 20, 0.1)
    assert record is not None


def test_end_of_epoch_measures_stop_a_model_with_non_finite_weights():
    config = PretrainingConfig(width=4, d0=8, epochs=2)
    model, probe, images = _model_and_images(config)
    with torch.no_grad():
        next(model.parameters())[0] = NAN
    with pytest.raises(FloatingPointError, match="became non-finite by step 7"):
        end_of_epoch_measures(model, probe, images, None, config, 1, 7, 0.1)


# The representation guard: one direction, or an explosion, is garbage as a constant is -------


def _one_direction(n: int = 256, d: int = 32, scale: float = 1.0) -> torch.Tensor:
    """Rows a_i v + noise: within cos 0.99999 of v, lengths varying (variance ratio about
    0.016, as lr 100 gives on digits: the variance test alone passes it)."""
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.rand(d, generator=g, dtype=torch.float64), dim=0)
    lengths = 1 + 0.13 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = 1e-3 / math.sqrt(d) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (scale * lengths * (v + noise)).float()


def test_the_guard_stops_a_representation_on_one_direction_whatever_its_variance():
    r = _one_direction()
    cosines = torch.nn.functional.cosine_similarity(r, r.mean(0, keepdim=True))
    assert cosines.min() > 0.99999
    share = float(r.double().var(0, unbiased=False).sum() / (r.double() ** 2).sum(1).mean())
    assert 0.005 < share < 0.05  # far above the constant test's 1e-8
    assert direction_spread(r.double()) < 1e-5
    with pytest.raises(FloatingPointError, match="collapsed to one direction by step 9 .*"
                       "Lower lr or raise temperature, then run again"):  # fmt: skip
        check_not_constant(r, step=9, lr=100.0)


def test_the_guard_stops_an_exploding_representation():
    exploded = torch.randn(256, 32, generator=torch.Generator().manual_seed(1)) * 6e18
    assert float((exploded.double() ** 2).sum(1).mean()) > 1e39
    with pytest.raises(FloatingPointError, match=r"exploded by step 3 \(lr 1e\+03\).*run again"):
        check_not_constant(exploded, step=3, lr=1000.0)


def test_the_guard_passes_fresh_and_briefly_trained_models_on_digits():
    from directclr.data import DataConfig, prepare
    from directclr.training import pretrain
    from directclr.training.monitoring import probe_representation

    dataset, card = prepare(DataConfig(max_samples=300))
    images, labels = dataset["train_images"][:256], dataset["train_labels"][:256]
    config = PretrainingConfig(width=4, d0=8, epochs=1, batch_size=64, warmup_epochs=0,
                               lidar_samples=0)  # fmt: skip
    fresh = build_model(config, 1, card["channel_mean"], card["channel_std"], config.seed)
    r, _ = probe_representation(fresh, images)
    # All-positive ReLU outputs: every r within about 15 degrees of the mean direction, yet
    # some 400x above the guard's bound.
    assert direction_spread(r.double()) > 100 * DIRECTION_SPREAD_MIN
    check_not_constant(r, step=0, lr=1e-3)
    trained, history, _ = pretrain(
        images, labels, config, card["channel_mean"], card["channel_std"]
    )
    r, _ = probe_representation(trained, images)
    assert direction_spread(r.double()) > 100 * DIRECTION_SPREAD_MIN
    check_not_constant(r, step=4, lr=1e-3)
    assert len(history) == 1
