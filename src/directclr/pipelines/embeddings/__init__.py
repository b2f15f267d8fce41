"""embeddings: export r and z for train and test with the frozen model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
