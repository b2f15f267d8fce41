"""analyze: import a pretrained encoder the user brings, as a run's model, so the embeddings,
spectrum and linear_eval stages measure its collapse."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
