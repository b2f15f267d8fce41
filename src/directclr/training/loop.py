"""Contrastive pretraining: one loop for every method, readable top to bottom.

Each step: draw a batch of uint8 images (already on the training device), make two
augmented views of the whole batch at once, compute (r, z) for both, apply InfoNCE to z,
and train an online linear probe on the detached r. The probe sees labels; the backbone
never does. Every ``checkpoint_every`` epochs the whole training state is checkpointed, so a
killed run started again with the same settings resumes where it stopped and, on CPU,
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from directclr.augment import augment
from directclr.batches import BatchSource, TensorBatches
from directclr.checkpoints import CheckpointStore
from directclr.devices import resolve_device, resolve_precision
from directclr.distributed import (
    all_sum,
    convert_batchnorm,
    gather_with_grad,
    init_from_environment,
    launched_world_size,
    rank_and_world,
)
from directclr.errors import BadSettingError
from directclr.losses import info_nce, paper_info_nce
from directclr.models import ContrastiveModel, build_model
from directclr.optim import build_optimizer, learning_rate, scaled_lr
from directclr.training.config import PretrainingConfig, run_key
from directclr.training.monitoring import (
    NonFiniteWatch,
    Progress,
    Recorder,
    end_of_epoch_measures,
    epoch_record,
    log_epoch,
    record,
    spectrum_history,
)
from directclr.training.processes import pretrain_in_processes
from directclr.training.state import TrainingState

logger = logging.getLogger(__name__)


def pretrain(
    images: torch.Tensor | BatchSource,
    labels: torch.Tensor | None,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None = None,
    recorder: Recorder | None = None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """Train ``config.method`` on uint8 ``images`` (N, C, H, W) with ``labels`` (the online
    probe's; -1 for unlabelled images), or on any :class:`~directclr.batches.BatchSource`
    (then ``labels`` is None), such as an image folder streamed from disk.

    Returns the model (on CPU, in eval mode), the history (a row per epoch:
    :func:`~directclr.training.monitoring.epoch_record`) and the spectrum history (the
    eigenvalues behind its rank measures: :func:`~directclr.training.monitoring.spectrum_history`).
    ``recorder`` (rank 0's) hears of the run once it is known whether training resumes
    (``start(key, rows so far)``) and of every row as it is recorded (``record(row)``).
    A FloatingPointError stops a run gone bad (non-finite loss or weights, a constant
    representation) and keeps its last good checkpoint.
    """
    if isinstance(images, torch.Tensor):
        images = TensorBatches(images, labels, config.batch_size, config.seed)
    source = images
    if config.devices > 1 and launched_world_size() == 1:
        return pretrain_in_processes(pretrain, source, config, mean, std, checkpoints, recorder)

    # -- setup: processes, device, data, precision -------------------------------------------
    device, distributed, rank, world = _join_processes(config)
    share = _share_of_batch(config, source, world)
    source.to(device)
    # channels_last: faster convolutions on CUDA, and 1.4-1.8x on CPU (oneDNN) for SmallCNN.
    channels_last = device.type in ("cuda", "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bf16, why = resolve_precision(config.precision, device, source.image_side)
    if rank == 0:
        logger.info("pretraining: %s on %s (%s)", "bf16 autocast" if bf16 else "float32",
                    device, why)  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    # -- model, online probe, optimisers -----------------------------------------------------
    run, train_model, train_probe = _training_state(
        config, source, mean, std, device, distributed, memory_format, rank
    )
    model, probe = run.model, run.probe
    probe_images = source.probe_batch(min(source.num_images, 1024), config.seed + 1)
    lidar_images = probe_images[: config.lidar_samples] if config.lidar_samples >= 2 else None
    key = run_key(config, source.fingerprint(), world, device.type, bf16)
    base_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    steps_per_epoch = source.steps_per_epoch()
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs

    # -- resume: rank 0 holds the key while the run trains, so a second run of it is refused --
    holds_key = checkpoints is not None and rank == 0
    if holds_key:
        checkpoints.hold(key)
    state = checkpoints.load(key) if checkpoints is not None and config.resume else None
    if state is not None:
        run.restore(state, rank, str(checkpoints.path(key)))
        if rank == 0:
            logger.info("pretraining: resuming %s from its checkpoint after epoch %d of %d",
                        key, run.epoch, config.epochs)  # fmt: skip
    recorder = recorder if rank == 0 else None
    if recorder is not None:
        recorder.start(key, run.history)

    # -- one epoch at a time -----------------------------------------------------------------
    progress = Progress(total_steps, run.epoch * steps_per_epoch, enabled=rank == 0)
    step = run.epoch * steps_per_epoch
    model.train()
    try:
        while run.epoch < config.epochs:
            epoch, start = run.epoch, time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            labelled = torch.zeros((), device=device)
            watch = NonFiniteWatch(device, total_steps)
            for b, (batch, batch_labels) in enumerate(source.epoch(epoch, rank, world)):
                # -- the step: two views, InfoNCE on z, the online probe on the detached r
                lr = learning_rate(step, total_steps, warmup_steps, base_lr, config.final_lr_ratio)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                views = torch.cat([
                    augment(batch, config.augmentation.view1, run.augment_rng),
                    augment(batch, config.augmentation.view2, run.augment_rng),
                ]).contiguous(memory_format=memory_format)  # fmt: skip
                with autocast:
                    r, z = train_model(views)
                loss = contrastive_loss(z, config, rank, world, share)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                logits = probe_step(train_probe, run.probe_optimizer, r[: len(batch)], batch_labels)

                loss_sum += loss.detach()
                correct += (logits.argmax(1) == batch_labels).sum()
                labelled += (batch_labels >= 0).sum()
                watch.update(step, loss.detach(), lr)
                step += 1
                # Look at the device (a host sync) only every progress_every steps.
                if step % config.progress_every == 0 or b == steps_per_epoch - 1:
                    watch.check(epoch)
                    seconds = time.perf_counter() - start
                    progress.update(step, loss.item(), (b + 1) * config.batch_size / seconds)
            run.epoch = epoch + 1

            # -- record the epoch, and stop if the model has gone bad ------------------------
            loss_sum, correct, labelled = (all_sum(t) for t in (loss_sum, correct, labelled))
            row = epoch_record(
                run.epoch, step, float(loss_sum), float(correct), float(labelled), lr,
                steps=steps_per_epoch * world, images=steps_per_epoch * config.batch_size,
                seconds=time.perf_counter() - start,
            )  # fmt: skip
            measures, spectra = end_of_epoch_measures(
                model, probe, probe_images, lidar_images, config, run.epoch, step, lr
            )
            row |= measures
            if spectra is not None:
                run.spectra.append(spectra)
            run.history.append(row)
            if recorder is not None:
                record(recorder, row)
            if rank == 0:
                log_epoch(row, config.epochs)

            # -- save ------------------------------------------------------------------------
            if checkpoints is not None and (
                run.epoch % config.checkpoint_every == 0 or run.epoch == config.epochs
            ):
                run.save(checkpoints, key, rank)
    finally:
        progress.close()
        if holds_key:
            checkpoints.release(key)
    model.eval()
    return model.cpu(), pd.DataFrame(run.history), spectrum_history(run.spectra)


def contrastive_loss(
    z: torch.Tensor, config: PretrainingConfig, rank: int, world: int, share: int
) -> torch.Tensor:
    """InfoNCE of this process's anchors (its ``share`` of each view), in float32 whatever
    the autocast, against negatives from the whole global batch: ``z`` holds this process's
    two views stacked, and one gather brings every process's."""
    z1, z2 = gather_with_grad(z.float()).view(world, 2, share, -1).unbind(1)
    z1, z2 = z1.reshape(world * share, -1), z2.reshape(world * share, -1)
    anchors = (rank * share, (rank + 1) * share)
    if config.loss == "paper":
        return paper_info_nce(z1, z2, config.temperature, anchors)
    return info_nce(z1, z2, config.temperature, anchors)


def probe_step(
    probe: nn.Module, optimizer: torch.optim.Optimizer, r: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """One step of the online linear probe on the detached representation ``r`` (labels
    train the probe, never the backbone; -1 marks an unlabelled image). Returns its logits."""
    logits = probe(r.detach().float())
    probe_loss = F.cross_entropy(logits, labels, ignore_index=-1)
    optimizer.zero_grad(set_to_none=True)
    probe_loss.backward()
    optimizer.step()
    return logits


def _join_processes(config: PretrainingConfig) -> tuple[torch.device, bool, int, int]:
    """The training device, whether this process is one of several (torchrun, or
    ``devices: N``), its rank and the number of processes."""
    device = resolve_device(config.device)
    distributed = init_from_environment(device.type, config.dist_timeout_s)
    rank, world = rank_and_world()
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        # Fastest convolution algorithms for the (fixed) batch shape, and TF32 matmuls; CPU
        # numerics are left as they are.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    return device, distributed, rank, world


def _share_of_batch(config: PretrainingConfig, source: BatchSource, world: int) -> int:
    """Each process's share of the batch, after checking the batch fits the processes and
    the data."""
    if config.batch_size % world:
        raise BadSettingError(
            f"batch_size={config.batch_size} must split evenly over {world} processes"
        )
    if source.num_images < config.batch_size:
        raise BadSettingError(
            f"batch_size={config.batch_size} is larger than the training set "
            f"({source.num_images} images); lower batch_size"
        )
    return config.batch_size // world


def _training_state(
    config: PretrainingConfig,
    source: BatchSource,
    mean: list[float],
    std: list[float],
    device: torch.device,
    distributed: bool,
    memory_format: torch.memory_format,
    rank: int,
) -> tuple[TrainingState, nn.Module, nn.Module]:
    """A fresh training state on ``device``, and the modules the step calls: the model and
    probe themselves, or their DistributedDataParallel wrappers."""
    model = build_model(config, source.channels, mean, std, config.seed)
    if distributed and device.type == "cuda":
        # Batch statistics of the global batch, from one all_reduce per layer and no host
        # sync (nn.SyncBatchNorm syncs the host in every layer).
        model = convert_batchnorm(model)
    model = model.to(device, memory_format=memory_format)
    probe = nn.Linear(model.backbone.output_dim, source.num_classes).to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast: every process computes the same BatchNorm statistics (of the
    # global batch on CUDA; GroupNorm or per-process ones otherwise).
    ddp = dict(device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True)
    optimizer = build_optimizer(
        config.optimizer, model, scaled_lr(config.lr, config.batch_size, config.lr_scaling),
        config.weight_decay, config.momentum,
        fused=device.type == "cuda" and config.optimizer != "lars",
    )  # fmt: skip
    state = TrainingState(
        model=model,
        probe=probe,
        optimizer=optimizer,
        probe_optimizer=torch.optim.AdamW(probe.parameters(), lr=config.probe_lr),
        source=source,
        augment_rng=torch.Generator().manual_seed(config.seed + 1_000_003 * rank),
    )
    if not distributed:
        return state, model, probe
    return state, DDP(model, **ddp), DDP(probe, **ddp)
