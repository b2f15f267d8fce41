"""Contrastive pretraining: one loop for every method, readable top to bottom.

Each step: draw a batch of uint8 images (already on the training device), make two
augmented views of the whole batch at once, compute (r, z) for both, apply InfoNCE to z,
and train an online linear probe on the detached r. The probe sees labels; the backbone
never does. Every ``checkpoint_every`` epochs the whole training state is checkpointed, so a
killed run started again with the same settings resumes where it stopped and, on CPU,
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from directclr.analysis import covariance_spectrum, effective_rank
from directclr.augment import TwoViewAugmentation, augment
from directclr.batches import BatchSource, TensorBatches, source_from_spec
from directclr.checkpoints import CheckpointStore
from directclr.distributed import (
    all_gather_objects,
    all_sum,
    barrier,
    gather_with_grad,
    init_from_environment,
    launched_world_size,
    rank_and_world,
    spawn,
)
from directclr.losses import info_nce
from directclr.models import (
    LOW_RANK_METHODS,
    Backbone,
    ContrastiveModel,
    Method,
    Stem,
    build_backbone,
    build_projector,
    representation_dim,
)
from directclr.optim import build_optimizer, learning_rate, scaled_lr

logger = logging.getLogger(__name__)

# Settings that change how a run is executed, not what it computes: a checkpoint made under
# other values of these still resumes.
EXECUTION_SETTINGS = {
    "device", "checkpoint_every", "resume", "progress_every", "num_workers", "devices",
    "dist_timeout_s",
}  # fmt: skip


class ModelConfig(BaseModel):
    """Architecture: everything needed to rebuild the model from its state dict."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "directclr"
    backbone: Backbone = "small_cnn"
    width: int = Field(64, ge=1, description="channels of small_cnn's first block (r: 8*width)")
    zero_init_residual: bool = Field(False, description="ResNets: last BN of each block at 0")
    norm: Literal["batch", "group"] = Field(
        "batch", description="backbone normalisation; group has no batch statistics"
    )
    stem: Stem = Field(
        "auto",
        description="ResNets: auto (resnet18 CIFAR stem, resnet50 ImageNet), cifar, imagenet",
    )
    d0: int = Field(64, ge=1, description="embedding size for directclr and the low-rank rows")
    projector_hidden_dim: int = Field(512, ge=1)
    projector_dim: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _check_d0(self) -> ModelConfig:
        dim = representation_dim(self.backbone, self.width)
        if self.method in LOW_RANK_METHODS and self.d0 > dim:
            raise ValueError(
                f"d0={self.d0} is larger than the representation ({dim} dimensions for "
                f"backbone {self.backbone}); set d0 between 1 and {dim}"
            )
        return self


class PretrainingConfig(ModelConfig):
    """Every knob of a pretraining run, validated before any compute."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["lars", "sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, ge=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="scale lr with batch size: lr*B/256 (linear) or lr*sqrt(B/256)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: int = Field(2, ge=0)
    temperature: float = Field(0.1, gt=0)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that support it, else fp32"
    )
    augmentation: TwoViewAugmentation = TwoViewAugmentation()
    probe_lr: float = Field(1e-2, gt=0, description="learning rate of the online linear probe")
    rank_every: int = Field(1, ge=1, description="epochs between spectrum/effective-rank records")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    resume: bool = Field(True, description="continue from this run's checkpoint if there is one")
    progress_every: int = Field(20, ge=1, description="steps between progress-bar updates")
    num_workers: int = Field(2, ge=0, description="DataLoader workers decoding an image folder")
    devices: int = Field(
        1, ge=1, description="processes to train on (one per GPU; gloo on CPU); torchrun overrides"
    )
    dist_timeout_s: float = Field(600, gt=0, description="a stuck collective fails after this")

    @model_validator(mode="after")
    def _check_device(self) -> PretrainingConfig:
        if self.device != "auto":
            resolve_device(self.device)
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size={self.batch_size} must split evenly over devices={self.devices}"
            )
        uses_cuda = self.device.startswith("cuda") or (
            self.device == "auto" and torch.cuda.is_available()
        )
        if self.devices > 1 and uses_cuda and self.devices > torch.cuda.device_count():
            raise ValueError(
                f"devices={self.devices} asked for, but {torch.cuda.device_count()} GPUs are "
                f"present; lower devices"
            )
        return self


def merge_settings(recipe: dict, overrides: dict | None) -> dict:
    """``recipe`` with ``overrides`` laid over it, nested dicts merged key by key."""
    merged = dict(recipe)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_config(recipe: dict, overrides: dict | None) -> PretrainingConfig:
    """A run's validated settings: the shared training recipe plus the run's own changes."""
    return PretrainingConfig.model_validate(merge_settings(recipe, overrides))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is present; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {name!r} asked for, but Apple MPS is not present; use auto or cpu"
        )
    return device


def build_model(
    config: ModelConfig, in_channels: int, mean: list[float], std: list[float], seed: int = 0
) -> ContrastiveModel:
    """The model a config describes, with fresh weights drawn from ``seed``; ``config`` has
    already checked d0 against the representation."""
    torch.manual_seed(seed)
    backbone = build_backbone(
        config.backbone,
        in_channels,
        config.width,
        config.zero_init_residual,
        config.norm,
        config.stem,
    )
    projector = build_projector(
        config.method,
        backbone.output_dim,
        config.d0,
        config.projector_hidden_dim,
        config.projector_dim,
        seed,
    )
    return ContrastiveModel(backbone, projector, mean, std)


def run_key(config: PretrainingConfig, data_fingerprint: str, world: int = 1) -> str:
    """A name for a run: a hash of its settings (less execution-only ones), its data and
    the number of processes (each process draws its own augmentations)."""
    h = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude=EXECUTION_SETTINGS)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(data_fingerprint.encode())
    h.update(f"world={world}".encode())
    return f"{config.method}-{h.hexdigest()[:16]}"


def _use_bf16(config: PretrainingConfig, device: torch.device) -> bool:
    if config.precision == "bf16":
        return True
    return config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


@torch.no_grad()
def _probe_spectra(model: ContrastiveModel, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    r, z = model(images.float() / 255)
    model.train(was_training)
    return covariance_spectrum(r.float().cpu()), covariance_spectrum(z.float().cpu())


class _Progress:
    """A progress bar (step, loss, images/s, time left) on a terminal; silent otherwise."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("pretraining"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task("", total=total, completed=done, status="")
            self.bar.start()

    def update(self, step: int, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            status = f"loss {loss:.4f}  {images_per_s:,.0f} img/s"
            self.bar.update(self.task, completed=step, status=status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _log(rank: int, message: str, *args) -> None:
    if rank == 0:
        logger.info(message, *args)


def _train_in_process(job: str) -> None:
    """One process of a job started by :func:`_pretrain_in_processes`; rank 0 leaves the
    result beside the job file for the parent."""
    spec = torch.load(job, weights_only=True)
    store = CheckpointStore(spec["checkpoints"]) if spec["checkpoints"] else None
    config = PretrainingConfig.model_validate(spec["config"])
    model, history, spectra = pretrain(
        source_from_spec(spec["source"]), None, config, spec["mean"], spec["std"], store
    )
    if rank_and_world()[0] == 0:
        torch.save({"state_dict": model.state_dict(), "history": history.to_dict("list"),
                    "spectra": spectra.to_dict("list")}, job + ".result")  # fmt: skip


def _pretrain_in_processes(
    source: BatchSource,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """``devices: N`` from a single process: start a job of N processes (nccl on CUDA,
    gloo on CPU), wait for it, and return rank 0's result. The job's inputs travel as a
    weights-only file, not through pickled arguments."""
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.pt")
        torch.save({
            "source": source.spec(),
            "config": config.model_dump(mode="json"),
            "mean": list(mean),
            "std": list(std),
            "checkpoints": str(checkpoints.directory) if checkpoints else None,
        }, job)  # fmt: skip
        spawn(_train_in_process, config.devices, (job,))
        result = torch.load(job + ".result", weights_only=True)
    model = build_model(config, source.channels, mean, std, config.seed)
    model.load_state_dict(result["state_dict"])
    return model.eval(), pd.DataFrame(result["history"]), pd.DataFrame(result["spectra"])


def pretrain(
    images: torch.Tensor | BatchSource,
    labels: torch.Tensor | None,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None = None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """Train ``config.method`` on uint8 ``images`` (N, C, H, W) with ``labels`` (the online
    probe's; -1 for unlabelled images), or on any :class:`~directclr.batches.BatchSource`
    (then ``labels`` is None), such as an image folder streamed from disk.

    Returns the model (on CPU, in eval mode), the history (one row per epoch: loss,
    learning rate, online-probe accuracy on the training batches, images/s, and every
    ``rank_every`` epochs the effective rank of r and z on a fixed batch of un-augmented
    images) and the spectrum history (the covariance eigenvalues behind those ranks, long
    format: epoch, step, vectors, index, eigenvalue).
    """
    if isinstance(images, torch.Tensor):
        source = TensorBatches(images, labels, config.batch_size, config.seed)
    else:
        source = images
    if config.devices > 1 and launched_world_size() == 1:
        return _pretrain_in_processes(source, config, mean, std, checkpoints)
    device = resolve_device(config.device)
    distributed = init_from_environment(device.type, config.dist_timeout_s)
    rank, world = rank_and_world()
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} must split evenly over {world} processes")
    share = config.batch_size // world
    source.to(device)
    n = source.num_images
    if n < config.batch_size:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set ({n} images); "
            f"lower batch_size"
        )
    bf16 = _use_bf16(config, device)
    # channels_last: faster convolutions on CUDA, and 1.4-1.8x on CPU (oneDNN) for SmallCNN.
    channels_last = device.type in ("cuda", "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    model = build_model(config, source.channels, mean, std, config.seed)
    if distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=memory_format)
    probe = nn.Linear(model.backbone.output_dim, source.num_classes).to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    train_model = DDP(model, device_ids=device_ids) if distributed else model
    train_probe = DDP(probe, device_ids=device_ids) if distributed else probe
    base_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    optimizer = build_optimizer(
        config.optimizer, model, base_lr, config.weight_decay, config.momentum,
        fused=device.type == "cuda" and config.optimizer != "lars",
    )  # fmt: skip
    probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=config.probe_lr)
    augment_rng = torch.Generator(device=device).manual_seed(config.seed + 1_000_003 * rank)
    projector_rng = getattr(model.projector, "generator", None)

    probe_images = source.probe_batch(min(n, 1024), config.seed + 1)
    key = run_key(config, source.fingerprint(), world)

    steps_per_epoch = source.steps_per_epoch()
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs
    rows: list[dict] = []
    spectra: list[dict] = []
    start_epoch = 0

    state = checkpoints.load(key) if checkpoints is not None and config.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        probe_optimizer.load_state_dict(state["probe_optimizer"])
        source.set_state(state["source"])
        augment_rng.set_state(state["augment_rng"][rank])
        if projector_rng is not None:
            projector_rng.set_state(state["projector_rng"])
        rows, spectra, start_epoch = state["history"], state["spectra"], state["epoch"]
        _log(
            rank,
            "pretraining: resuming %s from its checkpoint after epoch %d of %d",
            key, start_epoch, config.epochs,
        )  # fmt: skip

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    progress = _Progress(total_steps, start_epoch * steps_per_epoch, enabled=rank == 0)
    step = start_epoch * steps_per_epoch
    model.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            labelled = torch.zeros((), device=device)
            first_bad = torch.full((), -1, device=device, dtype=torch.long)
            lrs: dict[int, float] = {}
            for b, (batch, batch_labels) in enumerate(source.epoch(epoch, rank, world)):
                lr = lrs[step] = learning_rate(step, total_steps, warmup_steps, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                views = torch.cat([
                    augment(batch, config.augmentation.view1, augment_rng),
                    augment(batch, config.augmentation.view2, augment_rng),
                ]).contiguous(memory_format=memory_format)  # fmt: skip
                with autocast:
                    r, z = train_model(views)
                z1, z2 = z.chunk(2)
                # Negatives from the whole global batch; this process's anchors only.
                z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
                anchors = (rank * share, (rank + 1) * share)
                loss = info_nce(z1, z2, config.temperature, anchors)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                logits = train_probe(r.detach().float()[: len(batch)])
                probe_loss = F.cross_entropy(logits, batch_labels, ignore_index=-1)
                probe_optimizer.zero_grad(set_to_none=True)
                probe_loss.backward()
                probe_optimizer.step()

                loss_sum += loss.detach()
                correct += (logits.argmax(1) == batch_labels).sum()
                labelled += (batch_labels >= 0).sum()
                step += 1
                # Track the first non-finite step on the device; look at it (a host sync)
                # only every progress_every steps and at the end of the epoch.
                first_bad = torch.where(
                    (first_bad < 0) & ~torch.isfinite(loss.detach()), step - 1, first_bad
                )
                if step % config.progress_every == 0 or b == steps_per_epoch - 1:
                    flagged = [s for s in all_gather_objects(int(first_bad)) if s >= 0]
                    if flagged:
                        bad = min(flagged)
                        raise FloatingPointError(
                            f"the loss became non-finite at step {bad} (epoch {epoch + 1}, lr "
                            f"{lrs[bad]:.3g}); the last checkpoint is kept. Lower lr, raise "
                            f"temperature or set precision=fp32, then run again"
                        )
                    seconds = time.perf_counter() - start
                    progress.update(step, loss.item(), (b + 1) * config.batch_size / seconds)
            loss_sum, correct, labelled = (all_sum(t) for t in (loss_sum, correct, labelled))
            seconds = time.perf_counter() - start
            mean_loss = float(loss_sum) / (steps_per_epoch * world)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "loss": mean_loss,
                "lr": lr,
                "online_probe_accuracy": float(correct) / max(float(labelled), 1.0),
                "images_per_s": steps_per_epoch * config.batch_size / seconds,
                "seconds": seconds,
                "effective_rank_r": float("nan"),
                "effective_rank_z": float("nan"),
            }
            if (epoch + 1) % config.rank_every == 0 or epoch + 1 == config.epochs:
                lam_r, lam_z = _probe_spectra(model, probe_images)
                row["effective_rank_r"] = effective_rank(lam_r)
                row["effective_rank_z"] = effective_rank(lam_z)
                record = {"epoch": epoch + 1, "step": step}
                spectra.append(
                    record | {"r": torch.from_numpy(lam_r), "z": torch.from_numpy(lam_z)}
                )
            rows.append(row)
            _log(
                rank,
                "epoch %d/%d  loss %.4f  lr %.2e  online probe %.3f  %.0f img/s  "
                "erank r %.1f z %.1f",
                row["epoch"], config.epochs, row["loss"], row["lr"],
                row["online_probe_accuracy"], row["images_per_s"], row["effective_rank_r"],
                row["effective_rank_z"],
            )  # fmt: skip
            checkpoint_now = checkpoints is not None and (
                (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
            )
            if checkpoint_now:
                augment_states = all_gather_objects(augment_rng.get_state())
            if checkpoint_now and rank == 0:
                checkpoints.save(key, {
                    "key": key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "probe": probe.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "probe_optimizer": probe_optimizer.state_dict(),
                    "source": source.state(),
                    "augment_rng": augment_states,
                    "projector_rng": projector_rng.get_state() if projector_rng else None,
                    "history": rows,
                    "spectra": spectra,
                })  # fmt: skip
            if checkpoint_now:
                barrier()  # every process resumes from the same, complete checkpoint
    finally:
        progress.close()
    model.eval()
    return model.cpu(), pd.DataFrame(rows), spectrum_history(spectra)


def spectrum_history(spectra: list[dict]) -> pd.DataFrame:
    """Long-format table (epoch, step, vectors, index, eigenvalue) of recorded spectra."""
    frames = [
        pd.DataFrame({
            "epoch": record["epoch"],
            "step": record["step"],
            "vectors": kind,
            "index": np.arange(1, len(record[kind]) + 1),
            "eigenvalue": record[kind].numpy(),
        })
        for record in spectra
        for kind in ("r", "z")
    ]  # fmt: skip
    columns = ["epoch", "step", "vectors", "index", "eigenvalue"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


@torch.no_grad()
def encode(
    model: ContrastiveModel,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 1024,
    device: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Representations r and embeddings z with the frozen model, of uint8 ``images`` (a
    tensor, cut into batches of ``batch_size``, or any iterable of uint8 batches)."""
    target = resolve_device(device)
    model = model.to(target).eval()
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    rs, zs = [], []
    for batch in images:
        r, z = model(batch.to(target).float() / 255)
        rs.append(r.float().cpu())
        zs.append(z.float().cpu())
    model.cpu()
    return torch.cat(rs), torch.cat(zs)


def model_artifact(model: ContrastiveModel, config: ModelConfig, in_channels: int) -> dict:
    """A weights-only-loadable dict: the architecture config and the state dict."""
    architecture = ModelConfig.model_validate(
        config.model_dump(include=set(ModelConfig.model_fields))
    )
    return {
        "config": architecture.model_dump(),
        "in_channels": in_channels,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def model_from_artifact(artifact: dict) -> ContrastiveModel:
    """Rebuild a frozen model from :func:`model_artifact`'s dict."""
    config = ModelConfig.model_validate(artifact["config"])
    channels = int(artifact["in_channels"])
    model = build_model(config, channels, [0.0] * channels, [1.0] * channels)
    model.load_state_dict(artifact["state_dict"])
    return model.eval()
