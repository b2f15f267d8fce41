"""data_prep: load a source into a split, validated dataset artifact and its card."""

from .pipeline import PREPARE_NODE, create_pipeline

__all__ = ["PREPARE_NODE", "create_pipeline"]
