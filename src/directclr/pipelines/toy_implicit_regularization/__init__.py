"""toy_implicit_regularization: deeper linear networks collapse even with weak augmentation,
as adjacent layers align (Sec. 5 of the paper); 1, 2 and 3 layers side by side."""

from .pipeline import PLOT_NODE, SWEEP_NODE, create_pipeline

__all__ = ["PLOT_NODE", "SWEEP_NODE", "create_pipeline"]
