"""What a MetaTeacher checkpoint records (``metakd/meta_teacher/checkpoint.py``): the identity check,
the entries' round trip and the data-sized buffers."""

from __future__ import annotations

import pytest
import torch

from metakd.meta_teacher.checkpoint import (
    CLASS_KEY,
    IDENTITY_KEY,
    CheckpointMismatchError,
    check_checkpoint_compatible,
    read_entries,
    resize_buffers,
    save_entries,
)

HPARAMS = {
    "backbone": "minilm-l6", "num_domains": 2, "num_labels": 2, "domain_names": ["a", "b"],
    "label_names": ["neg", "pos"], "encoder_config": None, "learning_rate": 1e-3,
}  # fmt: skip


class Teacher:
    """Any class: the checkpoint names it by module and qualified name."""


def test_identity_check() -> None:
    check_checkpoint_compatible(HPARAMS, {**HPARAMS, "learning_rate": 5.0})  # not identity
    check_checkpoint_compatible(HPARAMS, {**HPARAMS, "label_names": None})  # unknown names pass
    check_checkpoint_compatible({"backbone": "minilm-l6"}, HPARAMS)  # an old checkpoint's fewer keys
    with pytest.raises(CheckpointMismatchError) as raised:
        check_checkpoint_compatible(HPARAMS, {**HPARAMS, "num_labels": 3, "backbone": "x"})
    assert "backbone: checkpoint has 'minilm-l6', this model has 'x'; num_labels: checkpoint has 2" in str(
        raised.value
    )


def test_entries_round_trip() -> None:
    checkpoint: dict = {"hyper_parameters": dict(HPARAMS)}
    save_entries(checkpoint, Teacher, HPARAMS, "split1", {"prototypes": False})
    assert checkpoint[CLASS_KEY] == f"{__name__}.Teacher"
    assert checkpoint[IDENTITY_KEY] == {k: HPARAMS[k] for k in list(HPARAMS)[:6]}
    assert read_entries(checkpoint, HPARAMS) == ("split1", {"prototypes": False})
    # load_from_checkpoint(num_labels=3) rewrites the hyperparameters, not the identity entry
    checkpoint["hyper_parameters"]["num_labels"] = 3
    with pytest.raises(CheckpointMismatchError, match="num_labels: checkpoint has 2, this model has 3"):
        read_entries(checkpoint, {**HPARAMS, "num_labels": 3})
    old = {"hyper_parameters": dict(HPARAMS)}  # no identity entry: checked by its hyperparameters
    assert read_entries(old, HPARAMS) == (None, None)
    with pytest.raises(CheckpointMismatchError, match="num_domains"):
        read_entries(old, {**HPARAMS, "num_domains": 3})


def test_buffers_take_the_stored_sizes() -> None:
    buffers = {"transferability": torch.ones(0), "prototypes": torch.zeros(0), "other": torch.zeros(1)}
    state = {"m.transferability": torch.ones(5), "m.prototypes": torch.zeros(2, 3), "m.other": torch.zeros(4)}
    resize_buffers(buffers, state, "m.")
    assert buffers["transferability"].shape == (5,) and buffers["prototypes"].shape == (2, 3)
    assert buffers["other"].shape == (1,)  # only the data-sized buffers
