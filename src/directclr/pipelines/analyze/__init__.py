"""analyze: import a pretrained encoder the user brings, as a run's model, so the embeddings,
spectrum and linear_eval stages measure its collapse."""

from .pipeline import CONVERT_NODE, IMPORT_NODE, create_pipeline

__all__ = ["CONVERT_NODE", "IMPORT_NODE", "create_pipeline"]
