"""``--env=paper``: the paper's ImageNet pretraining recipe (facebookresearch/directclr,
``directclr/main.py`` and ``utils.py``), read as Kedro reads it, and run as the README says
at a tiny scale: a generated image folder in ImageNet's layout, two gloo processes."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image

from directclr import settings
from directclr.training import run_settings
from tests.conftest import REPO

# The paper's settings, each as its code has it (main.py's argument defaults, the README's
# --mode directclr --dim 360, utils.py's LARS, Transform and adjust_learning_rate).
PAPER = {
    "backbone": "resnet50",  # torchvision.models.resnet50(zero_init_residual=True)
    "stem": "imagenet",
    "zero_init_residual": True,
    "optimizer": "lars",
    "lr": 4.8,  # --learning-rate, used as it is
    "lr_scaling": "none",
    "batch_size": 4096,
    "epochs": 100,
    "warmup_epochs": 10,
    "final_lr_ratio": 0.001,  # end_lr = base_lr * 0.001
    "weight_decay": 1e-6,
    "momentum": 0.9,
    "temperature": 0.1,
    "loss": "paper",
}
# Transform (view 1) and transform_prime (view 2).
PAPER_VIEW = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "hflip_p": 0.5,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_sigma_px_at_224": (0.1, 2.0),
    "solarize_threshold": 128 / 255,
    "strength": 1.0,
}
PAPER_VIEWS = {
    "view1": {"blur_p": 1.0, "solarize_p": 0.0},
    "view2": {"blur_p": 0.1, "solarize_p": 0.2},
}


def parameters(env: str | None, runtime_params: dict | None = None) -> dict:
    """The parameters a run under ``env`` gets: the project's own config loader, made as
    Kedro makes it from settings.py."""
    loader = settings.CONFIG_LOADER_CLASS(
        str(REPO / "conf"), env=env, runtime_params=runtime_params, **settings.CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def assert_view(view, expected: dict) -> None:
    for name, value in {**PAPER_VIEW, **expected}.items():
        if name == "blur_sigma_px_at_224":
            assert [s * 224 for s in view.blur_sigma] == pytest.approx(value, rel=1e-6)
        elif name == "solarize_threshold":
            # Values at or above it are inverted: PIL's 128 of 255 on 8-bit pixels.
            assert math.floor(view.solarize_threshold * 255) + 1 == 128
        else:
            assert getattr(view, name) == pytest.approx(value, rel=1e-6), name
    assert view.blur_kernel_size is None


@pytest.mark.parametrize("run", ["directclr", "simclr"])
def test_the_paper_environment_is_the_papers_recipe_setting_by_setting(run):
    params = parameters("paper")
    config = run_settings(params["pretraining"], params[run]["pretraining"], run)
    for name, value in PAPER.items():
        assert getattr(config, name) == value, name
    for name, expected in PAPER_VIEWS.items():
        assert_view(getattr(config.augmentation, name), expected)
    if run == "directclr":
        assert (config.method, config.d0) == ("directclr", 360)  # --mode directclr --dim 360
    else:  # --mode simclr: [2048, 2048, 128]
        assert (config.method, config.projector_hidden_dim, config.projector_dim) == (
            "simclr", 2048, 128,
        )  # fmt: skip
    data = params["data_prep"]
    assert (data["source"], data["image_size"], data["channels"]) == ("image_folder", 224, 3)
    assert (data["root"], data["cache"]) == ("data/01_raw/imagenet", False)


def test_every_setting_is_the_environments_and_scale_overrides_leave_the_rest():
    # Kedro replaces a whole top-level section: the environment writes every setting, so
    # nothing of conf/base's digits recipe is left in it.
    base = parameters(None)
    paper = parameters("paper")
    for section in ("pretraining", "data_prep"):
        assert set(paper[section]) == set(base[section]), section
    assert set(paper["pretraining"]["augmentation"]["view1"]) >= set(
        base["pretraining"]["augmentation"]["view1"]
    )
    # --params changes only the keys it names.
    scaled = parameters("paper", {"pretraining": {"epochs": 1, "batch_size": 16}})
    assert {**paper["pretraining"], "epochs": 1, "batch_size": 16} == scaled["pretraining"]


def test_the_base_runs_are_unaffected():
    params = parameters(None)
    config = run_settings(params["pretraining"], params["directclr"]["pretraining"], "directclr")
    assert (config.optimizer, config.lr, config.backbone, config.d0) == (
        "adamw", 0.001, "small_cnn", 64,
    )  # fmt: skip
    assert config.final_lr_ratio == 0.0
    assert params["data_prep"]["source"] == "digits"


def write_image_folder(root: Path, classes: int = 3, train: int = 16, val: int = 4) -> None:
    """ImageNet's layout in miniature: train/<class>/*.JPEG and val/<class>/*.png, each
    class its own colour plus noise, 40 x 32 px (not square, as ImageNet's)."""
    rng = np.random.default_rng(0)
    for part, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / part / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                colour = np.array([80 * c, 255 - 80 * c, 40 + 60 * c])
                pixels = np.clip(colour + rng.normal(0, 40, (32, 40, 3)), 0, 255)
                image = Image.fromarray(pixels.astype(np.uint8))
                suffix = ".JPEG" if part == "train" else ".png"
                image.save(folder / f"{part}_{c}_{i}{suffix}")


def test_the_readme_commands_of_the_paper_recipe_train_at_tiny_scale(project, monkeypatch):
    import pandas as pd

    # ImageNet's place in the environment; only the scale is changed: 32 px images (the
    # ResNet-50's last map is then 1 x 1), one epoch without warmup, global batches of 16.
    write_image_folder(project / "data" / "01_raw" / "imagenet")
    training = {"epochs": 1, "warmup_epochs": 0, "batch_size": 16}
    # 1. data_prep once, in one process, in the project folder (as `kedro run` runs).
    monkeypatch.chdir(project)
    bootstrap_project(project)
    scale = {"data_prep": {"image_size": 32}}
    with KedroSession.create(project_path=project, env="paper", runtime_params=scale) as session:
        session.run(pipeline_names=["data_prep"])
    # 2. pretraining alone, under torchrun (two gloo processes here, one per GPU there).
    tiny = ",".join(f"pretraining.{key}={value}" for key, value in training.items())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "kedro", "run", "--pipeline=directclr",
               "--env=paper", "--tags=pretraining", f"--params={tiny}"]  # fmt: skip
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (version,) = (project / "data/06_models/directclr/model.pt").iterdir()
    model = torch.load(version / "model.pt", weights_only=True)
    config = model["config"]
    assert (config["method"], config["d0"], config["backbone"], config["stem"]) == (
        "directclr", 360, "resnet50", "imagenet",
    )  # fmt: skip
    assert config["zero_init_residual"] and model["in_channels"] == 3
    assert model["state_dict"]["backbone.net.conv1.weight"].shape == (64, 3, 7, 7)
    view1 = model["augmentation"]
    assert (view1["crop_scale"], view1["blur_p"], view1["solarize_p"]) == ([0.08, 1.0], 1.0, 0.0)

    # 48 training images in global batches of 16: 3 steps. The rate at the last one is the
    # paper's cosine from 4.8 towards 0.0048 there: q = (1 + cos(2 pi / 3)) / 2 = 1/4.
    (version,) = (project / "data/07_model_output/directclr/training_history.csv").iterdir()
    history = pd.read_csv(version / "training_history.csv")
    assert history[["epoch", "step"]].values.tolist() == [[1, 3]]
    (row,) = history.to_dict("records")
    assert row["lr"] == pytest.approx(4.8 * (0.25 + 0.001 * 0.75), rel=1e-9)
    assert math.isfinite(row["loss"]) and 1 <= row["effective_rank_r"] <= 48

    # LARS as the paper's: eta 0.001 and momentum 0.9; weight decay 1e-6 on the weights,
    # and biases and norms neither decayed nor adapted.
    (checkpoint,) = (project / "data/06_models/directclr/checkpoints").glob("directclr-*.pt")
    groups = torch.load(checkpoint, weights_only=True)["optimizer"]["param_groups"]
    assert [(g["adapt"], g["weight_decay"], g["eta"], g["momentum"]) for g in groups] == [
        (True, 1e-6, 0.001, 0.9), (False, 0.0, 0.001, 0.9),
    ]  # fmt: skip
