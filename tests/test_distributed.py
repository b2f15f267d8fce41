"""Data-parallel training on CPU with gloo: two processes equal one, exactly."""

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
