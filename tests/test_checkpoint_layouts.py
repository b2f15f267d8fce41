"""Checkpoints from other SSL code, built here as those libraries save them (random weights, no
downloads): lightly's nn.Sequential backbone, PyTorch Lightning / solo-learn ``.ckpt`` files with
pickled hyper-parameters, timm training checkpoints with EMA weights, and ``.safetensors``. Each
is read from a file by the catalog's dataset and converted; the converted model must compute
what the source network computes."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torchvision
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.io.core import DatasetError
from safetensors.torch import save_file
from torch import nn

from directclr.checkpoint_import import (
    EncoderConfig,
    UnreadableObject,
    convert_checkpoint,
    load_with_placeholders,
    resnet_from_sequential,
)
from directclr.checkpoints import RefusedFileError, RefusedObjectError, safe_load
from directclr.framework.datasets import EncoderCheckpointDataset, TorchDataset
from tests.conftest import REPO
from tests.test_checkpoint_import import (
    cifar_resnet18,
    imagenet_normalised,
    representation_of,
    with_random_statistics,
)

SETTINGS = "analyze.encoder."


def read(path) -> object:
    """The file as the analyze pipeline's catalog entry reads it."""
    return EncoderCheckpointDataset(filepath=str(path)).load()


def projector_mlp(dim: int = 512) -> nn.Sequential:
    """solo-learn's SimCLR projector: Linear-BN-ReLU-Linear, Linear biases included."""
    return with_random_statistics(
        nn.Sequential(nn.Linear(dim, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    )


def assert_same_encoder(artifact: dict, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The converted model's r equals the source backbone's output on ImageNet-normalised
    images; returns r."""
    r, _ = representation_of(artifact, images)
    with torch.no_grad():
        expected = backbone(imagenet_normalised(images)).flatten(1)
    torch.testing.assert_close(r, expected, atol=1e-5, rtol=1e-5)
    return r


# ---------------------------------------------------------------------------------------------
# lightly: nn.Sequential(*list(resnet.children())[:-1])


class LightlyProjectionHead(nn.Module):
    """As lightly's SimCLRProjectionHead names its layers: one ``layers`` Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(512, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16)
        )

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.layers(r)


class LightlySimCLR(nn.Module):
    """lightly's SimCLR example module: ``backbone`` (a Sequential) and ``projection_head``."""

    def __init__(self, backbone: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = with_random_statistics(LightlyProjectionHead())


def lightly_backbone(drop_maxpool: bool = False) -> nn.Sequential:
    children = list(cifar_resnet18().children())[:-1]  # fc left out, as lightly does
    if drop_maxpool:  # the CIFAR variant some examples build: no max-pool child at all
        children = [c for c in children if not isinstance(c, nn.Identity)]
    return nn.Sequential(*children).eval()


@pytest.mark.parametrize("drop_maxpool", [False, True], ids=["all_children", "no_maxpool"])
def test_a_lightly_sequential_backbone_gives_the_source_representation(tmp_path, drop_maxpool):
    backbone = lightly_backbone(drop_maxpool)
    assert "4.0.conv1.weight" in backbone.state_dict() or drop_maxpool
    torch.save(backbone.state_dict(), tmp_path / "lightly_backbone.pt")
    artifact, report = convert_checkpoint(
        read(tmp_path / "lightly_backbone.pt"), EncoderConfig(backbone="resnet18"), SETTINGS
    )
    assert_same_encoder(artifact, backbone, torch.rand(3, 3, 16, 16))
    assert report["layout"] == "state_dict" and report["dropped_keys"] == []
    first = "0: conv1, 1: bn1, 4: layer1" if not drop_maxpool else "0: conv1, 1: bn1, 3: layer1"
    assert first in report["renamed_keys"]


def test_a_lightly_simclr_module_gives_r_and_z_with_its_projection_head(tmp_path):
    model = LightlySimCLR(lightly_backbone()).eval()
    torch.save(model.state_dict(), tmp_path / "lightly_simclr.pt")
    checkpoint = read(tmp_path / "lightly_simclr.pt")

    _, report = convert_checkpoint(checkpoint, EncoderConfig(backbone="resnet18"), SETTINGS)
    assert "other entries: projection_head; analyze.encoder.projector_entry" in report["embedding"]

    config = EncoderConfig(backbone="resnet18", projector_entry="projection_head")
    artifact, report = convert_checkpoint(checkpoint, config, SETTINGS)
    images = torch.rand(3, 3, 16, 16)
    r = assert_same_encoder(artifact, model.backbone, images)
    _, z = representation_of(artifact, images)
    with torch.no_grad():
        torch.testing.assert_close(z, model.projection_head(r), atol=1e-5, rtol=1e-5)
    assert report["layout"] == "entries" and report["renamed_keys"].startswith("nn.Sequential")
    assert report["projector"] == "Linear-BN-ReLU-Linear 512-64-16"


def test_a_sequential_that_is_not_a_resnet_is_left_as_it_is():
    state = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).state_dict()
    assert resnet_from_sequential(state) == (state, None)


# ---------------------------------------------------------------------------------------------
# PyTorch Lightning / solo-learn .ckpt: pickled hyper-parameters


class SoloLearnConfig:
    """A custom class in the hyper-parameters, as solo-learn's and Lightning's configs are;
    reading the checkpoint must not need it."""

    def __init__(self) -> None:
        self.method = "simclr"
        self.optimizer = {"name": "lars", "lr": 0.4}


def lightning_checkpoint(backbone: nn.Module, projector: nn.Module) -> dict:
    """A LightningModule's checkpoint as Lightning writes it (a solo-learn SimCLR's keys)."""
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"projector.{k}": v for k, v in projector.state_dict().items()}
    state |= {f"classifier.{k}": v for k, v in nn.Linear(512, 10).state_dict().items()}
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9)
    return {
        "epoch": 99,
        "global_step": 39100,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"ready": 100}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [{"last_epoch": 99, "base_lrs": [0.4]}],
        "hparams_name": "cfg",
        "hyper_parameters": {
            "cfg": SoloLearnConfig(),
            "args": argparse.Namespace(backbone="resnet18", max_epochs=100),
            "proj_hidden_dim": 64,
        },
        "hparams": argparse.Namespace(lr=0.4),  # older Lightning's name for them
    }


def test_a_lightning_ckpt_with_pickled_hyper_parameters_gives_r_and_z(tmp_path):
    backbone = cifar_resnet18()
    backbone.fc = nn.Identity()  # solo-learn's backbone
    projector = projector_mlp()
    path = tmp_path / "simclr-cifar10-epoch=99.ckpt"
    torch.save(lightning_checkpoint(backbone, projector), path)

    # Every other reader of torch files still refuses it.
    with pytest.raises(RefusedObjectError, match="SoloLearnConfig|argparse.Namespace"):
        safe_load(path, str(path))
    with pytest.raises(DatasetError, match="torch.save\\(model.state_dict\\(\\), path\\)"):
        TorchDataset(filepath=str(path)).load()

    artifact, report = convert_checkpoint(read(path), EncoderConfig(backbone="resnet18"), SETTINGS)
    images = torch.rand(3, 3, 16, 16)
    r = assert_same_encoder(artifact, backbone, images)
    _, z = representation_of(artifact, images)
    with torch.no_grad():
        torch.testing.assert_close(z, projector(r), atol=1e-5, rtol=1e-5)
    assert report["unreadable_entries"] == [
        "hyper_parameters.cfg (tests.test_checkpoint_layouts.SoloLearnConfig)",
        "hyper_parameters.args (argparse.Namespace)",
        "hparams (argparse.Namespace)",
    ]
    assert report["weights"] == "state_dict" and report["layout"] == "entries"
    assert report["unused_entries"] == ["classifier"]
    assert report["projector"] == "Linear-BN-ReLU-Linear 512-64-16"


def test_the_analyze_catalog_entry_reads_a_lightning_ckpt(tmp_path):
    path, source = tmp_path / "last.ckpt", cifar_resnet18()
    torch.save(lightning_checkpoint(source, projector_mlp()), path)
    loader = OmegaConfigLoader(
        str(REPO / "conf"), base_env="base", default_run_env="local",
        runtime_params={"analyze": {"checkpoint": str(path)}},
    )  # fmt: skip
    catalog = DataCatalog.from_config(loader["catalog"])
    loaded = catalog.load("analyze.encoder_checkpoint")
    assert isinstance(loaded["hyper_parameters"]["args"], UnreadableObject)
    assert torch.equal(loaded["state_dict"]["backbone.conv1.weight"], source.conv1.weight)


class RunsAShellCommand:
    """Unpickling this runs ``touch <marker>`` with os.system: what a hostile file can do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_objects_in_an_imported_checkpoint_are_never_run_nor_imported(tmp_path, monkeypatch):
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(RunsAShellCommand(control)))
    assert control.exists()  # the payload is live under ordinary unpickling

    # A global from a module that exists while saving and not while loading: importing it
    # would fail, so reading the file proves it is not imported.
    ghost = types.ModuleType("ghost_module_of_another_program")
    ghost.Config = type("Config", (), {"__module__": ghost.__name__})
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    marker = tmp_path / "marker"
    source = cifar_resnet18()
    checkpoint = {
        "state_dict": source.state_dict(),
        "hyper_parameters": {"callback": RunsAShellCommand(marker), "config": ghost.Config()},
    }
    path = tmp_path / "hostile.ckpt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, ghost.__name__)

    loaded = read(path)
    assert not marker.exists()
    assert ghost.__name__ not in sys.modules
    assert isinstance(loaded["hyper_parameters"]["callback"], UnreadableObject)
    artifact, report = convert_checkpoint(loaded, EncoderConfig(backbone="resnet18"))
    source.fc = nn.Identity()
    assert_same_encoder(artifact, source, torch.rand(2, 3, 16, 16))
    assert report["unreadable_entries"] == [
        f"hyper_parameters.callback ({os.system.__module__}.system)",
        "hyper_parameters.config (ghost_module_of_another_program.Config)",
    ]
    assert not marker.exists()
    with pytest.raises(RefusedFileError, match=rf"\({os.system.__module__}.system\)"):
        safe_load(path, "the file")


def test_the_placeholder_reader_keeps_every_plain_value_as_torch_saved_it(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    plain = {
        "view": base.t()[1:],  # a strided view of a storage that another entry shares
        "base": base,
        "half": torch.randn(3, dtype=torch.bfloat16),
        "uint16": torch.tensor([1, 60000], dtype=torch.uint16),  # via _rebuild_tensor_v3
        "parameter": nn.Parameter(torch.ones(2)),
        "empty": torch.zeros(0),
        "ordered": OrderedDict(a=1, b=[2.5, "c", None, True]),
        "bytes": b"\x00\xffabc",
        "no_bytes": b"",
        "set": {1, 2},
        "frozenset": frozenset({3}),
        "tuple": (1, (2, 3)),
        "complex": 1 + 2j,
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
    }
    path = tmp_path / "plain.pt"
    torch.save(plain | {"args": argparse.Namespace(lr=1)}, path)
    loaded = load_with_placeholders(path, "plain.pt")
    assert isinstance(loaded.pop("args"), UnreadableObject)
    assert loaded.keys() == plain.keys()
    for key, value in plain.items():
        if isinstance(value, torch.Tensor):  # a Parameter comes back as its tensor
            assert type(loaded[key]) is torch.Tensor and loaded[key].dtype == value.dtype, key
            assert loaded[key].shape == value.shape and torch.equal(loaded[key], value), key
        else:
            assert loaded[key] == value and type(loaded[key]) is type(value), key
    assert loaded["view"].untyped_storage().data_ptr() == loaded["base"].data_ptr()


def test_a_whole_pickled_model_is_refused_with_what_to_save_instead(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(cifar_resnet18(), path)
    with pytest.raises(ValueError) as err:
        convert_checkpoint(read(path), EncoderConfig(backbone="resnet18"), SETTINGS)
    message = str(err.value)
    assert "the whole file (torchvision.models.resnet.ResNet) is a pickled Python object" in message
    assert "torch.save(model.state_dict(), path)" in message


@pytest.mark.filterwarnings("ignore:`torch.jit.s:FutureWarning")
def test_files_the_placeholder_reader_cannot_read_say_what_to_do(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"w": torch.ones(2), "args": argparse.Namespace(lr=1)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(DatasetError, match="not in torch's zip format.*torch.save\\(model.state"):
        read(legacy)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), scripted)
    with pytest.raises(DatasetError, match="TorchScript archive.*torch.save\\(model.state"):
        read(scripted)
    with pytest.raises(RefusedFileError, match="TorchScript archive"):
        load_with_placeholders(scripted, "scripted.pt")


# ---------------------------------------------------------------------------------------------
# timm: torchvision's key names, training checkpoints with EMA weights


def timm_resnet18() -> nn.Module:
    """timm's resnet18 has torchvision's module names (conv1, bn1, layer1-4, fc; timm's own
    default weights for it are torchvision's file), so torchvision's model stands in for it."""
    return with_random_statistics(torchvision.models.resnet18(weights=None))


@pytest.mark.parametrize("ema_entry", ["state_dict_ema", "model_ema"])
def test_a_timm_training_checkpoint_reads_its_ema_weights_unless_told_otherwise(
    tmp_path, ema_entry
):
    trained, ema = timm_resnet18(), timm_resnet18()
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    checkpoint = {  # as timm's CheckpointSaver writes it
        "epoch": 10,
        "arch": "resnet18",
        "state_dict": trained.state_dict(),
        "optimizer": torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9).state_dict(),
        "version": 2,
        "args": argparse.Namespace(model="resnet18", model_ema=True),
        ema_entry: {f"module.{k}": v for k, v in ema.state_dict().items()},
        "metric": 71.2,
    }
    path = tmp_path / "model_best.pth.tar"
    torch.save(checkpoint, path)
    loaded = read(path)
    images = torch.rand(2, 3, 64, 64)
    config = EncoderConfig(backbone="resnet18", stem="imagenet")

    artifact, report = convert_checkpoint(loaded, config, SETTINGS)
    for net in (trained, ema):
        net.fc = nn.Identity()
    assert_same_encoder(artifact, ema, images)
    assert report["weights"] == (
        f"{ema_entry} (the EMA weights); state_dict set aside (analyze.encoder.use_ema=false "
        "reads it)"
    )
    assert report["dropped_keys"] == ["fc.bias", "fc.weight"]
    assert report["unreadable_entries"] == ["args (argparse.Namespace)"]

    artifact, report = convert_checkpoint(loaded, config.model_copy(update={"use_ema": False}))
    assert_same_encoder(artifact, trained, images)
    assert report["weights"] == f"state_dict; {ema_entry} set aside (use_ema=true reads it)"


# ---------------------------------------------------------------------------------------------
# safetensors


def test_a_safetensors_file_gives_the_source_representation(tmp_path):
    source = timm_resnet18()  # as timm's weights come on the Hugging Face Hub
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), path, metadata={"format": "pt"})
    artifact, report = convert_checkpoint(
        read(path), EncoderConfig(backbone="resnet18", stem="imagenet")
    )
    source.fc = nn.Identity()
    assert_same_encoder(artifact, source, torch.rand(2, 3, 64, 64))
    assert report["layout"] == "state_dict" and report["unreadable_entries"] == []

    lightly = lightly_backbone()
    save_file({f"backbone.{k}": v for k, v in lightly.state_dict().items()}, path)
    artifact, report = convert_checkpoint(read(path), EncoderConfig(backbone="resnet18"))
    assert_same_encoder(artifact, lightly, torch.rand(2, 3, 16, 16))

    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(DatasetError, match="not a readable safetensors file"):
        read(path)
