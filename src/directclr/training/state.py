"""Everything a pretraining run changes, and the one pair of functions that writes it to a
checkpoint and reads it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from directclr.batches import BatchSource
from directclr.checkpoints import CheckpointStore, first_non_finite
from directclr.distributed import all_gather_objects, barrier
from directclr.errors import TrainingDiverged
from directclr.models import ContrastiveModel


@dataclass
class TrainingState:
    """Everything training changes and a checkpoint keeps. :meth:`checkpoint` and
    :meth:`restore` are the one pair that writes and reads it."""

    model: ContrastiveModel
    probe: nn.Linear
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    source: BatchSource
    augment_rng: torch.Generator
    history: list[dict] = field(default_factory=list)
    spectra: list[dict] = field(default_factory=list)
    epoch: int = 0

    @property
    def projector_rng(self) -> torch.Generator | None:
        return getattr(self.model.projector, "generator", None)

    def checkpoint(self, key: str, augment_states: list[torch.Tensor]) -> dict[str, Any]:
        """A weights-only dict of the state; ``augment_states`` holds every process's
        augmentation generator, in rank order."""
        projector_rng = self.projector_rng
        return {
            "key": key,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "probe": self.probe.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "probe_optimizer": self.probe_optimizer.state_dict(),
            "source": self.source.state(),
            "augment_rng": augment_states,
            "projector_rng": projector_rng.get_state() if projector_rng else None,
            "history": self.history,
            "spectra": self.spectra,
        }

    def restore(self, state: dict[str, Any], rank: int, where: str) -> None:
        """Continue from :meth:`checkpoint`'s dict, after checking that it is finite: a
        checkpoint holding NaN or infinity (``where`` names it) is never reused."""
        bad = first_non_finite(state["model"]) or first_non_finite(state["probe"])
        if bad is not None:
            raise TrainingDiverged(
                f"the checkpoint {where} holds non-finite values ({bad}, saved after epoch "
                f"{state['epoch']}) and is not reused; delete it, or set resume=false to train "
                f"this run afresh"
            )
        self.model.load_state_dict(state["model"])
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        self.source.set_state(state["source"])
        self.augment_rng.set_state(state["augment_rng"][rank])
        if self.projector_rng is not None:
            self.projector_rng.set_state(state["projector_rng"])
        self.history, self.spectra, self.epoch = state["history"], state["spectra"], state["epoch"]

    def save(self, store: CheckpointStore, key: str, rank: int) -> None:
        """Checkpoint the state in ``store`` under ``key``: every process hands in its
        augmentation generator, rank 0 writes, and no process goes on before the checkpoint
        is complete (every process resumes from the same one)."""
        augment_states = all_gather_objects(self.augment_rng.get_state())
        if rank == 0:
            store.save(key, self.checkpoint(key, augment_states))
        barrier()
