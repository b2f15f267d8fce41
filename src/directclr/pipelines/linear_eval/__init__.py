"""linear_eval: a scikit-learn linear probe on frozen r, with raw pixels beside it."""

from .pipeline import PROBE_NODE, create_pipeline

__all__ = ["PROBE_NODE", "create_pipeline"]
