import math

import pytest
import torch
from torch import nn

from directclr.optim import LARS, build_optimizer, learning_rate, parameter_groups, scaled_lr


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


def _paper_learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """adjust_learning_rate of the paper's directclr/utils.py, written out: after warmup,
    q = (1 + cos(pi * t / T)) / 2 and lr = base_lr * q + 0.001 * base_lr * (1 - q)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    t, T = step - warmup_steps, total_steps - warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * t / T))
    end_lr = base_lr * 0.001
    return base_lr * q + end_lr * (1 - q)


def test_the_cosine_ends_at_the_final_share_of_lr_as_in_the_paper():
    # The paper's ImageNet run: 100 epochs of 312 steps, 10 of them warmup, lr 4.8.
    total, warmup = 100 * 312, 10 * 312
    for step in [warmup, warmup + 1, 5000, 17000, total - 2, total - 1]:
        assert learning_rate(step, total, warmup, 4.8, 0.001) == pytest.approx(
            _paper_learning_rate(step, total, warmup, 4.8), rel=1e-12
        ), step
    assert learning_rate(warmup, total, warmup, 4.8, 0.001) == pytest.approx(4.8)
    assert learning_rate(total, total, warmup, 4.8, 0.001) == pytest.approx(0.0048)
    # The warmup is one step ahead of the paper's: it reaches lr at its last step.
    assert _paper_learning_rate(0, total, warmup, 4.8) == 0.0
    for step in [0, 1, 1559, warmup - 1]:
        assert learning_rate(step, total, warmup, 4.8, 0.001) == pytest.approx(
            _paper_learning_rate(step + 1, total, warmup, 4.8), rel=1e-12
        ), step


def test_a_final_share_of_zero_is_the_cosine_to_zero_exactly():
    # The default: bit for bit what runs computed before the setting existed.
    for step in range(100):
        before = (
            1.7 * (step + 1) / 10
            if step < 10
            else 1.7 * 0.5 * (1 + math.cos(math.pi * ((step - 10) / 90)))
        )
        assert learning_rate(step, 100, 10, 1.7) == before
        assert learning_rate(step, 100, 10, 1.7, 0.0) == before


def test_learning_rate_scales_with_batch_size():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    assert scaled_lr(0.3, 4096, "none") == 0.3
    assert math.isclose(scaled_lr(1.0, 256, "linear"), 1.0)


class _LoopLARS(torch.optim.Optimizer):
    """The per-parameter loop LARS was written as, kept as the reference of the foreach one."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["adapt"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["eta"] * p_norm / g_norm,
                        torch.ones_like(p_norm),
                    )
                    g = g.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def test_foreach_lars_equals_the_per_parameter_loop():
    def model() -> nn.Module:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
                            nn.Linear(3, 2, bias=False))  # fmt: skip
        with torch.no_grad():
            net[4].weight.zero_()  # a zero norm: the trust ratio falls back to 1
        return net

    nets = model(), model()
    frozen = nets[0][3].bias, nets[1][3].bias  # a parameter without a gradient is skipped
    optimizers = [
        cls(parameter_groups(net, 1e-3), lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.02)
        for cls, net in zip((LARS, _LoopLARS), nets, strict=True)
    ]
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        for net, optimizer, skip in zip(nets, optimizers, frozen, strict=True):
            optimizer.zero_grad(set_to_none=True)
            net(x).square().sum().backward()
            skip.grad = None
            optimizer.step()
        for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(),
                                strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"{name} step {step}")
