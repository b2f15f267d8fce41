"""A run killed with SIGKILL resumes from its checkpoint and ends with the same weights."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from directclr.batches import TensorBatches
from directclr.checkpoints import CheckpointStore
from directclr.devices import resolve_precision
from directclr.training import PretrainingConfig, pretrain, run_key

SETTINGS = dict(width=4, d0=8, epochs=5, batch_size=64, warmup_epochs=1, checkpoint_every=1,
                projector_hidden_dim=16, projector_dim=8, method="random_subset")  # fmt: skip

CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    import directclr.training as training
    import directclr.training.loop as loop
    from directclr.checkpoints import CheckpointStore
    from directclr.data import DataConfig, prepare

    settings, store_dir, out, slow = eval(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if slow == "slow":  # a long step, so the parent can kill it in the middle of an epoch
        fast = loop.augment
        def augment(*args, **kwargs):
            time.sleep(0.1)
            return fast(*args, **kwargs)
        loop.augment = augment
    dataset, card = prepare(DataConfig())
    config = training.PretrainingConfig(**settings)
    model, history, _ = training.pretrain(
        dataset["train_images"][:256], dataset["train_labels"][:256], config,
        card["channel_mean"], card["channel_std"], checkpoints=CheckpointStore(store_dir))
    torch.save(model.state_dict(), out)
    """
)


def _cpu_key(config: PretrainingConfig, fingerprint: str) -> str:
    """The key a one-process CPU run of ``config`` checkpoints under."""
    bf16, _ = resolve_precision(config.precision, torch.device("cpu"))
    return run_key(config, fingerprint, 1, "cpu", bf16)


def _child(tmp_path, slow: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), repr(SETTINGS), str(tmp_path / "ckpt"),
            str(tmp_path / "final.pt"), slow]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # a job of several processes
def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, digits):
    dataset, card = digits
    images, labels = dataset["train_images"][:256], dataset["train_labels"][:256]
    config = PretrainingConfig(**SETTINGS)
    fingerprint = TensorBatches(images, labels, 64, 0).fingerprint()
    checkpoint = CheckpointStore(tmp_path / "ckpt").path(_cpu_key(config, fingerprint))

    child = _child(tmp_path, "slow")
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert child.poll() is None, child.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the next epoch (each step takes >= 0.2 s)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_at < SETTINGS["epochs"]
    assert not (tmp_path / "final.pt").exists()

    resumed = _child(tmp_path, "fast")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == SETTINGS["epochs"]
    assert [row["epoch"] for row in state["history"]] == list(range(1, SETTINGS["epochs"] + 1))

    uninterrupted, _, _ = pretrain(images, labels, config, card["channel_mean"],
                                   card["channel_std"])  # fmt: skip
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for name, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0, msg=name)


def test_resume_false_starts_afresh_and_a_damaged_checkpoint_is_refused(tmp_path, digits):
    dataset, card = digits
    images, labels = dataset["train_images"][:128], dataset["train_labels"][:128]
    store = CheckpointStore(tmp_path)
    config = PretrainingConfig(**{**SETTINGS, "epochs": 1})
    pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    path = store.path(_cpu_key(config, TensorBatches(images, labels, 64, 0).fingerprint()))
    assert path.exists()
    path.write_bytes(b"damaged")
    fresh = config.model_copy(update={"resume": False})
    pretrain(images, labels, fresh, card["channel_mean"], card["channel_std"], store)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    path.write_bytes(b"damaged")
    try:
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    except RuntimeError as err:
        assert "resume=false" in str(err)
    else:
        raise AssertionError("a damaged checkpoint was loaded")


def test_run_key_names_the_device_type_and_the_resolved_precision():
    config = PretrainingConfig(**SETTINGS)
    keys = {run_key(config, "data", 1, device, bf16)
            for device in ("cpu", "cuda", "mps") for bf16 in (False, True)}  # fmt: skip
    assert len(keys) == 6  # a CUDA run never resumes a CPU checkpoint, nor bf16 an fp32 one


def test_a_checkpoint_is_kept_under_the_precision_the_run_computed_in(tmp_path, digits):
    dataset, card = digits
    images, labels = dataset["train_images"][:128], dataset["train_labels"][:128]
    store = CheckpointStore(tmp_path)
    config = PretrainingConfig(**{**SETTINGS, "epochs": 1, "precision": "bf16", "device": "cpu"})
    pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    fingerprint = TensorBatches(images, labels, 64, 0).fingerprint()
    assert store.path(run_key(config, fingerprint, 1, "cpu", True)).exists()
    assert not store.path(run_key(config, fingerprint, 1, "cpu", False)).exists()
    assert not store.path(run_key(config, fingerprint, 1, "cuda", True)).exists()
