"""The analysis notebook runs headless against a project that has run, so it cannot rot."""

import shutil

import nbformat
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from nbclient import NotebookClient

from tests.conftest import REPO

TINY = {
    "data_prep": {"max_samples": 200},
    "pretraining": {"epochs": 2, "batch_size": 64, "width": 4, "warmup_epochs": 0},
    "directclr": {"pretraining": {"d0": 8}},
    "linear_eval": {"C_grid": [1.0], "max_iter": 200, "raw_pixels": False},
}


def test_analysis_notebook_draws_the_figures_from_the_catalog(project):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=TINY) as session:
        session.run(pipeline_names=["directclr"])
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    path = project / "notebooks" / "collapse_analysis.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()  # fmt: skip
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 3  # spectra, training history, spectrum over training
    text = "".join(out.get("text", "") for out in outputs)
    assert "effective rank of r" in text and "linear probe on r" in text
    assert "No comparison yet" in text
