"""What ``precision`` resolves to, and that bf16 autocast leaves the loss and r in float32."""

from pathlib import Path

import pytest
import torch

from directclr import devices
from directclr.devices import AUTO_PRECISION_ENV, cpu_bf16_support, resolve_precision
from directclr.export import EmbeddingsConfig, export_embeddings
from directclr.models import build_model, encode, model_artifact, model_from_artifact
from directclr.training import PretrainingConfig, pretrain
from directclr.training import loop as training

CPU = torch.device("cpu")


def test_the_suite_pins_auto_to_fp32():
    # conftest sets it for every test, so none depends on the CPU running the suite.
    bf16, why = resolve_precision("auto", CPU)
    assert bf16 is False and why.endswith(f"{AUTO_PRECISION_ENV}=fp32")


def test_explicit_precisions_are_what_they_say():
    assert resolve_precision("fp32", CPU) == (False, "precision=fp32")
    assert resolve_precision("bf16", CPU) == (True, "precision=bf16")
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("side", [None, 8, 15, 16, 28, 224])
def test_auto_on_cpu_is_bf16_with_native_support_and_images_large_enough(monkeypatch, native, side):
    monkeypatch.delenv(AUTO_PRECISION_ENV)
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (native, "what the CPU says"))
    bf16, why = resolve_precision("auto", CPU, side)
    assert bf16 is (native and side is not None and side >= devices.CPU_BF16_MIN_SIDE)
    assert "what the CPU says" in why
    if native:
        assert (f"{side} px" if side else "unknown size") in why


def test_training_resolves_auto_with_its_images_side(monkeypatch, digits):
    # The 8x8 digits stay float32 under auto even on a CPU with native bf16; 16x16 do not.
    monkeypatch.delenv(AUTO_PRECISION_ENV)
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (True, "native"))
    monkeypatch.setattr(training, "resolve_precision", lambda *a: seen.append(a) or (False, ""))
    seen = []
    images, labels = digits[0]["train_images"][:64], digits[0]["train_labels"][:64]
    config = PretrainingConfig(width=4, d0=8, epochs=1, batch_size=64, warmup_epochs=0,
                               device="cpu", rank_every=1)  # fmt: skip
    pretrain(images, labels, config, torch.zeros(1), torch.ones(1))
    assert seen == [("auto", CPU, 8)]


def test_auto_is_fp32_on_other_devices(monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV)
    assert resolve_precision("auto", torch.device("mps")) == (False, "precision=auto on mps: fp32")


def test_the_environment_overrides_auto_only(monkeypatch):
    monkeypatch.setenv(AUTO_PRECISION_ENV, "bf16")
    bf16, why = resolve_precision("auto", CPU)
    assert bf16 is True and why.endswith(f"{AUTO_PRECISION_ENV}=bf16")
    assert resolve_precision("fp32", CPU) == (False, "precision=fp32")
    monkeypatch.setenv(AUTO_PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=f"{AUTO_PRECISION_ENV}='half'"):
        resolve_precision("auto", CPU)


def test_cpu_support_is_detected_with_or_without_torchs_probes(monkeypatch):
    native, why = cpu_bf16_support()
    assert isinstance(native, bool) and why
    # A torch without the run-time probes: the kernel's CPU flags decide.
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    fallback, why = cpu_bf16_support()
    assert isinstance(fallback, bool) and why
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return
    flags = cpuinfo.read_text().split()
    assert fallback == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bf16_autocast_feeds_the_loss_float32_and_encodes_float32(digits, monkeypatch):
    dataset, card = digits
    seen = []
    loss = training.paper_info_nce

    def spy(z1, z2, *args, **kwargs):
        seen.append((z1.dtype, z2.dtype))
        return loss(z1, z2, *args, **kwargs)

    monkeypatch.setattr(training, "paper_info_nce", spy)
    config = PretrainingConfig(
        width=4, d0=8, epochs=1, batch_size=64, warmup_epochs=0, precision="bf16", device="cpu"
    )
    images, labels = dataset["train_images"][:128], dataset["train_labels"][:128]
    model, history, spectra = pretrain(
        images, labels, config, card["channel_mean"], card["channel_std"]
    )
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert history["loss"].notna().all()
    r, z = encode(model, images, device="cpu")
    assert r.dtype == z.dtype == torch.float32
    assert spectra["eigenvalue"].dtype.kind == "f"


def _frozen(card) -> torch.nn.Module:
    config = PretrainingConfig(width=4, d0=8, projector_hidden_dim=16, projector_dim=8)
    return build_model(config, 1, card["channel_mean"], card["channel_std"], seed=0).eval()


@torch.no_grad()
def _fp32_forward(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model(images.float() / 255)


def test_encode_computes_in_the_precision_it_is_given(digits):
    """fp32 is the plain float32 forward, bit for bit; bf16 autocast (which runs on any CPU)
    moves the numbers, so the setting reaches the forward. r and z are float32 either way."""
    dataset, card = digits
    model, images = _frozen(card), dataset["test_images"]
    r32, z32 = _fp32_forward(model, images)
    r, z = encode(model, images, device="cpu", precision="fp32")
    assert torch.equal(r, r32) and torch.equal(z, z32)
    r, z = encode(model, images, device="cpu", precision="bf16")
    assert r.dtype == z.dtype == torch.float32
    assert not torch.equal(r, r32) and not torch.equal(z, z32)
    torch.testing.assert_close(r, r32, rtol=0.05, atol=0.05)  # bf16 keeps about 3 digits


@pytest.mark.parametrize(
    ("trained", "auto", "float32"),
    [("fp32", "bf16", True), ("bf16", "fp32", False), (None, "fp32", True), (None, "bf16", False)],
)
def test_the_export_computes_in_the_precision_the_model_trained_with(
    digits, monkeypatch, trained, auto, float32
):
    """A model file records its run's precision, and the export uses it whatever ``auto``
    would be here; a file without one (an imported encoder, an older file) reads as auto."""
    dataset, card = digits
    monkeypatch.setenv(AUTO_PRECISION_ENV, auto)
    config = PretrainingConfig(width=4, d0=8, projector_hidden_dim=16, projector_dim=8,
                               precision=trained or "auto")  # fmt: skip
    artifact = model_artifact(_frozen(card), config, 1)
    if trained is None:
        del artifact["precision"]
    assert artifact.get("precision") == trained
    out = export_embeddings(artifact, dataset, EmbeddingsConfig(lidar={"samples": 0}))
    r32, z32 = _fp32_forward(model_from_artifact(artifact), dataset["test_images"])
    assert out["test_r"].dtype == out["test_z"].dtype == torch.float32
    assert torch.equal(out["test_r"], r32) is float32
    assert torch.equal(out["test_z"], z32) is float32
