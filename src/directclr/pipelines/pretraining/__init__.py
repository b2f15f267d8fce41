"""pretraining: contrastive training of the backbone (and projector) with one method."""

from .pipeline import PRETRAIN_NODE, create_pipeline

__all__ = ["PRETRAIN_NODE", "create_pipeline"]
