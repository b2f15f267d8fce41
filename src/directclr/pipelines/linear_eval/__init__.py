"""linear_eval: a scikit-learn linear probe on frozen r, with raw pixels beside it."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
