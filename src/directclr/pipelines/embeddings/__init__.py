"""embeddings: export r and z for train and test with the frozen model."""

from .pipeline import EXPORT_NODE, create_pipeline

__all__ = ["EXPORT_NODE", "create_pipeline"]
