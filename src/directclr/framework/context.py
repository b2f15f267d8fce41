"""The project's Kedro context (``settings.py``'s ``CONTEXT_CLASS``), for what reads the
catalog without running a pipeline, as kedro-viz does: the catalog holds the per-seed
parameters the hooks hand the nodes of a run, and kedro-viz previews only the datasets that
have data.
"""

from __future__ import annotations

from typing import Any

from kedro.framework.context import CatalogCommandsMixin, KedroContext
from kedro.io import DataCatalog
from kedro.io.core import AbstractVersionedDataset, DatasetError

from directclr.framework.parameters import seed_run_parameters


class ProjectContext(KedroContext):
    """Kedro's context (``settings.py``'s ``CONTEXT_CLASS``), with what the catalog needs when
    it is read without a run, as kedro-viz reads it:

    * the parameters of each comparison's seed namespaces, ``params:<comparison>.<run>.seed_<n>.
      pretraining``, which no parameters file holds (:func:`seed_run_parameters`). Without them
      kedro-viz finds no such parameter, warning once for each. A run replaces them with the
      run's validated settings before any node runs (:class:`CheckRunBeforeWork`), as it does
      ``params:<run>.pretraining``;
    * the catalog read outside a run (``context.catalog``: kedro-viz, notebooks, ``kedro
      catalog``; ``kedro run`` builds its own) is a :class:`PreviewingCatalog`, which does not
      let kedro-viz preview a dataset that has no data yet.
    """

    def _get_parameters(self) -> dict[str, Any]:
        """Kedro's parameters for the catalog (``params:<name>`` for every name of the files),
        with those of the comparisons' seed namespaces."""
        parameters = super()._get_parameters()
        for name, value in seed_run_parameters(self.params).items():
            parameters.setdefault(f"params:{name}", value)
        return parameters

    @property
    def catalog(self) -> PreviewingCatalog:
        return self._get_catalog(catalog_class=PreviewingCatalog)


class PreviewingCatalog(DataCatalog, CatalogCommandsMixin):
    """Kedro's catalog (with the ``kedro catalog`` commands' methods, as Kedro composes it),
    which switches kedro-viz's preview off (``metadata: {kedro-viz: {preview: false}}``) for a
    dataset that has no data yet, as it hands the dataset out. kedro-viz previews a dataset by
    loading it: one whose pipeline has not run fails, and kedro-viz warns for each, naming the
    exception (some 600 with only the default pipeline run). A dataset that has data keeps its
    preview and the rest of its metadata (layer, preview_args)."""

    def get(self, key: str, fallback_to_runtime_pattern: bool = False, version=None):
        dataset = super().get(key, fallback_to_runtime_pattern, version)
        if version is None and dataset is not None:
            _preview_only_data(dataset)
        return dataset


def _preview_only_data(dataset) -> None:
    """Switch kedro-viz's preview of ``dataset`` off if it could preview it but there is no
    data (once off, it is not looked at again)."""
    if not callable(getattr(dataset, "preview", None)):
        return
    metadata = dict(getattr(dataset, "metadata", None) or {})
    viz = metadata.get("kedro-viz") or {}
    if viz.get("preview") is False or _has_data(dataset):
        return
    metadata["kedro-viz"] = {**viz, "preview": False}
    dataset.metadata = metadata


def _has_data(dataset) -> bool:
    """Whether ``dataset`` has data to load: a version on disk for a versioned one (listed, so
    that the version a later load picks is not fixed here), else its ``exists()``."""
    from directclr.framework.versions import newest_version

    try:
        if isinstance(dataset, AbstractVersionedDataset):
            return newest_version(dataset) is not None
        return bool(dataset.exists())
    except DatasetError:
        return False
