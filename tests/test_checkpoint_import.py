"""Bring your own encoder: checkpoints in each layout, built here (random weights, no downloads),
converted and analysed by the `analyze` pipeline on the bundled digits."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.validation.exceptions import ParameterValidationError
from pydantic import ValidationError
from torch import nn

from directclr.checkpoint_import import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChannelStats,
    EncoderConfig,
    convert_checkpoint,
    convert_projector,
    fit_to_dataset,
    import_summary,
    small_images_warning,
)
from directclr.models import ModelConfig, build_model, encode, model_artifact, model_from_artifact
from directclr.projectors import build_projector
from tests.test_run import load_json, versions

SETTINGS = "analyze.encoder."
FAST = {"linear_eval": {"C_grid": [1.0], "max_iter": 300}, "data_prep": {"max_samples": 150}}


def with_random_statistics(module: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so a mix-up of them shows; eval mode."""
    g = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            layer.running_var.copy_(0.5 + torch.rand(n, generator=g))
            layer.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            layer.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return module.eval()


def cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3x3 conv1, no max-pool), as SimCLR
    code for small images builds it; its state dict keeps torchvision's keys and fc."""
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return with_random_statistics(net)


def imagenet_normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (images - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def representation_of(artifact: dict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model_from_artifact(artifact)(images)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 7},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}},
    ],
    ids=["plain", "state_dict_wrapper", "ddp_prefix", "ddp_training_checkpoint"],
)
def test_torchvision_state_dict_gives_the_source_models_representation(wrap):
    source = cifar_resnet18()
    artifact, report = convert_checkpoint(
        wrap(source.state_dict()), EncoderConfig(backbone="resnet18")
    )
    source.fc = nn.Identity()
    images = torch.rand(4, 3, 16, 16)
    r, z = representation_of(artifact, images)
    with torch.no_grad():
        expected = source(imagenet_normalised(images))
    torch.testing.assert_close(r, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(z, r) and artifact["config"]["method"] == "no_projector"
    assert report["layout"] == "state_dict" and report["dropped_keys"] == ["fc.bias", "fc.weight"]
    assert report["normalization"] == {
        "source": "imagenet",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    assert report["embedding"] == "z = r: the file has no 'projector' entry"


def test_the_papers_layout_gives_r_and_z_and_leaves_its_classifier_head_alone():
    backbone = torchvision.models.resnet50(weights=None)
    backbone.fc = nn.Identity()
    with_random_statistics(backbone)
    projector = with_random_statistics(
        nn.Sequential(nn.Linear(2048, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                      nn.Linear(64, 16, bias=False), nn.BatchNorm1d(16))
    )  # fmt: skip
    checkpoint = {
        "backbone": backbone.state_dict(),
        "projector": projector.state_dict(),
        "head": nn.Linear(2048, 1000).state_dict(),  # the paper's online ImageNet classifier
    }
    artifact, report = convert_checkpoint(checkpoint, EncoderConfig())
    images = torch.rand(2, 3, 32, 32)
    r, z = representation_of(artifact, images)
    with torch.no_grad():
        expected_r = backbone(imagenet_normalised(images))
        expected_z = projector(expected_r)
    torch.testing.assert_close(r, expected_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, expected_z, atol=1e-5, rtol=1e-5)
    expected_config = {"method": "simclr", "backbone": "resnet50", "projector_hidden_dim": 64,
                       "projector_dim": 16}  # fmt: skip
    assert artifact["config"].items() >= expected_config.items()
    assert report["layout"] == "entries" and report["unused_entries"] == ["head"]
    assert report["projector"] == "Linear-BN-ReLU-Linear-BN 2048-64-16"


@pytest.mark.parametrize(
    ("layers", "method"),
    [
        ([nn.Linear(32, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 8)], "simclr"),
        (
            [
                nn.Linear(32, 24, bias=False),
                nn.BatchNorm1d(24),
                nn.ReLU(),
                nn.Linear(24, 8),
                nn.BatchNorm1d(8),
            ],
            "simclr",
        ),  # fmt: skip
        ([nn.Linear(32, 8, bias=False)], "simclr_linear"),
    ],
    ids=["mlp_with_biases_no_final_bn", "mlp_final_bn", "linear"],
)
def test_projectors_become_this_projects_methods_with_the_same_output(layers, method):
    foreign = with_random_statistics(nn.Sequential(*layers))
    state = foreign.state_dict() if len(layers) > 1 else layers[0].state_dict()
    converted = convert_projector(state, dim=32)
    assert converted.method == method and converted.out_dim == 8
    ours = build_projector(method, 32, 8, converted.hidden_dim or 1, converted.out_dim, 0)
    ours.load_state_dict(converted.state_dict)
    r = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(r), foreign(r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("layers", "reason"),
    [
        ([nn.Linear(32, 8)], "one Linear with a bias"),
        ([nn.Linear(32, 24), nn.BatchNorm1d(24), nn.Linear(24, 8)], "neither one Linear nor"),
        ([nn.Linear(16, 8, bias=False)], "takes 16 inputs and r has 32"),
    ],
    ids=["linear_with_bias", "no_activation", "wrong_input_size"],
)
def test_projectors_this_project_cannot_hold_are_refused_with_the_reason(layers, reason):
    state = nn.Sequential(*layers).state_dict() if len(layers) > 1 else layers[0].state_dict()
    with pytest.raises(ValueError, match=reason):
        convert_projector(state, dim=32)


def test_an_unusable_projector_or_none_gives_z_equal_r_and_says_why():
    state = cifar_resnet18().state_dict()
    checkpoint = {"backbone": state, "projector": nn.Linear(512, 128).state_dict()}
    artifact, report = convert_checkpoint(checkpoint, EncoderConfig(backbone="resnet18"))
    assert artifact["config"]["method"] == "no_projector"
    assert report["embedding"].startswith("z = r: the 'projector' entry was not used, it is one")

    artifact, report = convert_checkpoint(
        {"backbone": state}, EncoderConfig(backbone="resnet18", d0=100)
    )
    assert artifact["config"].items() >= {"method": "directclr", "d0": 100}.items()
    assert report["embedding"] == "z = r[:, :100] (d0)"
    with pytest.raises(ValueError, match="d0: .*d0=600 is larger than the representation"):
        convert_checkpoint({"backbone": state}, EncoderConfig(backbone="resnet18", d0=600))


def test_this_projects_own_artifact_is_used_as_it_is():
    config = ModelConfig(method="directclr", backbone="small_cnn", width=4, d0=8)
    model = with_random_statistics(build_model(config, 1, [0.3], [0.2], seed=3))
    artifact = model_artifact(model, config, 1)
    converted, report = convert_checkpoint(artifact, EncoderConfig(backbone="resnet50"))
    assert converted["config"] == artifact["config"] and converted["in_channels"] == 1
    assert all(
        torch.equal(converted["state_dict"][k], v) for k, v in artifact["state_dict"].items()
    )
    assert report["layout"] == "model_artifact"
    # The file names its architecture: every setting but the normalisation is set aside.
    assert set(report["ignored_settings"]) == set(EncoderConfig.model_fields) - {"normalization"}
    assert "stem" in report["ignored_settings"]
    assert report["normalization"] == {"source": "file", "mean": [pytest.approx(0.3)],
                                       "std": [pytest.approx(0.2)]}  # fmt: skip
    # The input normalisation can still be set from the parameters.
    stats = ChannelStats(mean=[0.5], std=[0.25])
    converted, _ = convert_checkpoint(artifact, EncoderConfig(normalization=stats))
    assert converted["state_dict"]["std"].flatten().tolist() == [0.25]


def test_normalisation_from_the_dataset_card_and_the_channel_check():
    config = ModelConfig(method="no_projector", width=4)
    state = build_model(config, 1, [0.0], [1.0]).backbone.state_dict()
    artifact, report = convert_checkpoint(state, EncoderConfig(backbone="small_cnn", width=4))
    assert report["normalization"] == {"source": "dataset"}  # a grey encoder: not ImageNet's
    card = {"channels": 1, "channel_mean": [0.25], "channel_std": [0.5], "image_shape": [1, 8, 8]}
    fitted, report = fit_to_dataset(artifact, report, card)
    assert fitted["state_dict"]["mean"].flatten().tolist() == [0.25]
    assert report["normalization"] == {"source": "dataset", "mean": [0.25], "std": [0.5]}
    rgb, rgb_report = convert_checkpoint(
        cifar_resnet18().state_dict(), EncoderConfig(backbone="resnet18")
    )
    with pytest.raises(ValueError, match="3-channel images and the dataset has 1: set data_prep"):
        fit_to_dataset(rgb, rgb_report, card)
    grey_as_imagenet = EncoderConfig(backbone="small_cnn", width=4, normalization="imagenet")
    with pytest.raises(ValueError, match="normalization=imagenet needs a 3-channel encoder"):
        convert_checkpoint(state, grey_as_imagenet, SETTINGS)


def test_the_import_report_reads_out_what_was_set_aside_and_warns_of_small_images():
    state = cifar_resnet18().state_dict()
    card = {"channels": 3, "channel_mean": [0.5] * 3, "channel_std": [0.25] * 3,
            "image_shape": [3, 8, 8]}  # fmt: skip
    converted = convert_checkpoint(state, EncoderConfig(backbone="resnet18"))
    _, report = fit_to_dataset(*converted, card)
    assert import_summary(report) == (
        "import_encoder: state_dict checkpoint -> model (resnet18, r 512-d, 3 channels; z = r: "
        "the file has no 'projector' entry; dropped fc.bias, fc.weight; normalisation imagenet)"
    )
    wrapped = report | {"dropped_keys": [], "unused_entries": ["head"], "weights": "state_dict",
                        "unreadable_entries": ["hyper_parameters"]}  # fmt: skip
    set_aside = "unused entries head; weights from state_dict; left unread: hyper_parameters"
    assert f"'projector' entry; {set_aside}; normalisation imagenet)" in import_summary(wrapped)
    assert small_images_warning(report) is None  # resnet18 is not the 32x-downsampling one
    resnet50 = report | {"backbone": "resnet50"}
    assert "resnet50 downsamples 32x and the images are 8 px" in small_images_warning(resnet50)
    assert small_images_warning(resnet50 | {"image_shape": [3, 32, 40]}) is None


def test_files_that_do_not_fit_name_the_keys_and_the_setting_to_change():
    with pytest.raises(ValueError, match=r"not a checkpoint: it holds no named tensors"):
        convert_checkpoint({"epoch": 3, "args": ["--lr", "0.1"]}, EncoderConfig())
    resnet18 = cifar_resnet18().state_dict()
    with pytest.raises(ValueError) as err:
        convert_checkpoint(resnet18, EncoderConfig(), SETTINGS)
    message = str(err.value)
    assert "does not fit backbone=resnet50" in message
    assert "missing keys: layer1.0.conv3.weight" in message and "(160 more)" in message
    assert "mis-shaped keys: conv1.weight (file [64, 3, 3, 3], model [64, 3, 7, 7])" in message
    assert "set analyze.encoder.backbone=resnet18" in message
    # torchvision's own ResNet-18 has the ImageNet stem; this project's resnet18 defaults to
    # the CIFAR one, and the hint names the setting that reads it.
    imagenet_resnet18 = torchvision.models.resnet18(weights=None)
    with pytest.raises(
        ValueError, match="set analyze.encoder.backbone=resnet18, analyze.encoder.stem=imagenet"
    ):
        convert_checkpoint(imagenet_resnet18.state_dict(), EncoderConfig(backbone="resnet18"),
                           SETTINGS)  # fmt: skip
    artifact, _ = convert_checkpoint(
        imagenet_resnet18.state_dict(),
        EncoderConfig(backbone="resnet18", stem="imagenet"),
        SETTINGS,
    )
    model = model_from_artifact(artifact)
    images = torch.rand(2, 3, 64, 64)
    mean, std = model.mean, model.std
    imagenet_resnet18.fc = torch.nn.Identity()
    expected = imagenet_resnet18.eval()((images - mean) / std)
    torch.testing.assert_close(model.representation(images), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unexpected keys: encoder.conv1.weight.*entries: encoder"):
        convert_checkpoint({f"encoder.{k}": v for k, v in resnet18.items()},
                           EncoderConfig(backbone="resnet18"), SETTINGS)  # fmt: skip


def test_the_architecture_settings_mean_what_a_trained_models_do():
    imported, trained = EncoderConfig(), ModelConfig(method="no_projector")
    for name in ("width", "norm", "stem", "d0"):
        assert getattr(imported, name) == getattr(trained, name), name
    for name, wrong in (("width", 0), ("norm", "layer"), ("stem", "vit"), ("d0", 0)):
        with pytest.raises(ValidationError) as imported_error:
            EncoderConfig(**{name: wrong})
        with pytest.raises(ValidationError) as trained_error:
            ModelConfig(method="directclr", **{name: wrong})
        assert imported_error.value.errors()[0]["msg"] == trained_error.value.errors()[0]["msg"]
    # The one default of its own: the encoders brought to analyze are mostly ResNet-50s.
    assert (imported.backbone, trained.backbone) == ("resnet50", "small_cnn")


# ---------------------------------------------------------------------------------------------
# The `analyze` pipeline


def run(project: Path, params: dict) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=FAST | params) as session:
        session.run(pipeline_names=["analyze"])


def latest(project: Path, relative: str) -> Path:
    return versions(project, relative)[-1] / Path(relative).name


def test_analyze_exports_what_the_imported_model_computes(project):
    config = ModelConfig(method="simclr", backbone="small_cnn", width=8, projector_hidden_dim=32,
                         projector_dim=16)  # fmt: skip
    model = with_random_statistics(build_model(config, 1, [0.3], [0.3], seed=1))
    (project / "data" / "01_raw").mkdir(parents=True)
    torch.save(model_artifact(model, config, 1), project / "data/01_raw/encoder.pt")  # the default
    run(project, {})

    dataset = torch.load(latest(project, "03_primary/dataset.pt"), weights_only=True)
    embeddings = torch.load(
        latest(project, "07_model_output/analyze/embeddings.pt"), weights_only=True
    )
    r, z = encode(model, dataset["test_images"], device="cpu")
    torch.testing.assert_close(embeddings["test_r"], r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings["test_z"], z, atol=1e-5, rtol=1e-5)

    metrics = load_json(project, "08_reporting/analyze/linear_eval_metrics.json")
    assert metrics["method"] == "simclr" and metrics["representation_dim"] == 64
    assert metrics["embedding_dim"] == 16 and 0.1 < metrics["linear_probe_accuracy_r"] <= 1.0
    spectrum = load_json(project, "08_reporting/analyze/spectrum_metrics.json")
    assert 1.0 < spectrum[f"r_{spectrum['split']}"]["effective_rank"] <= 64
    history = pd.read_csv(latest(project, "07_model_output/analyze/spectrum_history.csv"))
    assert history.empty and list(history.columns) == ["epoch", "step", "vectors", "index",
                                                       "eigenvalue"]  # fmt: skip
    assert latest(project, "08_reporting/analyze/spectrum.png").stat().st_size > 0
    report = load_json(project, "08_reporting/analyze/encoder_import.json")
    assert report["layout"] == "model_artifact" and report["normalization"]["source"] == "file"


def test_analyze_from_the_command_line_on_a_torchvision_resnet18(project, tmp_path):
    source = cifar_resnet18()
    checkpoint = tmp_path / "simclr_cifar.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, checkpoint
    )
    params = (f"analyze.checkpoint={checkpoint},analyze.encoder.backbone=resnet18,"
              "data_prep.channels=3,data_prep.max_samples=60,linear_eval.max_iter=300")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipeline=analyze", f"--params={params}"],
        cwd=project, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    dataset = torch.load(latest(project, "03_primary/dataset.pt"), weights_only=True)
    embeddings = torch.load(
        latest(project, "07_model_output/analyze/embeddings.pt"), weights_only=True
    )
    source.fc = nn.Identity()
    with torch.no_grad():
        expected = source(imagenet_normalised(dataset["test_images"].float() / 255))
    torch.testing.assert_close(embeddings["test_r"], expected, atol=1e-5, rtol=1e-5)
    report = load_json(project, "08_reporting/analyze/encoder_import.json")
    assert report["layout"] == "state_dict" and report["representation_dim"] == 512
    assert report["embedding"] == "z = r: the file has no 'projector' entry"
    assert (
        load_json(project, "08_reporting/analyze/spectrum_metrics.json")["method"] == "no_projector"
    )


def test_analyze_refuses_a_checkpoint_that_does_not_fit_before_any_work(project, tmp_path):
    checkpoint = tmp_path / "resnet18.pt"
    torch.save(cifar_resnet18().state_dict(), checkpoint)
    with pytest.raises(ValueError, match="set analyze.encoder.backbone=resnet18"):
        run(project, {"analyze": {"checkpoint": str(checkpoint)}})  # backbone: resnet50
    with pytest.raises(ParameterValidationError, match="backbone"):
        run(project, {"analyze": {"checkpoint": str(checkpoint), "encoder": {"backbone": "vit"}}})
    assert not (project / "data").exists()  # not even data_prep ran
