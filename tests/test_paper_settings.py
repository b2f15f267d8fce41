"""Where a setting claims to be the paper's, it is that of the paper's code
(facebookresearch/directclr)."""

import pytest
import torch
import torch.nn.functional as F

from directclr.augment import ViewAugmentation, augment
from directclr.losses import paper_info_nce
from directclr.models import ModelConfig, build_model, model_artifact, model_from_artifact
from directclr.optim import LARS
from directclr.training import PretrainingConfig


def _reference_info_nce(z1, z2, temperature):
    """The paper's ``infoNCE(nn, p)``, written out for one process."""
    nn_, p = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = nn_ @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(len(z1)))


def test_the_loss_is_the_papers_two_directions_with_other_view_negatives():
    z1, z2 = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, 6, dtype=torch.float64)
    expected = _reference_info_nce(z1, z2, 0.1) / 2 + _reference_info_nce(z2, z1, 0.1) / 2
    assert paper_info_nce(z1, z2, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    shares = [paper_info_nce(z1, z2, 0.1, anchors=(a, a + 4)) for a in (0, 4, 8)]
    assert torch.stack(shares).mean().item() == pytest.approx(expected.item(), rel=1e-6)
    # N - 1 negatives: 8 orthogonal pairs at temperature 1 give -1 + log(e + 7), where
    # SimCLR's 2N - 2 negatives would give -1 + log(e + 14).
    eye = torch.eye(8, dtype=torch.float64)
    expected = torch.log(torch.exp(torch.tensor(1.0, dtype=torch.float64)) + 7) - 1
    assert paper_info_nce(eye, eye, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_paper_facing_defaults():
    config = PretrainingConfig(method="simclr")
    assert config.loss == "paper" and config.zero_init_residual
    assert config.projector_hidden_dim == 512 and config.projector_dim == 128  # [r, r, 128]
    assert ModelConfig(method="simclr", backbone="resnet50").projector_hidden_dim == 2048
    linear = build_model(ModelConfig(method="simclr_linear", width=4), 1, [0.0], [1.0])
    assert linear.projector.weight.shape == (128, 32)  # r -> 128
    param = torch.nn.Parameter(torch.ones(3))
    assert LARS([param], lr=1.0).defaults["eta"] == 0.001
    view = ViewAugmentation()
    assert view.blur_sigma == pytest.approx((0.1 / 224, 2.0 / 224))


def test_blur_sigma_is_relative_to_the_image_side():
    """The same relative sigma blurs a 224 px image as much, relatively, as a 32 px one."""
    config = ViewAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0,
                              grayscale_p=0, blur_p=1.0, blur_sigma=(0.1, 0.1))  # fmt: skip
    small = torch.zeros(1, 1, 32, 32)
    small[..., :, 16:] = 1.0
    large = F.interpolate(small, size=(224, 224), mode="nearest")
    blurred_small = augment(small, config, torch.Generator().manual_seed(0))
    blurred_large = augment(large, config, torch.Generator().manual_seed(0))
    # The edge's profile, read at the same relative positions, matches within resampling.
    profile_small = blurred_small[0, 0, 16, 12:20]
    profile_large = F.interpolate(blurred_large, size=(32, 32), mode="area")[0, 0, 16, 12:20]
    torch.testing.assert_close(profile_small, profile_large, atol=0.06, rtol=0)
    assert 0.05 < blurred_small[0, 0, 16, 15].item() < 0.5  # a real blur, not a no-op


def test_the_small_backbone_ends_in_a_zero_init_residual_block_that_trains_r_d0_through_identity():
    """DirectCLR's r[:, d0:] gets no gradient from the loss; after one step, the last block's
    own branch still has none for those channels, but the block before it does: the
    identity path carries trained features into r[:, d0:]."""
    torch.manual_seed(0)
    d0, width = 8, 4
    model = build_model(ModelConfig(method="directclr", width=width, d0=d0), 1, [0.5], [0.25])
    block = model.backbone.residual
    assert block.norm3.weight.abs().sum() == 0  # starts as the identity
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images = torch.rand(32, 1, 8, 8)

    def loss_of_one_step():
        optimizer.zero_grad()
        _, z = model(torch.cat([images, images.flip(3)]))
        z1, z2 = z.chunk(2)
        loss = paper_info_nce(z1, z2, 0.1)
        loss.backward()
        return loss

    loss_of_one_step()
    optimizer.step()
    loss_of_one_step()  # the gradients after one optimiser step
    assert block.norm3.weight[:d0].abs().sum() > 0  # the branch now feeds r[:, :d0]
    for grad in (block.conv3.weight.grad[d0:], block.norm3.weight.grad[d0:],
                 block.norm3.bias.grad[d0:]):  # fmt: skip
        assert torch.count_nonzero(grad) == 0
    previous_conv, previous_norm = model.backbone.features[-3], model.backbone.features[-2]
    assert previous_conv.weight.grad[d0:].abs().sum() > 0
    assert previous_norm.weight.grad[d0:].abs().sum() > 0


def test_a_small_cnn_saved_before_its_residual_block_says_what_to_do():
    model = build_model(ModelConfig(method="directclr", width=4, d0=8), 1, [0.0], [1.0])
    artifact = model_artifact(model, ModelConfig(method="directclr", width=4, d0=8), 1)
    old = {k: v for k, v in artifact["state_dict"].items() if ".residual." not in k}
    with pytest.raises(ValueError, match="before small_cnn ended in a residual block.*retrain"):
        model_from_artifact({**artifact, "state_dict": old})
