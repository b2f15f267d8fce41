"""pretraining: contrastive training of the backbone (and projector) with one method."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
