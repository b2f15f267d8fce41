"""toy_strong_augmentation: one linear layer collapses when augmentation noise outweighs the
data variance (Sec. 4 of the paper); predicted (the theory's X) against observed collapse."""

from .pipeline import PLOT_NODE, SWEEP_NODE, create_pipeline

__all__ = ["PLOT_NODE", "SWEEP_NODE", "create_pipeline"]
