"""``devices: N`` from a single process: start a job of N training processes and wait for it.

torchrun starts the processes itself; this is for a plain ``kedro run`` (or a notebook) that
asks for several devices.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import pandas as pd
import torch

from directclr.batches import BatchSource, source_from_spec
from directclr.checkpoints import CheckpointStore
from directclr.distributed import rank_and_world, spawn
from directclr.models import ContrastiveModel, build_model
from directclr.training.config import PretrainingConfig
from directclr.training.monitoring import Recorder

Pretrain = Callable[..., tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]]


def _train_in_process(
    job: str, pretrain: Pretrain, config: PretrainingConfig, recorder: Recorder | None
) -> None:
    """One process of a job started by :func:`pretrain_in_processes`; rank 0 leaves the
    result beside the job file for the parent."""
    spec = torch.load(job, weights_only=True)
    store = CheckpointStore(spec["checkpoints"]) if spec["checkpoints"] else None
    model, history, spectra = pretrain(
        source_from_spec(spec["source"]), None, config, spec["mean"], spec["std"], store,
        recorder,
    )  # fmt: skip
    if rank_and_world()[0] == 0:
        torch.save({"state_dict": model.state_dict(), "history": history.to_dict("list"),
                    "spectra": spectra.to_dict("list")}, job + ".result")  # fmt: skip


def pretrain_in_processes(
    pretrain: Pretrain,
    source: BatchSource,
    config: PretrainingConfig,
    mean: list[float],
    std: list[float],
    checkpoints: CheckpointStore | None,
    recorder: Recorder | None = None,
) -> tuple[ContrastiveModel, pd.DataFrame, pd.DataFrame]:
    """Run ``pretrain`` (the loop) in a job of ``config.devices`` processes (nccl on CUDA,
    gloo on CPU), wait for it, and return rank 0's result. The data travel as a
    weights-only file; the settings, already validated, as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.pt")
        torch.save({
            "source": source.spec(),
            "mean": list(mean),
            "std": list(std),
            "checkpoints": str(checkpoints.directory) if checkpoints else None,
        }, job)  # fmt: skip
        spawn(_train_in_process, config.devices, (job, pretrain, config, recorder))
        result = torch.load(job + ".result", weights_only=True)
    model = build_model(config, source.channels, mean, std, config.seed)
    model.load_state_dict(result["state_dict"])
    return model.eval(), pd.DataFrame(result["history"]), pd.DataFrame(result["spectra"])
