"""What a MetaTeacher checkpoint records besides its weights, and the check that it fits the model.

Entries (docs/ARCHITECTURE.md, Checkpoints): ``metakd_teacher_class`` (the class, ``module.QualName``, so
a loader rebuilds a subclass such as MultiTaskTeacher), ``split_fingerprint`` and
``transferability_options`` (what the t_i buffers were computed on), and ``metakd_teacher_identity``
(backbone, domains, labels: a copy that ``load_from_checkpoint(**overrides)`` does not rewrite).
The buffers ``transferability`` and ``prototypes`` have the sizes of the training data, so loading
resizes them first (:func:`resize_buffers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metakd.errors import MetakdError

# Hyperparameters a checkpoint must share with the model that loads it.
IDENTITY_HPARAMS = ("backbone", "num_domains", "num_labels", "domain_names", "label_names", "encoder_config")
IDENTITY_KEY = "metakd_teacher_identity"
# The teacher's class (``module.QualName``), so a loader can rebuild a subclass such as MultiTaskTeacher.
CLASS_KEY = "metakd_teacher_class"
DATA_BUFFERS = ("transferability", "prototypes")
"""Buffers whose sizes follow the training data."""


class CheckpointMismatchError(MetakdError, ValueError):
    """A checkpoint trained for another backbone, domain set or label set."""


def check_checkpoint_compatible(stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` unless backbone, domains and labels agree."""
    problems = []
    for key in IDENTITY_HPARAMS:
        if key not in stored:
            continue
        old, new = stored[key], current.get(key)
        if key in ("domain_names", "label_names") and (old is None or new is None):
            continue
        if key == "encoder_config" and old is not None and new is not None:
            old, new = dict(old), dict(new)
        if old != new:
            problems.append(f"{key}: checkpoint has {old!r}, this model has {new!r}")
    if problems:
        raise CheckpointMismatchError(
            "refusing a MetaTeacher checkpoint made for another model: "
            + "; ".join(problems)
            + ". Use the datamodule (domains, labels) and backbone the checkpoint was trained with."
        )


def save_entries(
    checkpoint: dict[str, Any],
    teacher_class: type,
    hparams: Mapping[str, Any],
    split_fingerprint: str | None,
    transferability_options: dict[str, Any] | None,
) -> None:
    """Write the entries of the module docstring into ``checkpoint``."""
    checkpoint[CLASS_KEY] = f"{teacher_class.__module__}.{teacher_class.__qualname__}"
    checkpoint["split_fingerprint"] = split_fingerprint
    checkpoint["transferability_options"] = transferability_options
    checkpoint[IDENTITY_KEY] = {key: hparams[key] for key in IDENTITY_HPARAMS}


def read_entries(checkpoint: dict[str, Any], hparams: Mapping[str, Any]) -> tuple[str | None, Any]:
    """Check the checkpoint against the model's ``hparams``; returns its ``(split_fingerprint,
    transferability_options)``. A checkpoint without the identity entry is checked by its hyperparameters."""
    stored = checkpoint.get(IDENTITY_KEY, checkpoint.get("hyper_parameters", {}))
    check_checkpoint_compatible(stored, dict(hparams))
    return checkpoint.get("split_fingerprint"), checkpoint.get("transferability_options")


def resize_buffers(buffers: dict[str, Tensor], state_dict: Mapping[str, Tensor], prefix: str) -> None:
    """Give the data-sized buffers the shapes the state dict has (a fresh model cannot know them)."""
    for name in DATA_BUFFERS:
        stored = state_dict.get(prefix + name)
        if stored is not None and stored.shape != buffers[name].shape:
            buffers[name] = torch.empty_like(stored, device=buffers[name].device)
