"""spectrum: the paper's log spectrum of r and z, effective rank, RankMe, collapsed dimensions,
power-law decay, and the spectrum over training."""

from .pipeline import SPECTRUM_NODE, create_pipeline

__all__ = ["SPECTRUM_NODE", "create_pipeline"]
