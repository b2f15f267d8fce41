"""Data-parallel training on CPU with gloo: two processes equal one, exactly."""

import os

import pytest
import torch

from directclr.augment import TwoViewAugmentation, ViewAugmentation
from directclr.training import PretrainingConfig, pretrain

IDENTITY = ViewAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0,
                            grayscale_p=0, blur_p=0, solarize_p=0)  # fmt: skip


def _config(**overrides) -> PretrainingConfig:
    settings = dict(
        method="directclr", width=4, d0=8, norm="group", epochs=1, batch_size=16,
        warmup_epochs=0, optimizer="sgd", lr=0.5, weight_decay=0.0, precision="fp32",
        augmentation=TwoViewAugmentation(view1=IDENTITY, view2=IDENTITY), device="cpu",
    )  # fmt: skip
    return PretrainingConfig(**{**settings, **overrides})


@pytest.mark.slow  # a job of several processes
@pytest.mark.parametrize("loss", ["paper", "ntxent"])
def test_one_step_on_two_processes_equals_one_process_on_the_global_batch(digits, loss):
    dataset, card = digits
    images, labels = dataset["train_images"][:16], dataset["train_labels"][:16]
    stats = card["channel_mean"], card["channel_std"]
    single, single_history, _ = pretrain(images, labels, _config(loss=loss), *stats)
    split, split_history, _ = pretrain(images, labels, _config(loss=loss, devices=2), *stats)

    assert split_history["loss"].iloc[0] == pytest.approx(single_history["loss"].iloc[0], abs=1e-5)
    initial, _, _ = pretrain(images, labels, _config(loss=loss, lr=0.0), *stats)
    moved = 0.0
    for name, value in single.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, atol=1e-5, rtol=0, msg=name)
        moved = max(moved, float((value - initial.state_dict()[name]).abs().max()))
    assert moved > 1e-3  # the step really changed the weights


def test_batch_must_split_evenly_over_devices():
    with pytest.raises(ValueError, match="batch_size=15 must split evenly over devices=2"):
        _config(batch_size=15, devices=2)


def test_torchrun_runs_the_kedro_pipeline_and_only_rank_zero_writes(project):
    import subprocess
    import sys

    tiny = ("pretraining.epochs=1,pretraining.batch_size=64,pretraining.width=4,"
            "pretraining.warmup_epochs=0,directclr.pretraining.d0=8,data_prep.max_samples=200,"
            "linear_eval.C_grid=[1.0],linear_eval.raw_pixels=false")  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "kedro", "run", "--pipeline=directclr",
               f"--params={tiny}"]  # fmt: skip
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for artifact in (
        "06_models/directclr/model.pt",
        "07_model_output/directclr/embeddings.pt",
        "08_reporting/directclr/linear_eval_metrics.json",
        "03_primary/dataset.pt",
    ):
        assert len(list((project / "data" / artifact).iterdir())) == 1, artifact  # fmt: skip
    (history,) = (project / "data/07_model_output/directclr/training_history.csv").iterdir()
    lines = (history / "training_history.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,3,")  # 200 images, global batch 64


def _rank_one_fails() -> None:
    import torch.distributed as dist

    from directclr.distributed import init_from_environment

    init_from_environment("cpu", timeout_s=60)
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 cannot read its shard")
    dist.barrier()  # rank 0 would wait here for ever without the job being stopped


@pytest.mark.slow  # a job of several processes
def test_a_failing_process_stops_the_whole_job_with_its_error():
    import time

    from directclr.distributed import spawn

    start = time.monotonic()
    with pytest.raises(Exception, match="rank 1 cannot read its shard"):
        spawn(_rank_one_fails, 2, ())
    assert time.monotonic() - start < 50  # stopped, not left to the 60 s collective timeout


def _write_in_turn(log: str, fail: bool) -> None:
    import time

    from directclr.distributed import rank_and_world, rank_zero_first

    def work() -> int:
        rank = int(os.environ["RANK"])
        if rank == 0:
            time.sleep(1.5)  # a download: longer than the poll, the others must wait
            if fail:
                raise OSError("no network")
        with open(log, "a") as f:
            f.write(f"{rank} {time.monotonic()}\n")
        return rank

    assert rank_zero_first(work, poll_s=0.1) == rank_and_world()[0]


@pytest.mark.slow  # a job of several processes
def test_rank_zero_works_first_and_the_others_after_it(tmp_path):
    from directclr.distributed import spawn

    log = tmp_path / "log.txt"
    spawn(_write_in_turn, 2, (str(log), False))
    ranks = [line.split()[0] for line in log.read_text().splitlines()]
    assert ranks == ["0", "1"]
    with pytest.raises(RuntimeError, match="no network"):
        spawn(_write_in_turn, 2, (str(tmp_path / "failed.txt"), True))
    assert not (tmp_path / "failed.txt").exists()  # rank 1 never ran it


def test_rank_zero_first_outside_a_job_just_works(monkeypatch):
    from directclr.distributed import rank_zero_first

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_zero_first(lambda: 3) == 3


def _global_batch_norm_step(out_dir: str) -> None:
    from torch import nn

    from directclr.distributed import convert_batchnorm, init_from_environment, rank_and_world

    init_from_environment("cpu", timeout_s=60)
    rank, world = rank_and_world()
    results = {}
    for name, shape in (("2d", (8, 3, 5, 4)), ("1d", (8, 6))):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=g) * 3 + 10  # a large mean against the spread
        weight = torch.randn(shape[1], generator=g)
        target = torch.randn(shape, generator=g)
        norm_cls = nn.BatchNorm2d if name == "2d" else nn.BatchNorm1d
        norm = norm_cls(shape[1], momentum=0.3)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.fill_(0.5)
        norm = convert_batchnorm(norm).train()
        share = shape[0] // world
        mine = x[rank * share : (rank + 1) * share].clone().requires_grad_(True)
        for _ in range(2):  # twice: the second uses the updated running mean as its shift
            out = norm(mine)
        (out * target[rank * share : (rank + 1) * share]).sum().backward()
        torch.distributed.all_reduce(norm.weight.grad)
        torch.distributed.all_reduce(norm.bias.grad)
        results[name] = {"out": out.detach(), "x_grad": mine.grad, "w_grad": norm.weight.grad,
                         "b_grad": norm.bias.grad, "mean": norm.running_mean,
                         "var": norm.running_var}  # fmt: skip
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow  # a job of several processes
def test_global_batch_norm_equals_batch_norm_over_the_global_batch(tmp_path):
    from torch import nn

    from directclr.distributed import GlobalBatchNorm, spawn

    spawn(_global_batch_norm_step, 2, (str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, shape in (("2d", (8, 3, 5, 4)), ("1d", (8, 6))):
        # The definition: batch norm in one process over the concatenated global batch.
        g = torch.Generator().manual_seed(1)
        x = (torch.randn(shape, generator=g) * 3 + 10).requires_grad_(True)
        weight = torch.randn(shape[1], generator=g)
        target = torch.randn(shape, generator=g)
        norm = (nn.BatchNorm2d if name == "2d" else nn.BatchNorm1d)(shape[1], momentum=0.3)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.fill_(0.5)
        for _ in range(2):
            out = norm(x)
        (out * target).sum().backward()
        expected = {"out": out.detach(), "x_grad": x.grad, "w_grad": norm.weight.grad,
                    "b_grad": norm.bias.grad, "mean": norm.running_mean,
                    "var": norm.running_var}  # fmt: skip
        for key, value in expected.items():
            if key in ("out", "x_grad"):
                got = torch.cat([ranks[0][name][key], ranks[1][name][key]])
            else:
                got = ranks[0][name][key]
                torch.testing.assert_close(ranks[1][name][key], got, rtol=0, atol=0)
            torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-4, msg=f"{name} {key}")
    # Outside a job it is plain batch norm, and its state dict is batch norm's.
    plain = nn.BatchNorm2d(3)
    converted = GlobalBatchNorm(3)
    assert converted.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)


def _nan_from(steps_by_rank: dict, out_dir: str) -> None:
    import directclr.training.loop as training
    from directclr.losses import paper_info_nce

    rank = int(os.environ["RANK"])
    calls = []

    def loss(z1, z2, temperature, anchors=None):
        calls.append(1)
        value = paper_info_nce(z1, z2, temperature, anchors)
        return value * float("nan") if len(calls) > steps_by_rank[rank] else value

    training.paper_info_nce = loss
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (64,), generator=g)
    try:
        pretrain(images, labels, _config(epochs=2, batch_size=16, progress_every=3),
                 [0.5] * 3, [0.25] * 3)  # fmt: skip
    except FloatingPointError as error:
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(str(error))


@pytest.mark.slow  # a job of several processes
def test_every_process_stops_at_the_first_non_finite_step_of_any_process(tmp_path):
    from directclr.distributed import spawn
    from directclr.optim import learning_rate

    # 4 steps per epoch; rank 1 goes bad at step 5 (epoch 2), rank 0 at step 6.
    spawn(_nan_from, 2, ({0: 6, 1: 5}, str(tmp_path)))
    lr = learning_rate(5, 8, 0, 0.5)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert f"the loss became non-finite at step 5 (epoch 2, lr {lr:.3g})" in message


def test_ranks_other_than_zero_run_only_pretraining_and_what_it_needs(monkeypatch):
    from kedro.pipeline import Node, Pipeline

    from directclr.framework.hooks import RankZeroWrites

    def prepare(x):
        return x, x

    def train(dataset, card):
        return "model", "history"

    def export(model):
        raise AssertionError("embeddings ran on rank 1")

    def measure(embeddings, card):
        raise AssertionError("spectrum ran on rank 1")

    def build() -> Pipeline:
        return Pipeline([
            Node(prepare, "params:data_prep", ["dataset", "card"], name="data_prep.prepare"),
            Node(train, ["dataset", "card"], ["model", "history"],
                 name="run.pretraining.pretrain_model"),
            Node(export, "model", "embeddings", name="run.embeddings.export"),
            Node(measure, {"embeddings": "embeddings", "card": "card"},
                 {"spectrum": "spectrum", "table": "table"}, name="run.spectrum.compute"),
        ])  # fmt: skip

    monkeypatch.setenv("RANK", "1")
    pipeline = build()
    RankZeroWrites().before_pipeline_run({}, pipeline, None)
    funcs = {node.name: node.func for node in pipeline.nodes}
    assert funcs["data_prep.prepare"] is prepare
    assert funcs["run.pretraining.pretrain_model"] is train
    assert funcs["run.embeddings.export"]("model") is None
    assert funcs["run.spectrum.compute"](embeddings=None, card=None) == {
        "spectrum": None, "table": None}  # fmt: skip
    monkeypatch.setenv("RANK", "0")
    pipeline = build()
    RankZeroWrites().before_pipeline_run({}, pipeline, None)
    assert {node.name: node.func for node in pipeline.nodes}["run.embeddings.export"] is export
