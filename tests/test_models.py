import pytest
import torch

from directclr.models import (
    ModelConfig,
    artifact_precision,
    build_model,
    model_artifact,
    model_from_artifact,
)
from directclr.projectors import (
    HEAD,
    METHODS,
    TAIL,
    build_projector,
    has_leading_subvector,
    leading_parts,
    uses_d0,
)
from directclr.training import PretrainingConfig


def _model(method, **kw):
    d0 = {"d0": 8} if uses_d0(method) else {}
    return build_model(ModelConfig(method=method, width=4, projector_hidden_dim=16,
                                   projector_dim=12, **d0, **kw), 1, [0.5], [0.25])  # fmt: skip


Z_DIMS = {"simclr": 12, "simclr_linear": 12, "no_projector": 32, "orthogonal": 32,
          "diagonal": 32, "fixed_low_rank": 8, "directclr": 8, "random_subset": 8}  # fmt: skip


def test_the_size_table_below_covers_every_method():
    assert set(Z_DIMS) == set(METHODS)


@pytest.mark.parametrize(("method", "z_dim"), sorted(Z_DIMS.items()))
def test_every_method_maps_r_to_z_of_the_right_size(method, z_dim):
    model = _model(method).eval()
    r, z = model(torch.rand(5, 1, 8, 8))
    assert r.shape == (5, 32)
    assert z.shape == (5, z_dim)


def test_d0_exists_only_for_the_methods_that_use_it():
    assert [m for m in METHODS if uses_d0(m)] == ["fixed_low_rank", "directclr", "random_subset"]
    assert [m for m in METHODS if has_leading_subvector(m)] == ["directclr"]
    assert ModelConfig(method="simclr").d0 is None
    assert ModelConfig(method="fixed_low_rank").d0 == 64
    with pytest.raises(ValueError, match="d0=16 is set, but method=no_projector has no d0"):
        ModelConfig(method="no_projector", d0=16)


def test_model_files_saved_with_a_d0_for_every_method_still_load():
    model = _model("simclr")
    artifact = model_artifact(model, ModelConfig(method="simclr", width=4, projector_hidden_dim=16,
                                                 projector_dim=12), 1)  # fmt: skip
    assert artifact["config"]["d0"] is None
    artifact["config"]["d0"] = 64  # as every file written before d0 became per-method
    again = model_from_artifact(artifact)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(again(x)[1], model.eval()(x)[1])


def test_directclr_embedding_is_the_leading_subvector_of_r():
    model = _model("directclr").eval()
    r, z = model(torch.rand(5, 1, 8, 8))
    torch.testing.assert_close(z, r[:, :8])
    assert sum(p.numel() for p in model.projector.parameters()) == 0


def test_directclrs_two_parts_of_r_are_split_in_one_place():
    r = torch.arange(2 * 3 * 10.0).reshape(2, 3, 10)  # any leading shape: (n, q, d) views too
    parts = leading_parts(r, "directclr", 4)
    assert list(parts) == [HEAD, TAIL] == ["r[:d0]", "r[d0:]"]
    torch.testing.assert_close(torch.cat([parts[HEAD], parts[TAIL]], dim=-1), r)
    assert parts[HEAD].shape == (2, 3, 4) and parts[TAIL].shape == (2, 3, 6)
    # Only z = r[:, :d0] has a head worth its name, and only a d0 short of r leaves a tail.
    assert leading_parts(r, "fixed_low_rank", 4) == {}
    assert leading_parts(r, "simclr", None) == {}
    assert leading_parts(r, "directclr", 10) == {}


def test_model_files_record_the_precision_their_run_trained_with():
    settings = dict(width=4, d0=8, projector_hidden_dim=16, projector_dim=8)
    model = build_model(ModelConfig(method="directclr", width=4, d0=8), 1, [0.5], [0.25])
    trained = model_artifact(model, PretrainingConfig(**settings, precision="bf16"), 1)
    assert trained["precision"] == "bf16" and artifact_precision(trained) == "bf16"
    # A config without a precision (an imported encoder's) records none: it reads as auto.
    imported = model_artifact(model, ModelConfig(method="directclr", width=4, d0=8), 1)
    assert "precision" not in imported and artifact_precision(imported) == "auto"


def test_fixed_low_rank_projector_is_fixed_and_keeps_inner_products_of_its_span():
    projector = build_projector("fixed_low_rank", 32, 8, 0, 0, seed=0)
    assert not list(projector.parameters())
    basis = projector.basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(8), atol=1e-5, rtol=0)
    x = torch.randn(3, 8) @ basis.T  # vectors inside the span
    torch.testing.assert_close(projector(x) @ projector(x).T, x @ x.T, atol=1e-4, rtol=1e-4)


def test_orthogonal_projector_stays_orthogonal():
    weight = _model("orthogonal").projector.weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(32), atol=1e-5, rtol=0)


def test_random_subset_draws_a_new_subset_each_training_step():
    projector = build_projector("random_subset", 32, 8, 0, 0, seed=0).train()
    r = torch.arange(32.0).expand(2, 32)
    first, second = projector(r), projector(r)
    assert not torch.equal(first, second)
    assert projector.eval()(r)[0].tolist() == list(range(8))


def test_random_subset_on_cpu_is_the_seeds_randperm_and_survives_moves():
    # On CPU the subsets are those of a CPU generator seeded with the seed, step after step,
    # and moving the module within its device type (as training does) keeps the stream.
    projector = build_projector("random_subset", 32, 8, 0, 0, seed=3).train()
    generator = torch.Generator().manual_seed(3)
    r = torch.arange(32.0).expand(2, 32)
    for step in range(4):
        expected = torch.randperm(32, generator=generator)[:8].float()
        assert torch.equal(projector(r)[0], expected), step
        projector = projector.to("cpu", memory_format=torch.channels_last)
    assert projector.generator.device.type == "cpu"


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        ModelConfig(method="byol")


def test_resnet18_has_a_cifar_stem_and_a_512_d_representation():
    from directclr.backbones import build_backbone, representation_dim

    backbone = build_backbone("resnet18", in_channels=3)
    assert backbone.net.conv1.kernel_size == (3, 3) and backbone.net.conv1.stride == (1, 1)
    assert isinstance(backbone.net.maxpool, torch.nn.Identity)
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 512) == (2, backbone.output_dim)
    assert representation_dim("resnet18", 64) == 512
    gray = build_backbone("resnet18", in_channels=1)
    assert gray(torch.rand(2, 1, 16, 16)).shape == (2, 512)


def test_resnet50_keeps_the_imagenet_stem_and_zero_init_residual_is_an_option():
    from directclr.backbones import build_backbone, representation_dim

    backbone = build_backbone("resnet50", in_channels=3, zero_init_residual=True)
    assert backbone.net.conv1.kernel_size == (7, 7)
    assert backbone.output_dim == representation_dim("resnet50", 64) == 2048
    assert backbone.net.layer1[0].bn3.weight.abs().sum() == 0
    plain = build_backbone("resnet50", in_channels=3)
    assert plain.net.layer1[0].bn3.weight.abs().sum() > 0
    assert backbone.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2048)


def test_d0_is_checked_against_the_backbone_before_building():
    with pytest.raises(ValueError, match="d0=64 is larger than the representation"):
        ModelConfig(method="directclr", width=4, d0=64)
    with pytest.raises(ValueError, match="d0=600 is larger than the representation"):
        ModelConfig(method="directclr", backbone="resnet18", d0=600)
    assert ModelConfig(method="directclr", backbone="resnet50", d0=600).d0 == 600
