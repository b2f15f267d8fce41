"""The parameter sections the pipelines read, each with the settings class that types it.

:data:`SETTINGS_SECTIONS` is the one list of them: a section of ``conf/base/parameters_*.yml``
(or the part of one that a node reads typed: ``analyze.encoder``) and the library class that
validates it. The lists kept elsewhere are read from it: the settings a ``--params`` key may
name (:func:`directclr.framework.parameters.known_settings`), the sections every run's stages
share (:data:`directclr.pipeline_registry.SHARED_SECTIONS`) and those a model's MLflow run
records (:func:`directclr.framework.tracking.recorded_sections`).

The classes are named by import path and imported on use (:func:`settings_class`): reading
the sections, as the registry does, imports none of them.
"""

from __future__ import annotations

from importlib import import_module

from pydantic import BaseModel

SETTINGS_SECTIONS: dict[str, str] = {
    "data_prep": "directclr.data:DataConfig",
    "pretraining": "directclr.training:PretrainingConfig",
    "embeddings": "directclr.export:EmbeddingsConfig",
    "spectrum": "directclr.collapse:SpectrumConfig",
    "linear_eval": "directclr.evaluation:LinearEvalConfig",
    "analyze.encoder": "directclr.checkpoint_import:EncoderConfig",
    "selection": "directclr.selection:SelectionConfig",
    "toy_strong_augmentation": "directclr.toys:StrongAugmentationConfig",
    "toy_implicit_regularization": "directclr.toys:ImplicitRegularizationConfig",
}


def settings_class(section: str) -> type[BaseModel]:
    """The settings class of ``section``, one of :data:`SETTINGS_SECTIONS`."""
    module, _, name = SETTINGS_SECTIONS[section].partition(":")
    return getattr(import_module(module), name)
