"""Each run reads back exactly the artifact versions it wrote, and one version of the rest.

Kedro loads a versioned dataset whose load version is not pinned at the newest version on disk
*at the moment it loads*, and version folders are named after the session that wrote them
(its start time). Two ``kedro run`` in one project folder at once therefore read each other's
artifacts: the run that started first loads the model, embeddings, ... of the run that
started second whenever that one has already saved them, and writes metrics about another
run's model into its own version folder, exit status 0. :class:`PinRunVersions` fixes, for
every versioned dataset the run reads or writes:

* when the run starts, the version it loads: the one ``--load-versions`` names, else the
  newest on disk at that moment (so ``--only-missing-outputs`` still sees what exists), else
  none yet (the run then writes it before reading it);
* when the run saves it, the run's own save version from then on: every later stage loads
  what this run wrote, whatever was saved meanwhile.

A run started meanwhile can neither swap an input nor replace an output under it.
"""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset, Version


def set_version(dataset: AbstractVersionedDataset, version: Version) -> None:
    """Give a built dataset ``version``.

    Kedro fixes a dataset's ``Version`` when the catalog builds it (from ``--load-versions``)
    and has no public way to change it afterwards; ``catalog.load(name, version)`` pins one
    load only, and the runner loads by name. So the version is set where Kedro's own
    constructor stores it, ``AbstractVersionedDataset._version``: the one place the project
    writes a Kedro private attribute (:func:`pin` here, and the MLflow adapter's wrapped
    datasets).
    """
    dataset._version = version


def pin(dataset: AbstractVersionedDataset, load: str | None) -> None:
    """Load ``dataset`` at version ``load`` (None: the newest when it loads) from now on; its
    save version (the session's) stays."""
    set_version(dataset, Version(load, dataset.resolve_save_version()))


def versioned(catalog, name: str) -> AbstractVersionedDataset | None:
    """The catalog's dataset ``name`` (a ``{run}.*`` factory entry is resolved and built), when
    it is versioned; None otherwise."""
    dataset = catalog.get(name) if name in catalog else None
    if isinstance(dataset, AbstractVersionedDataset) and dataset.resolve_save_version():
        return dataset
    return None


def newest_version(dataset: AbstractVersionedDataset) -> str | None:
    """The newest version of ``dataset`` on disk now, or None when there is none."""
    return next(iter(dataset.list_versions(full_path=False)), None)


class PinRunVersions:
    """Pins every versioned dataset of the run's pipeline: at start to ``--load-versions``'
    version or the newest one, and to the run's own save version as soon as the run saves
    it (see the module's docstring).

    Its ``before_pipeline_run`` runs before every other hook's (``tryfirst``, registered
    last), so the checks and tracking that read the dataset card read the pinned one.
    """

    def __init__(self) -> None:
        self._catalog: Any = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._catalog = catalog
        load_versions = run_params.get("load_versions") or {}
        for name in sorted(pipeline.datasets()):
            dataset = versioned(catalog, name)
            if dataset is not None:
                pin(dataset, load_versions.get(name) or newest_version(dataset))

    @hook_impl
    def before_dataset_saved(self, dataset_name: str) -> None:
        # Before the save, so that Kedro's check after it ("Save version ... did not match
        # load version") sees the version just written.
        dataset = versioned(self._catalog, dataset_name) if self._catalog is not None else None
        if dataset is not None:
            pin(dataset, dataset.resolve_save_version())

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._catalog = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._catalog = None
