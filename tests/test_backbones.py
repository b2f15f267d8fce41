import pytest
import torch

from directclr.backbones import BACKBONES, build_backbone, first_conv_key, stem_kernel


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("stem", ["auto", "cifar", "imagenet"])
@pytest.mark.parametrize("name", BACKBONES)
def test_first_conv_key_and_stem_kernel_describe_the_built_backbone(name, stem, in_channels):
    backbone = build_backbone(name, in_channels, width=4, stem=stem)
    key = first_conv_key(name)
    assert key in backbone.state_dict()
    conv = backbone.get_submodule(key.removesuffix(".weight"))
    assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == in_channels
    assert conv.kernel_size == (stem_kernel(name, stem),) * 2


def test_auto_stems_are_cifar_for_resnet18_and_imagenet_for_resnet50():
    assert stem_kernel("resnet18") == stem_kernel("resnet18", "cifar") == 3
    assert stem_kernel("resnet50") == stem_kernel("resnet50", "imagenet") == 7
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        first_conv_key("vit")
