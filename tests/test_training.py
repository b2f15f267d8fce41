import pandas as pd
import pytest
import torch

from directclr.devices import resolve_device
from directclr.models import encode, model_artifact, model_from_artifact
from directclr.optim import learning_rate
from directclr.projectors import uses_d0
from directclr.training import PretrainingConfig, pretrain

TINY = dict(width=4, epochs=2, batch_size=64, warmup_epochs=1, projector_hidden_dim=16,
            projector_dim=8)  # fmt: skip


def tiny(**overrides) -> dict:
    """TINY with ``overrides``; d0 = 8 for the methods that have one."""
    settings = {**TINY, **overrides}
    return {"d0": 8, **settings} if uses_d0(settings.get("method", "directclr")) else settings


def _train(digits, **overrides):
    dataset, card = digits
    config = PretrainingConfig(**tiny(**overrides))
    images, labels = dataset["train_images"][:256], dataset["train_labels"][:256]
    model, history, _ = pretrain(images, labels, config, card["channel_mean"], card["channel_std"])
    return model, history


def test_schedule_warms_up_linearly_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5, abs=0.02)
    assert lrs[-1] < 0.001
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_pretraining_records_history_and_is_deterministic(digits):
    model_a, history_a = _train(digits)
    model_b, history_b = _train(digits)
    assert list(history_a.columns) == [
        "epoch", "step", "loss", "lr", "online_probe_accuracy", "images_per_s", "seconds",
        "effective_rank_r", "rankme_r", "nesum_r", "participation_ratio_r", "normalised_std_r",
        "effective_rank_z", "rankme_z", "nesum_z", "participation_ratio_z", "normalised_std_z",
        "lidar_r", "lidar_z",
    ]  # fmt: skip
    assert (history_a["nesum_r"] >= 1).all() and (history_a["participation_ratio_z"] >= 1).all()
    assert history_a["normalised_std_r"].between(0, 1).all()
    assert history_a["epoch"].tolist() == [1, 2]
    assert history_a["step"].tolist() == [4, 8]
    assert (history_a["loss"] > 0).all()
    assert history_a["effective_rank_r"].between(1, 32).all()
    assert history_a["effective_rank_z"].between(1, 8).all()
    pd.testing.assert_series_equal(history_a["loss"], history_b["loss"])
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("method", ["simclr", "directclr"])
def test_model_artifact_round_trip_gives_the_same_outputs(digits, method):
    model, _ = _train(digits, method=method, epochs=1)
    config = PretrainingConfig(**tiny(method=method))
    artifact = model_artifact(model, config, in_channels=1)
    rebuilt = model_from_artifact(artifact)
    images = digits[0]["test_images"][:50]
    for a, b in zip(encode(model, images), encode(rebuilt, images), strict=True):
        torch.testing.assert_close(a, b)


def test_a_non_finite_loss_stops_the_run_naming_step_and_lr_and_keeps_the_last_good_checkpoint(
    digits, monkeypatch, tmp_path
):
    from directclr.checkpoints import CheckpointStore
    from directclr.losses import paper_info_nce

    calls = []

    def nan_from_step_5(z1, z2, temperature, anchors=None):
        calls.append(1)
        loss = paper_info_nce(z1, z2, temperature, anchors)
        return loss * float("nan") if len(calls) > 5 else loss

    monkeypatch.setattr("directclr.training.loop.paper_info_nce", nan_from_step_5)
    # 4 steps per epoch: step 5 is the second step of epoch 2; lr there is known.
    expected_lr = learning_rate(5, 8, 4, 1e-3)
    dataset, card = digits
    config = PretrainingConfig(**tiny())
    images, labels = dataset["train_images"][:256], dataset["train_labels"][:256]
    store = CheckpointStore(tmp_path)
    with pytest.raises(FloatingPointError, match=rf"at step 5 \(epoch 2, lr {expected_lr:.3g}\)"):
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    # Epoch 1 was good and stays saved; the bad epoch 2 was not.
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_batch_larger_than_the_dataset_is_rejected_before_training(digits):
    with pytest.raises(ValueError, match="batch_size=512 is larger than the training set"):
        _train(digits, batch_size=512)


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "nope"), ("batch_size", 1), ("temperature", 0.0), ("epochs", 0), ("lr", -1.0),
     ("d0", 0), ("optimizer", "rmsprop"), ("backbone", "vgg")],
)  # fmt: skip
def test_bad_parameters_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        PretrainingConfig(**{field: value})


def test_absent_device_is_rejected():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is present"):
            PretrainingConfig(device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("toaster")
    assert resolve_device("cpu").type == "cpu"


def test_bf16_autocast_trains_with_finite_loss(digits):
    _, history = _train(digits, precision="bf16", epochs=1)
    assert history["loss"].notna().all() and (history["loss"] > 0).all()


def test_lars_with_linear_lr_scaling_trains(digits):
    _, history = _train(digits, optimizer="lars", lr=0.3, lr_scaling="linear", epochs=1)
    assert history["lr"].iloc[0] <= 0.3 * 64 / 256 + 1e-12
    assert (history["loss"] > 0).all()


def test_training_is_silent_on_stderr_when_not_a_terminal(digits, capfd):
    _train(digits, epochs=1)
    assert capfd.readouterr().err == ""


def test_spectrum_history_is_long_format(digits):
    dataset, card = digits
    config = PretrainingConfig(**tiny(rank_every=1))
    _, history, spectra = pretrain(dataset["train_images"][:256], dataset["train_labels"][:256],
                                   config, card["channel_mean"], card["channel_std"])  # fmt: skip
    assert list(spectra.columns) == ["epoch", "step", "vectors", "index", "eigenvalue"]
    assert len(spectra) == 2 * (32 + 8)
    assert (spectra["eigenvalue"] >= 0).all()
    first = spectra[(spectra.epoch == 1) & (spectra.vectors == "r")]["eigenvalue"].to_numpy()
    assert (first[:-1] >= first[1:]).all()


def test_unlabelled_images_train_the_backbone_but_not_the_probe(digits):
    from directclr.batches import training_batches

    dataset, card = digits
    stl_like = {
        "train_images": dataset["train_images"][:128],
        "train_labels": dataset["train_labels"][:128],
        "unlabeled_images": dataset["test_images"][:128],
    }
    source = training_batches(stl_like, batch_size=64, seed=0)
    assert source.num_images == 256 and source.num_classes == 10
    assert int((source.labels == -1).sum()) == 128
    config = PretrainingConfig(**tiny(epochs=1))
    _, history, _ = pretrain(source, None, config, card["channel_mean"], card["channel_std"])
    assert history["step"].tolist() == [4]
    assert 0 <= history["online_probe_accuracy"].iloc[0] <= 1


def test_the_data_fingerprint_hashes_the_images_without_copying_them():
    import tracemalloc

    from directclr.batches import TensorBatches

    images = torch.zeros(2000, 3, 32, 32, dtype=torch.uint8)  # 6 MB
    source = TensorBatches(images, torch.zeros(2000, dtype=torch.long), 64, 0)
    tracemalloc.start()
    source.fingerprint()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_devices_n_hands_the_processes_a_file_not_the_images(digits, monkeypatch):
    import directclr.training.processes as training

    seen = []

    def spawn(fn, processes, args):
        seen.append(args)
        raise KeyboardInterrupt  # stop here: only what the children would receive matters

    monkeypatch.setattr(training, "spawn", spawn)
    dataset, card = digits
    config = PretrainingConfig(**tiny(devices=2, device="cpu"))
    with pytest.raises(KeyboardInterrupt):
        pretrain(dataset["train_images"][:256], dataset["train_labels"][:256], config,
                 card["channel_mean"], card["channel_std"])  # fmt: skip
    (args,) = seen
    assert isinstance(args[0], str)  # the job file's path
    assert not any(isinstance(arg, torch.Tensor) for arg in args)
    (settings,) = [arg for arg in args if isinstance(arg, PretrainingConfig)]
    assert not any(isinstance(v, torch.Tensor) for v in settings.model_dump().values())
