"""random_init: the control of every comparison, the same architecture never trained."""

from .pipeline import INITIALISE_NODE, create_pipeline

__all__ = ["INITIALISE_NODE", "create_pipeline"]
