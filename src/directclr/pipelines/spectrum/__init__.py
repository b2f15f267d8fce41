"""spectrum: the paper's log spectrum of r and z, effective rank, collapsed dimensions."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
