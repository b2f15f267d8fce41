"""Artifacts that prove themselves: a damaged file is refused when read, naming the version
file and the stage to rerun; a failed write leaves no version behind; a run that could not
save its outputs stops before computing anything."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from directclr.models import ModelConfig, build_model, model_artifact

REPO = Path(__file__).resolve().parents[1]
RUN = "directclr"


def _catalog(root: Path, save_version: str) -> DataCatalog:
    """The project's catalog entries of files (those not wrapped for MLflow), with their
    files under ``root``: what a run reads and writes, without a Kedro session."""
    entries = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    own = {}
    for name, entry in entries.items():
        if "${" in str(entry.get("filepath", "${")):
            continue
        own[name] = {
            key: str(root / value) if key in ("filepath", "card") else value
            for key, value in entry.items()
        }
    return DataCatalog.from_config(own, save_version=save_version)


def _version_file(root: Path, relative: str) -> Path:
    """The newest version file of the artifact at ``relative`` (e.g. data/x/y.pt)."""
    folder = root / relative
    return sorted(folder.iterdir())[-1] / folder.name


def _overwrite(path: Path, at: int, size: int) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + size] = random.Random(0).randbytes(size)
    path.write_bytes(bytes(data))


def test_a_dataset_altered_after_data_prep_is_refused(tmp_path, digits):
    dataset, card = digits
    catalog = _catalog(tmp_path, "2026-01-01T00.00.00.000Z")
    catalog.save("dataset", dataset)
    catalog.save("dataset_card", card)
    assert torch.equal(catalog.load("dataset")["train_images"], dataset["train_images"])
    # 1,000 bytes of pixels overwritten: the file still reads as a torch file.
    path = _version_file(tmp_path, "data/03_primary/dataset.pt")
    _overwrite(path, path.read_bytes().find(dataset["train_images"][5].numpy().tobytes()), 1000)
    with pytest.raises(DatasetError, match="does not match its dataset card") as refused:
        _catalog(tmp_path, "2026-01-02T00.00.00.000Z").load("dataset")
    assert str(path) in str(refused.value) and "Rerun data_prep" in str(refused.value)


def _model(width: int = 4) -> dict:
    config = ModelConfig(method="directclr", backbone="small_cnn", width=width, d0=8)
    return model_artifact(build_model(config, 1, [0.5], [0.25]), config, 1)


def _embeddings(rows: int = 64) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        f"{split}_{kind}": torch.randn(rows, 32, generator=generator)
        for split in ("train", "test")
        for kind in ("r", "z")
    } | {"train_labels": torch.arange(rows) % 10, "test_labels": torch.arange(rows) % 10}


def test_damaged_or_impossible_torch_artifacts_are_refused_naming_the_stage(tmp_path):
    catalog = _catalog(tmp_path, "2026-01-01T00.00.00.000Z")
    embeddings = _embeddings()
    catalog.save(f"{RUN}.embeddings", embeddings)
    catalog.save(f"{RUN}.model", _model())
    reader = _catalog(tmp_path, "2026-01-02T00.00.00.000Z")
    assert torch.equal(reader.load(f"{RUN}.embeddings")["train_r"], embeddings["train_r"])

    # 4 KB of random bytes in r's tensor data: NaN and infinities among the floats.
    path = _version_file(tmp_path, f"data/07_model_output/{RUN}/embeddings.pt")
    _overwrite(path, path.read_bytes().find(embeddings["train_r"][1].numpy().tobytes()), 4096)
    with pytest.raises(DatasetError, match=r"NaN or infinite values \(in train_r\)") as refused:
        reader.load(f"{RUN}.embeddings")
    assert str(path) in str(refused.value) and _rerun("embeddings") in str(refused.value)

    # A model whose first convolution lost an output channel.
    path = _version_file(tmp_path, f"data/06_models/{RUN}/model.pt")
    model = torch.load(path, weights_only=True)
    name = next(key for key, value in model["state_dict"].items() if value.shape[0] > 1)
    model["state_dict"][name] = model["state_dict"][name][:-1]
    torch.save(model, path)
    with pytest.raises(DatasetError, match=f"can rebuild .*size mismatch for {name}") as refused:
        reader.load(f"{RUN}.model")
    assert str(path) in str(refused.value) and _rerun("pretraining")[:-1] in str(refused.value)


def test_embeddings_of_the_wrong_shape_are_refused(tmp_path):
    wrong = _embeddings() | {"test_z": torch.zeros(3, 32)}
    _catalog(tmp_path, "2026-01-01T00.00.00.000Z").save(f"{RUN}.embeddings", wrong)
    with pytest.raises(DatasetError, match=r"test_z of shape \(3, 32\) for 64 test labels"):
        _catalog(tmp_path, "2026-01-02T00.00.00.000Z").load(f"{RUN}.embeddings")


HISTORY = pd.DataFrame({
    "epoch": [1, 1], "step": [4, 4], "vectors": ["r", "z"], "index": [1, 1],
    "eigenvalue": [0.5, 0.25],
})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "relative", "damage", "problem", "stage"),
    [
        (f"{RUN}.spectrum_metrics", f"data/08_reporting/{RUN}/spectrum_metrics.json",
         b'{"effective_rank": ', "is not valid JSON", "spectrum"),
        ("dataset_card", "data/03_primary/dataset_card.json",
         random.Random(1).randbytes(900), "is not valid JSON", "data_prep"),
        (f"{RUN}.spectrum_history", f"data/07_model_output/{RUN}/spectrum_history.csv",
         b'epoch,step\n1,"2\n3,4,5\n', "is not a readable CSV table", "pretraining"),
        (f"{RUN}.spectrum_history", f"data/07_model_output/{RUN}/spectrum_history.csv",
         b"a,b\n1,2\n", "lacks the columns epoch, step, vectors, index, eigenvalue",
         "pretraining"),
    ],
    ids=["invalid_json", "random_card", "malformed_csv", "wrong_columns"],
)  # fmt: skip
def test_damaged_json_and_csv_name_the_file_and_the_stage(
    tmp_path, name, relative, damage, problem, stage
):
    data = HISTORY if name.endswith("history") else {"effective_rank": 3.5, "classes": ["a"]}
    _catalog(tmp_path, "2026-01-01T00.00.00.000Z").save(name, data)
    reader = _catalog(tmp_path, "2026-01-02T00.00.00.000Z")
    loaded = reader.load(name)
    assert loaded.equals(data) if isinstance(data, pd.DataFrame) else loaded == data
    path = _version_file(tmp_path, relative)
    path.write_bytes(damage)
    with pytest.raises(DatasetError, match=problem) as refused:
        reader.load(name)
    assert str(path) in str(refused.value) and _rerun(stage) in str(refused.value)


def _rerun(stage: str) -> str:
    return f"Rerun the stage that writes it ({stage})"


def test_previews_for_kedro_viz_still_work(tmp_path):
    catalog = _catalog(tmp_path, "2026-01-01T00.00.00.000Z")
    catalog.save(f"{RUN}.spectrum_history", HISTORY)
    catalog.save(f"{RUN}.spectrum_metrics", {"effective_rank": 3.5})
    reader = _catalog(tmp_path, "2026-01-02T00.00.00.000Z")
    assert reader.get(f"{RUN}.spectrum_history").preview(nrows=1)["data"] == [[1, 4, "r", 1, 0.5]]
    assert reader.get(f"{RUN}.spectrum_metrics").preview() == '{"effective_rank": 3.5}'


# Run in a process of its own: a file-size limit (as on a full disk, a write past 64 KB fails
# with EFBIG) applies to every file the process writes, the test runner's log included.
FULL_DISK_SAVE = """
import resource, signal, sys
from pathlib import Path
import pandas as pd
from kedro.io.core import DatasetError
from tests.test_artifact_checks import _catalog, _embeddings

root, names = Path(sys.argv[1]), sys.argv[2:]
data = {name: _embeddings(rows=1024) if name.endswith("embeddings") else pd.DataFrame(
    {"eigenvalue": range(20_000)}) for name in names}
for name in names:
    _catalog(root, "2026-01-01T00.00.00.000Z").save(name, data[name])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
for name in names:
    try:
        _catalog(root, "2026-01-02T00.00.00.000Z").save(name, data[name])
    except DatasetError as error:
        print(name, "refused:", str(error).replace(chr(10), " "))
"""


def test_a_write_that_fails_midway_leaves_no_version(tmp_path):
    names = [f"{RUN}.embeddings", f"{RUN}.spectrum"]  # a torch file and a CSV table
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SAVE, str(tmp_path), *names],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused = [line for line in done.stdout.splitlines() if "refused:" in line]
    assert len(refused) == 2 and all("File too large" in line for line in refused)
    for name in names:
        folder = Path(str(_catalog(tmp_path, "x").get(name)._filepath))
        # Neither a half-written file nor a temporary one: the next run reads the complete one.
        assert [p.name for p in folder.iterdir()] == ["2026-01-01T00.00.00.000Z"]
        assert os.listdir(folder / "2026-01-01T00.00.00.000Z") == [folder.name]


def test_a_run_that_cannot_write_its_outputs_stops_before_any_work(project):
    """data/06_models (where checkpoints and the model go) and data/08_reporting are files
    here, so no folder can be made under them: before the check, training ran and its save
    failed after it; as root, os.access grants every write, so a read-only folder would not
    show this."""
    data = project / "data"
    data.mkdir()
    (data / "06_models").write_text("not a folder")
    (data / "08_reporting").write_text("not a folder")
    bootstrap_project(project)
    params = {
        "data_prep": {"max_samples": 300},
        "pretraining": {"epochs": 1, "width": 4, "warmup_epochs": 0},
        RUN: {"pretraining": {"d0": 8}},
    }
    with (
        pytest.raises(PermissionError, match="stops before computing anything") as refused,
        KedroSession.create(project_path=project, runtime_params=params) as session,
    ):
        session.run(pipeline_names=[RUN])
    message = str(refused.value)
    models, reporting = data / "06_models" / RUN, data / "08_reporting" / RUN
    assert f"{data / '06_models'} is a file, not a folder, so {models / 'checkpoints'}" in message
    assert f"{data / '08_reporting'} is a file, not a folder, so {reporting}/" in message
    assert sorted(p.name for p in data.rglob("*")) == ["06_models", "08_reporting"]


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, every folder is writable")
def test_a_read_only_reporting_folder_stops_the_run_before_any_work(project):
    reporting = project / "data" / "08_reporting"
    reporting.mkdir(parents=True)
    reporting.chmod(0o555)
    bootstrap_project(project)
    with (
        pytest.raises(PermissionError, match=f"{reporting} is not writable"),
        KedroSession.create(project_path=project, runtime_params={}) as session,
    ):
        session.run(pipeline_names=[RUN])
    assert not (project / "data" / "03_primary").exists()
