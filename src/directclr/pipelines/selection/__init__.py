"""selection: which label-free metric predicts accuracy, over the runs of finished comparisons."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
