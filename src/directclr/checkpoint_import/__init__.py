"""Bring your own encoder: turn a pretrained checkpoint into this project's model artifact.

Researchers already have encoders (the paper's released DirectCLR ResNet-50, SimCLR models from
other code, torchvision weights) and want to know how collapsed they are. This package reads the
files and layouts such checkpoints come in and converts them to the dict of
:func:`directclr.models.model_artifact`, so the embeddings, spectrum and linear_eval stages
measure them unchanged. One module per step:

* :mod:`.foreign` reads the file (:func:`load_foreign_checkpoint`): weights-only torch files;
  torch files whose pickled objects, such as Lightning's hyper-parameters, become inert
  :class:`UnreadableObject` placeholders, listed by the report (``unreadable_entries``) and
  never the source of weights; and ``.safetensors``.
* :mod:`.layouts` takes the loaded checkpoint apart. It may be this project's own
  ``{"config", "in_channels", "state_dict"}`` (layout ``model_artifact``, used as it is: it
  names its architecture); the backbone's state dict under an entry (``backbone`` by default)
  beside the projector's (``projector``), as the paper's code saves them with ``head`` its online
  ImageNet classifier, or as flat ``backbone.…`` keys (layout ``entries``); or a plain
  torchvision or timm ResNet, or SmallCNN, state dict whose classifier ``fc`` is dropped (layout
  ``state_dict``). A ResNet saved as lightly's ``nn.Sequential`` of a torchvision ResNet's
  children is renamed to torchvision's keys. Any of these may sit inside ``state_dict`` /
  ``model`` wrappers (a PyTorch Lightning or solo-learn ``.ckpt``) or timm's EMA wrappers
  ``state_dict_ema`` / ``model_ema`` (preferred unless ``use_ema`` is false), and carry the
  ``module.`` prefix of DistributedDataParallel or ``_orig_mod.`` of ``torch.compile``.
* :mod:`.projector` turns the file's projector into one of this project's.
* :mod:`.convert` checks the backbone against the architecture of :class:`EncoderConfig` and
  builds the model (:func:`convert_checkpoint`); a file whose keys or shapes do not fit is
  refused, listing missing, unexpected and mis-shaped keys and the setting to change.
  :func:`fit_to_dataset` then checks it against the dataset it will encode, and
  :func:`import_summary` (with :func:`small_images_warning`) reads the report out for the log.
"""

from directclr.checkpoint_import.convert import (
    IGNORED_FOR_ARTIFACTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALLEST_IMAGENET_INPUT,
    ChannelStats,
    EncoderConfig,
    convert_checkpoint,
    fit_to_dataset,
    import_summary,
    resolve_normalization,
    small_images_warning,
)
from directclr.checkpoint_import.foreign import (
    UnreadableObject,
    load_foreign_checkpoint,
    load_safetensors,
    load_with_placeholders,
    placeholder_name,
)
from directclr.checkpoint_import.layouts import (
    EMA_WRAPPERS,
    KEY_PREFIXES,
    RESNET_CHILDREN,
    WRAPPERS,
    checkpoint_hash,
    flatten_checkpoint,
    guess_backbone,
    is_model_artifact,
    key_problems,
    resnet_from_sequential,
    unreadable_entries,
    unwrap,
    wrappers,
)
from directclr.checkpoint_import.projector import ConvertedProjector, convert_projector

__all__ = [
    "EMA_WRAPPERS",
    "IGNORED_FOR_ARTIFACTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KEY_PREFIXES",
    "RESNET_CHILDREN",
    "SMALLEST_IMAGENET_INPUT",
    "WRAPPERS",
    "ChannelStats",
    "ConvertedProjector",
    "EncoderConfig",
    "UnreadableObject",
    "checkpoint_hash",
    "convert_checkpoint",
    "convert_projector",
    "fit_to_dataset",
    "flatten_checkpoint",
    "guess_backbone",
    "import_summary",
    "is_model_artifact",
    "key_problems",
    "load_foreign_checkpoint",
    "load_safetensors",
    "load_with_placeholders",
    "placeholder_name",
    "resnet_from_sequential",
    "resolve_normalization",
    "small_images_warning",
    "unreadable_entries",
    "unwrap",
    "wrappers",
]
