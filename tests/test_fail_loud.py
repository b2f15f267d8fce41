"""Failures that once passed silently, each reproduced as a new user would meet it."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io.core import DatasetError
from PIL import Image

from directclr.checkpoints import CheckpointStore, RefusedFileError
from directclr.data import DataConfig, prepare
from directclr.evaluation import knn_accuracy
from directclr.framework.datasets import TorchDataset
from directclr.framework.parameters import UnknownSettingError
from directclr.training import (
    PretrainingConfig,
    SettingsError,
    check_not_constant,
    pretrain,
    run_settings,
)

QUICK = {
    "data_prep": {"max_samples": 300},
    "pretraining": {"epochs": 1, "batch_size": 64, "width": 4, "warmup_epochs": 0},
    "directclr": {"pretraining": {"d0": 8}},
    "linear_eval": {"C_grid": [1.0], "max_iter": 100, "raw_pixels": False},
}


def _session_run(project: Path, params: dict, **kwargs) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(**kwargs)


def _merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = _merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def _written(project: Path) -> list[Path]:
    data = project / "data"
    return sorted(p for p in data.rglob("*") if p.is_file()) if data.exists() else []


# 1. A run that trains into garbage stops, and its garbage is never reused ---------------------

HUGE_LR = dict(method="directclr", width=8, d0=16, optimizer="sgd", lr=1e6, epochs=2,
               batch_size=64, warmup_epochs=0)  # fmt: skip


def _small_digits():
    dataset, card = prepare(DataConfig(max_samples=300))
    return dataset["train_images"], dataset["train_labels"], card


def test_a_huge_learning_rate_stops_the_run_before_its_state_is_saved(tmp_path):
    images, labels, card = _small_digits()
    store = CheckpointStore(tmp_path)
    config = PretrainingConfig(**HUGE_LR)
    # Epoch 1 already leaves |r|^2 ~ 1e44 (finite weights): the representation guard stops the
    # run there, before the BatchNorm statistics overflow in epoch 2, and nothing is saved.
    with pytest.raises(FloatingPointError, match=r"representation exploded by step 4 \("):
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    assert list(tmp_path.glob("*.pt")) == []  # the bad state was not saved
    # Run again with the same settings: it stops again, still saving nothing.
    with pytest.raises(FloatingPointError, match="exploded"):
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    assert list(tmp_path.glob("*.pt")) == []


def test_a_checkpoint_holding_non_finite_values_is_never_reused(tmp_path):
    images, labels, card = _small_digits()
    store = CheckpointStore(tmp_path)
    config = PretrainingConfig(**{**HUGE_LR, "lr": 1e-3, "optimizer": "adamw", "epochs": 1})
    pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, weights_only=True)
    state["model"]["backbone.features.1.running_var"][0] = math.inf
    torch.save(state, path)
    # The finished run would be returned from its checkpoint at once: it is refused instead.
    with pytest.raises(FloatingPointError, match=r"backbone\.features\.1\.running_var.*not reused"):
        pretrain(images, labels, config, card["channel_mean"], card["channel_std"], store)
    fresh = config.model_copy(update={"resume": False})
    model, _, _ = pretrain(images, labels, fresh, card["channel_mean"], card["channel_std"], store)
    assert torch.isfinite(model.backbone.features[1].running_var).all()


def test_a_representation_collapsed_to_a_constant_stops_the_run():
    constant = torch.ones(100, 16) * 3.0
    with pytest.raises(FloatingPointError, match="collapsed to a constant by step 7"):
        check_not_constant(constant, step=7, lr=0.1)
    with pytest.raises(FloatingPointError, match="collapsed"):
        check_not_constant(torch.zeros(100, 16), step=7, lr=0.1)
    with pytest.raises(FloatingPointError, match="collapsed"):
        check_not_constant(torch.full((100, 16), math.nan), step=7, lr=0.1)
    tiny_spread = constant + 1e-6 * torch.randn(100, 16)  # variance 1e-12 x 16 << 1e-8 x 144
    with pytest.raises(FloatingPointError, match="collapsed"):
        check_not_constant(tiny_spread, step=7, lr=0.1)
    check_not_constant(torch.randn(100, 16), step=7, lr=0.1)  # a healthy batch passes


def test_the_pipeline_with_a_huge_learning_rate_fails_and_writes_no_model(project):
    huge = {"optimizer": "sgd", "lr": 1e6, "epochs": 2, "width": 8}
    params = _merged(QUICK, {"pretraining": huge, "directclr": {"pretraining": {"d0": 16}}})
    with pytest.raises(FloatingPointError, match="non-finite|representation exploded"):
        _session_run(project, params, pipeline_names=["directclr"])
    assert not (project / "data/06_models/directclr/model.pt").exists()


# 2. Misspelled settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "suggestion"),
    [({"pretrainig": {"lr": 5}}, "pretraining.lr"),
     ({"directclr": {"pretrainin": {"d0": 32}}}, "directclr.pretraining.d0"),
     ({"data_prep.max_sample": 10}, "data_prep.max_samples")],
)  # fmt: skip
def test_a_misspelled_parameter_stops_the_run_before_any_node(project, params, suggestion):
    with pytest.raises(UnknownSettingError, match=rf"did you mean [\w. ]*{suggestion}"):
        _session_run(project, _merged(QUICK, params), pipeline_names=["directclr"])
    assert _written(project) == []


def test_known_but_absent_settings_and_the_catalogs_runtime_parameters_are_accepted():
    from directclr.framework.parameters import check_known_settings, known_settings

    known = known_settings({"pretraining": {"lr": 1.0}, "directclr": {"pretraining": {}}},
                           "filepath: ${runtime_params:analyze.checkpoint, x.pt}")  # fmt: skip
    check_known_settings({"directclr": {"pretraining": {"probe_lr": 0.1}}}, known)
    check_known_settings({"pretraining": {"augmentation": {"view1": {"hflip_p": 0.5}}}}, known)
    check_known_settings({"analyze": {"checkpoint": "model.pt"}, "data_prep": {"seed": 3}}, known)
    with pytest.raises(UnknownSettingError, match="pretraining.augmentation.view1.hflip_q"):
        check_known_settings({"pretraining.augmentation.view1.hflip_q": 0.5}, known)


# 3. A folder with one class ------------------------------------------------------------------


def test_an_image_folder_with_one_class_stops_in_data_prep_naming_the_folder(tmp_path):
    folder = tmp_path / "pets" / "cats"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'pets'} has one class \(cats\)"):
        prepare(DataConfig(source="image_folder", root=str(tmp_path / "pets"), num_workers=0))


# 4. A batch larger than the data --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [({}, "pretraining.batch_size=256"),
     ({"directclr": {"pretraining": {"batch_size": 300}}}, "directclr.pretraining.batch_size=300")],
)  # fmt: skip
def test_a_batch_larger_than_the_training_set_is_refused_before_data_prep_writes(
    project, params, named
):
    quick = _merged(QUICK, {"data_prep": {"max_samples": 200},
                            "pretraining": {"batch_size": 256}}, params)  # fmt: skip
    with pytest.raises(ValueError, match=rf"{named} is larger than the 200 training images.*set "):
        _session_run(project, quick, pipeline_names=["directclr"])
    assert _written(project) == []  # no dataset version, no card


def test_a_batch_larger_than_an_existing_dataset_is_refused_before_pretraining(project):
    _session_run(project, _merged(QUICK, {"data_prep": {"max_samples": 200}}),
                 pipeline_names=["data_prep"])  # fmt: skip
    with pytest.raises(ValueError, match="pretraining.batch_size=256 is larger than the 200"):
        _session_run(project, _merged(QUICK, {"pretraining": {"batch_size": 256}}),
                     pipeline_names=["pretraining"])  # fmt: skip
    assert not (project / "data/06_models").exists()


# 5. Refused checkpoints never advise the unsafe path -------------------------------------------


def test_refused_files_name_what_was_refused_and_never_suggest_unsafe_loading(tmp_path):
    pickled = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": argparse.Namespace(lr=1)}, pickled)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 truncated")
    store = CheckpointStore(tmp_path)
    (tmp_path / "run.pt").write_bytes(pickled.read_bytes())
    failures = []
    for load in (lambda: TorchDataset(filepath=str(pickled)).load(), lambda: store.load("run")):
        with pytest.raises((DatasetError, RefusedFileError)) as info:
            load()
        failures.append(info.value)
        assert "argparse.Namespace" in str(info.value)
        assert "torch.save(model.state_dict(), path)" in str(info.value)
    with pytest.raises(DatasetError, match="corrupt") as info:
        TorchDataset(filepath=str(corrupt)).load()
    failures.append(info.value)
    assert "resume=false" in str(failures[1])
    for error in failures:
        text = str(error) + str(error.__cause__ or "") + str(error.__context__ or "")
        assert "weights_only=False" not in text and "weights_only` set to `False" not in text
        assert error.__suppress_context__ or error.__context__ is None


# 6. Smaller silences ---------------------------------------------------------------------------


def test_a_missing_load_version_lists_the_versions_that_exist(project):
    _session_run(project, QUICK, pipeline_names=["data_prep"])
    (version,) = (p.name for p in (project / "data/03_primary/dataset.pt").iterdir())
    with pytest.raises(ValueError, match=rf"no such version of dataset.*versions are: {version}"):
        _session_run(project, QUICK, pipeline_names=["pretraining"],
                     load_versions={"dataset": "2000-01-01T00.00.00.000Z"})  # fmt: skip


def test_knn_k_larger_than_the_training_set_is_refused_not_silently_reduced(project):
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="knn_k=20 is larger than the 10 training vectors"):
        knn_accuracy(x, y, x, y, k=20)
    quick = _merged(QUICK, {"linear_eval": {"knn_k": 500}})
    with pytest.raises(ValueError, match="linear_eval.knn_k=500 is larger than the 300"):
        _session_run(project, quick, pipeline_names=["directclr"])
    assert _written(project) == []


def test_a_spectrum_split_the_dataset_lacks_is_refused_before_any_work(project):
    quick = _merged(QUICK, {"spectrum": {"split": "val"}})
    with pytest.raises(ValueError, match=r"spectrum\.split=val: the dataset has no val split"):
        _session_run(project, quick, pipeline_names=["directclr"])
    assert _written(project) == []
    # With a val split the same setting works, and every count is taken on it.
    _session_run(project, _merged(quick, {"data_prep": {"val_fraction": 0.2}}),
                 pipeline_names=["directclr"])  # fmt: skip
    (metrics,) = (project / "data/08_reporting/directclr").glob(
        "spectrum_metrics.json/*/spectrum_metrics.json"
    )
    assert json.loads(metrics.read_text())["split"] == "val"


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs=5 is longer than the run"):
        PretrainingConfig(epochs=3, warmup_epochs=5)


def test_errors_name_the_setting_as_the_user_wrote_it():
    with pytest.raises(SettingsError, match=r"pretraining\.lr: ") as info:
        run_settings({"lr": -1.0}, {"method": "directclr"}, "directclr")
    assert "directclr.pretraining.lr" not in str(info.value)
    with pytest.raises(SettingsError, match=r"directclr\.pretraining\.lr: "):
        run_settings({"lr": 1.0}, {"method": "directclr", "lr": -1.0}, "directclr")
    with pytest.raises(SettingsError, match=r"simclr\.pretraining\.augmentation\.view1\.hflip_p"):
        run_settings({}, {"method": "simclr", "augmentation": {"view1": {"hflip_p": 2}}}, "simclr")
    with pytest.raises(SettingsError, match=r"run 'simclr'.*d0=32 is set, but method=simclr"):
        run_settings({}, {"method": "simclr", "d0": 32}, "simclr")
    # A rule across settings names each as set: d0 by the shared recipe, method by the run.
    with pytest.raises(
        SettingsError, match=r"\(set as pretraining\.d0, simclr\.pretraining\.method\)"
    ):
        run_settings({"d0": 32}, {"method": "simclr"}, "simclr")
    with pytest.raises(SettingsError, match=r"\(set as simclr\.pretraining\.warmup_epochs, "
                                            r"pretraining\.epochs\)"):  # fmt: skip
        run_settings({"epochs": 2}, {"method": "simclr", "warmup_epochs": 5}, "simclr")
    # An element of a list the run set is the run's.
    bad_crop = {"method": "simclr", "augmentation": {"view1": {"crop_scale": [0.5, "big"]}}}
    with pytest.raises(
        SettingsError, match=r"simclr\.pretraining\.augmentation\.view1\.crop_scale\.1"
    ):
        run_settings({}, bad_crop, "simclr")


# The registry and --env ------------------------------------------------------------------------


def test_comparisons_follow_kedro_env_and_a_mismatched_env_flag_is_refused(project, monkeypatch):
    from directclr.pipeline_registry import configured_comparisons

    paper = project / "conf" / "small"
    paper.mkdir()
    (paper / "parameters_compare.yml").write_text(
        "compare:\n  simclr:\n    pretraining: {method: simclr}\n"
        "  directclr:\n    pretraining: {method: directclr, d0: 8}\n"
    )
    monkeypatch.chdir(project)
    assert len(configured_comparisons()["compare"]) == 5  # the control and four methods
    monkeypatch.setenv("KEDRO_ENV", "small")
    assert configured_comparisons()["compare"] == ["simclr", "directclr"]
    monkeypatch.delenv("KEDRO_ENV")
    bootstrap_project(project)
    with (
        pytest.raises(ValueError, match="KEDRO_ENV=small instead of --env=small"),
        KedroSession.create(project_path=project, env="small", runtime_params=QUICK) as session,
    ):
        session.run(pipeline_names=["compare"])
    assert _written(project) == []


# 5. Settings files ----------------------------------------------------------------------------


def _conf(tmp_path: Path, files: dict[str, str]) -> Path:
    """The project's base parameter files and catalog, and ``files`` (path: text) beside them."""
    from tests.conftest import REPO

    conf = tmp_path / "conf"
    (conf / "local").mkdir(parents=True)
    for path in (REPO / "conf/base").glob("*.yml"):
        (conf / "base").mkdir(exist_ok=True)
        (conf / "base" / path.name).write_text(path.read_text())
    for name, text in files.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    return conf


def _parameters(conf: Path, env: str | None = None) -> dict:
    from directclr.framework.parameters import CheckedConfigLoader

    loader = CheckedConfigLoader(str(conf), base_env="base", default_run_env="local", env=env)
    return loader["parameters"]


def test_a_misspelled_section_in_the_local_parameters_file_stops_the_run(project):
    (project / "conf/local/parameters.yml").write_text("pretrainig: {lr: 0.1}\n")
    with pytest.raises(UnknownSettingError, match=r"conf/local/parameters.yml: .*pretrainig\.lr "
                       r"\(did you mean pretraining\.lr"):  # fmt: skip
        _session_run(project, QUICK, pipeline_names=["directclr"])
    assert _written(project) == []


def test_parameter_files_of_any_environment_are_checked_and_anchors_and_new_runs_pass(tmp_path):
    conf = _conf(tmp_path, {"trial/parameters.yml": "linear_eval: {knn_kk: 5}\n"})
    with pytest.raises(UnknownSettingError, match=r"conf/trial/parameters.yml: .*knn_kk "
                       r"\(did you mean linear_eval\.knn_k"):  # fmt: skip
        _parameters(conf, env="trial")
    # Anchors ("_" keys), merge keys, references and a comparison's new run are settings.
    (conf / "local/parameters.yml").write_text(
        "_fast: &fast {epochs: 2}\npretraining:\n  <<: *fast\n  lr: ${_fast.epochs}\n"
        "compare:\n  wide:\n    pretraining: {method: simclr, width: 8}\n"
    )
    params = _parameters(conf)
    assert params["pretraining"]["epochs"] == 2 and params["compare"]["wide"]["pretraining"]
    (conf / "local/parameters.yml").write_text("compare:\n  wide:\n    pretrainin: {lr: 1}\n")
    with pytest.raises(UnknownSettingError, match=r"compare\.wide\.pretrainin\.lr \(did you mean"):
        _parameters(conf)


def test_a_duplicate_key_names_the_file_and_the_line(tmp_path):
    dup = "data_prep:\n  max_samples: 300\n  max_samples: 200\n"
    conf = _conf(tmp_path, {"local/parameters.yml": dup})
    with pytest.raises(ValueError, match=r"conf/local/parameters.yml line 3: found duplicate key "
                       r"max_samples \(in the mapping that starts at line 2\)"):  # fmt: skip
        _parameters(conf)


def test_a_top_k_larger_than_the_representation_is_refused_not_clamped():
    from directclr.collapse import SpectrumConfig, measure_collapse
    from directclr.framework.parameters import check_runs_fit_data
    from directclr.models import ModelConfig

    card = {"source": "digits", "counts": {"train": 300, "test": 60}, "max_samples": 300}
    settings = {"directclr": run_settings(QUICK["pretraining"], {"d0": 8}, "directclr")}
    params = {"spectrum": {"top_k": 100000, "split": "train"}}
    with pytest.raises(ValueError, match=r"spectrum\.top_k=100000 is larger than the 32 "
                       r"dimensions of directclr's .*at most 32"):  # fmt: skip
        check_runs_fit_data(card, settings, params, knn=False, spectrum=True)
    check_runs_fit_data(card, settings, {"spectrum": {"top_k": 32}}, knn=False, spectrum=True)
    # The spectrum stage itself (an encoder you bring is known only there).
    embeddings = {"train_r": torch.randn(40, 16), "train_z": torch.randn(40, 4)}
    with pytest.raises(ValueError, match=r"spectrum\.top_k=17 is larger than the 16 dim"):
        measure_collapse(embeddings, ModelConfig(method="simclr"), SpectrumConfig(top_k=17))


# 3. A learning rate that wrecks the representation without a NaN (issue 21 §2) -----------------


@pytest.mark.parametrize("lidar_samples", [0, 16])
@pytest.mark.parametrize(("optimizer", "lr"), [("adamw", 100.0), ("sgd", 1000.0)])
def test_a_representation_wrecked_by_a_huge_lr_stops_the_run_with_the_advice(
    optimizer, lr, lidar_samples
):
    # Weights stay finite, but every r ends up on one line with |r|^2 far above 1e12: the
    # run used to exit 0 without LiDAR, and die in LAPACK's Cholesky with it.
    images, labels, card = _small_digits()
    config = PretrainingConfig(
        method="directclr", width=4, d0=8, optimizer=optimizer, lr=lr, epochs=1, batch_size=64,
        warmup_epochs=0, lidar_samples=lidar_samples,
    )  # fmt: skip
    with pytest.raises(
        FloatingPointError,
        match=r"representation (exploded|collapsed to one direction) by step 4 .*the last "
        r"checkpoint is kept and this state is not saved\. Lower lr or raise temperature",
    ):
        pretrain(images[:256], labels[:256], config, card["channel_mean"], card["channel_std"])
