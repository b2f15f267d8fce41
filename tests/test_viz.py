"""kedro-viz builds offline and its graph shows every stage and artifact, with layers; it
previews the figures, tables and metrics that exist, and warns about nothing."""

import json
import re
import subprocess
import sys

from kedro.io.core import generate_timestamp
from matplotlib.figure import Figure

# kedro-viz's own note on a project that has never run: no `kedro run` recorded its events.
NEVER_RAN = "kedro_pipeline_events.json not found"


def write_version(project, relative: str, version: str) -> str:
    """The path of version ``version`` of the versioned artifact ``data/<relative>``."""
    path = project / "data" / relative / version / relative.rpartition("/")[2]
    path.parent.mkdir(parents=True)
    return str(path)


def test_viz_build_shows_stages_artifacts_layers_and_previews_without_warnings(project):
    # One artifact of each kind, as a run writes them: metrics, a table and a figure.
    version = generate_timestamp()
    metrics = write_version(project, "08_reporting/directclr/linear_eval_metrics.json", version)
    with open(metrics, "w") as f:
        json.dump({"linear_probe_accuracy_r": 0.9}, f)
    table = write_version(project, "08_reporting/directclr/spectrum.csv", version)
    with open(table, "w") as f:
        f.write("vectors,split,index,eigenvalue\nr,train,0,1.5\nr,train,1,0.5\n")
    figure = write_version(project, "08_reporting/directclr/spectrum.png", version)
    Figure(figsize=(1, 1)).savefig(figure)

    done = subprocess.run([sys.executable, "-m", "kedro", "viz", "build", "--include-previews"],
                          cwd=project, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    output = done.stdout + done.stderr
    # No warning: a logged one, or a Python warning. Before, every comparison's per-seed
    # parameters were "not found" (130) and every dataset not written yet "could not be
    # previewed" (some 600).
    warned = [
        line for line in output.splitlines()
        if re.search(r"\bWARNING\b|Warning:", line) and NEVER_RAN not in line
    ]  # fmt: skip
    assert not warned, "\n".join(warned[:10])

    api = project / "build" / "api"
    graph = json.loads((api / "main").read_text())
    groups = {n["id"] for n in graph["nodes"] if n["type"] == "modularPipeline"}
    stages = ("pretraining", "embeddings", "spectrum", "linear_eval")
    assert {"data_prep", "directclr"} | {f"directclr.{s}" for s in stages} <= groups
    data = {n["name"]: n for n in graph["nodes"] if n["type"] == "data"}
    artifacts = {
        "dataset": "primary", "dataset_card": "primary", "directclr.model": "models",
        "directclr.checkpoints": "intermediate", "directclr.embeddings": "model_output",
        "directclr.training_history": "model_output", "directclr.spectrum": "reporting",
        "directclr.spectrum_metrics": "reporting", "directclr.spectrum_figure": "reporting",
        "directclr.linear_eval_metrics": "reporting",
        "directclr.confusion_matrix_figure": "reporting",
    }  # fmt: skip
    for name, layer in artifacts.items():
        assert name in data, name
        assert data[name]["layer"] == layer, name
    assert {"primary", "models", "model_output", "reporting"} <= set(graph["layers"])
    pipelines = {p["id"] for p in graph["pipelines"]}
    assert {"directclr", "simclr", "compare", "__default__"} <= pipelines

    def panel(name: str) -> dict:
        return json.loads((api / "nodes" / data[name]["id"]).read_text())

    # What exists is previewed; what no run has written yet is not (and not warned about).
    assert panel("directclr.linear_eval_metrics")["preview_type"] == "JSONPreview"
    assert panel("directclr.spectrum")["preview_type"] == "TablePreview"
    assert panel("directclr.spectrum_figure")["preview_type"] == "ImagePreview"
    assert panel("directclr.spectrum_metrics").get("preview") is None

    # A comparison's per-seed run shows its parameters: the run's own, with its seed.
    compare = json.loads((api / "pipelines" / "compare").read_text())
    (seed_0,) = [n for n in compare["nodes"]
                 if n["name"] == "params:compare.simclr.seed_0.pretraining"]  # fmt: skip
    shown = json.loads((api / "nodes" / seed_0["id"]).read_text())["parameters"]
    assert shown == {"compare.simclr.seed_0.pretraining": {"method": "simclr", "seed": 0}}
