"""random_init: the control of every comparison, the same architecture never trained."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
