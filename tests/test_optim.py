import math

import pytest
import torch
from torch import nn

from directclr.optim import LARS, build_optimizer, parameter_groups, scaled_lr


def test_lars_step_scales_weight_updates_by_the_trust_ratio():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1
    bias.grad = torch.tensor([2.0])
    groups = [{"params": [weight], "adapt": True, "weight_decay": 0.0},
              {"params": [bias], "adapt": False, "weight_decay": 0.0}]  # fmt: skip
    LARS(groups, lr=0.1, momentum=0.9, eta=0.02).step()
    # weight: g * eta * ||w|| / ||g|| = g * 0.1; update = lr * that
    torch.testing.assert_close(weight.data, torch.tensor([[3.0 - 0.1 * 0.06, 4.0 - 0.1 * 0.08]]))
    # bias: plain SGD, no trust ratio
    torch.testing.assert_close(bias.data, torch.tensor([1.0 - 0.1 * 2.0]))


def test_lars_weight_decay_enters_before_the_trust_ratio_and_skips_excluded_params():
    weight = nn.Parameter(torch.tensor([[1.0, 0.0]]))
    weight.grad = torch.zeros(1, 2)
    norm = nn.Parameter(torch.tensor([1.0]))
    norm.grad = torch.zeros(1)
    groups = [{"params": [weight], "adapt": True, "weight_decay": 0.5},
              {"params": [norm], "adapt": False, "weight_decay": 0.0}]  # fmt: skip
    LARS(groups, lr=1.0, eta=0.02).step()
    # g = 0.5 * w, trust = 0.02 * 1 / 0.5 -> update = 0.02 * w
    torch.testing.assert_close(weight.data, torch.tensor([[0.98, 0.0]]))
    assert norm.data.item() == 1.0


def test_biases_and_norm_parameters_are_neither_decayed_nor_adapted():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert decay["adapt"] and not no_decay["adapt"]
    for name in ("lars", "sgd", "adamw"):
        opt = build_optimizer(name, model, lr=0.1, weight_decay=0.1, momentum=0.9)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("adagrad", model, 0.1, 0.0, 0.9)


def test_learning_rate_scales_with_batch_size():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    assert scaled_lr(0.3, 4096, "none") == 0.3
    assert math.isclose(scaled_lr(1.0, 256, "linear"), 1.0)
