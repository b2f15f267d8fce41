"""kedro-viz builds offline and its graph shows every stage and artifact, with layers."""

import json
import subprocess
import sys


def test_viz_build_shows_stages_artifacts_and_layers(project):
    done = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=project,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    graph = json.loads((project / "build" / "api" / "main").read_text())
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
