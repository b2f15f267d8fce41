"""comparison: several runs side by side on one prepared dataset (the paper's tables)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
