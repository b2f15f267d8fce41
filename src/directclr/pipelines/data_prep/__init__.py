"""data_prep: load a source into a split, validated dataset artifact and its card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
