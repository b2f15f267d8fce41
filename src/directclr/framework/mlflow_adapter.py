"""The one place the project reaches past kedro-mlflow's public surface, and why.

Everywhere else the project uses kedro-mlflow's public surface only (its hook's
``mlflow_config`` and ``run_id``, ``MlflowArtifactDataset`` and its ``run_id``) and MLflow
through ``MlflowClient``. One thing has no public way:

* **The catalog's version on a logged artifact.** ``MlflowArtifactDataset`` builds the dataset
  it wraps from its definition without a version, and Kedro drops a ``version`` written into
  a definition. The catalog's entry is the one versioned (``versioned: true`` on it: a wrapped
  dataset versioned by itself would take a save version of its own, which Kedro's catalog
  refuses), so :func:`set_version` gives the wrapped dataset the version Kedro handed to the
  entry, in the attribute its own constructor would have set: ``_version``, of Kedro's
  ``AbstractVersionedDataset``, on the instance kedro-mlflow made.

Written for kedro-mlflow :data:`KEDRO_MLFLOW_VERSIONS`; ``tests/test_mlflow_adapter.py``
fails on any other version, so that an upgrade checks this module first.
"""

from __future__ import annotations

from directclr.framework.versions import set_version

__all__ = ["KEDRO_MLFLOW_VERSIONS", "set_version"]

KEDRO_MLFLOW_VERSIONS = ">=2.0,<2.1"
