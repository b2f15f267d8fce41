"""A run's settings: which ones name the run (its checkpoint's key), and which only say how
it is executed."""

import pytest
from pydantic import Field

from directclr.training import (
    PretrainingConfig,
    execution_setting,
    execution_settings,
    run_key,
    validated_settings,
)


def test_the_execution_only_settings_are_the_marked_fields():
    assert execution_settings() == {
        "device", "checkpoint_every", "resume", "progress_every", "num_workers", "devices",
        "dist_timeout_s",
    }  # fmt: skip


def test_the_key_of_an_existing_checkpoint_is_unchanged():
    # Keys computed by the release before the settings moved into their own module: a
    # checkpoint filed under them must still be found, or a killed run would start afresh.
    config = PretrainingConfig(epochs=20, width=4, d0=8, batch_size=64)
    assert run_key(config, "data-abc", 1, "cpu", False) == "directclr-e1c7a280edc33f2f"
    config = PretrainingConfig(
        epochs=20, method="simclr", device="cpu", checkpoint_every=3, num_workers=2
    )
    assert run_key(config, "data-abc", 2, "cuda", True) == "simclr-840e0fc6a044b5f9"


def test_a_new_execution_only_field_leaves_the_key_unchanged():
    class WithExecutionOption(PretrainingConfig):
        log_every: int = execution_setting(5, ge=1, description="how often to log")

    class WithComputedOption(PretrainingConfig):
        label_smoothing: float = Field(0.0, ge=0)

    before = run_key(PretrainingConfig(epochs=20), "data")
    assert run_key(WithExecutionOption(epochs=20), "data") == before
    assert run_key(WithExecutionOption(epochs=20, log_every=50), "data") == before
    # A setting that changes what is computed changes the key: an old checkpoint is not
    # continued under settings it was not made with.
    assert run_key(WithComputedOption(epochs=20), "data") != before


def test_an_added_setting_is_keyed_only_away_from_its_default():
    # final_lr_ratio came after the pinned keys above: at its default (0, the cosine to zero
    # that those runs used) it leaves every key as it was; another value names another run.
    assert PretrainingConfig.model_fields["final_lr_ratio"].default == 0.0
    config = PretrainingConfig(epochs=20, width=4, d0=8, batch_size=64, final_lr_ratio=0.0)
    assert run_key(config, "data-abc", 1, "cpu", False) == "directclr-e1c7a280edc33f2f"
    paper = config.model_copy(update={"final_lr_ratio": 0.001})
    assert run_key(paper, "data-abc", 1, "cpu", False) != "directclr-e1c7a280edc33f2f"
    other = config.model_copy(update={"final_lr_ratio": 0.01})
    assert len({run_key(c, "data-abc") for c in (config, paper, other)}) == 3


def test_a_setting_added_later_leaves_the_keys_of_earlier_runs_unchanged():
    from directclr.augment import TwoViewAugmentation, ViewAugmentation
    from directclr.training.config import added_setting

    class WithAddedOption(PretrainingConfig):
        label_smoothing: float = added_setting(0.0, ge=0)

    # Also inside nested settings: a new augmentation field at its default.
    class View(ViewAugmentation):
        sharpen_p: float = added_setting(0.0, ge=0, le=1)

    class Views(TwoViewAugmentation):
        view1: View = View(blur_p=1.0, solarize_p=0.0)
        view2: View = View(blur_p=0.1, solarize_p=0.2)

    class WithAddedAugmentation(PretrainingConfig):
        augmentation: Views = Views()

    before = run_key(PretrainingConfig(epochs=20), "data")
    assert run_key(WithAddedOption(epochs=20), "data") == before
    assert run_key(WithAddedOption(epochs=20, label_smoothing=0.1), "data") != before
    assert run_key(WithAddedAugmentation(epochs=20), "data") == before
    sharper = Views(view2=View(blur_p=0.1, solarize_p=0.2, sharpen_p=0.5))
    assert run_key(WithAddedAugmentation(epochs=20, augmentation=sharper), "data") != before


@pytest.mark.parametrize("name", sorted(execution_settings()))
def test_changing_an_execution_only_setting_keeps_the_key(name):
    other = {
        "device": "cpu", "checkpoint_every": 7, "resume": False, "progress_every": 3,
        "num_workers": 1, "devices": 2, "dist_timeout_s": 30.0,
    }[name]  # fmt: skip
    assert run_key(PretrainingConfig(**{name: other}), "data") == run_key(
        PretrainingConfig(), "data"
    )


def test_changing_a_computed_setting_changes_the_key():
    assert run_key(PretrainingConfig(lr=2e-3), "data") != run_key(PretrainingConfig(), "data")
    assert run_key(PretrainingConfig(), "data", bf16=True) != run_key(PretrainingConfig(), "data")


def test_a_node_takes_only_settings_the_hook_validated():
    config = PretrainingConfig(epochs=2)
    assert validated_settings(config, "pretrain_model") is config
    # The raw parameters (a run outside the project's hooks) are refused, naming the node.
    with pytest.raises(TypeError, match=r"^initialise_model needs the run's validated settings"):
        validated_settings({"epochs": 2}, "initialise_model")
