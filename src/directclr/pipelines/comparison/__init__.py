"""comparison: several runs side by side on one prepared dataset (the paper's tables)."""

from .pipeline import REPORT_NODE, create_pipeline

__all__ = ["REPORT_NODE", "create_pipeline"]
