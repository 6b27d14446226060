"""Student checkpoints written before the method registry (format 1) still load, initialise and export.

Format 1 differs from format 2 in the ``metakd_student`` entry (an HF config, labels, tokenizer, target
domain) and in the hyperparameters (no ``student_model`` / ``distillation_options``; ``temperature``,
``t2_scaling``, ``hard_label_weight`` had the defaults 1.0, False, 0.0). The weights' keys are the same:
``tests/test_student_golden.py`` pins them against the old code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_student, tiny_trainer, train_tiny_teacher

from metakd.export import export_student
from metakd.student import CHECKPOINT_KEY, Student


def as_format_one(path: Path, out: Path) -> Path:
    """Rewrite a Student checkpoint the way the code before the registry wrote it."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    payload = checkpoint[CHECKPOINT_KEY]
    checkpoint[CHECKPOINT_KEY] = {
        "hf_config": payload["student"]["hf_config"],
        "label_names": payload["label_names"],
        "tokenizer_name": payload["tokenizer_name"],
        "target_domain": payload["target_domain"],
    }
    hparams = checkpoint["hyper_parameters"]
    for key in ("student_model", "distillation_options"):
        hparams.pop(key)
    hparams.update({"temperature": 1.0, "t2_scaling": False, "hard_label_weight": 0.0})
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize("distillation", ["none", "meta"])
def test_format_one_checkpoints_load_initialise_and_export(distillation: str, tmp_path: Path) -> None:
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    teacher = None if distillation == "none" else train_tiny_teacher(str(tmp_path / "teacher.ckpt"), data)
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    stage = {} if distillation == "none" else {"stage": "intermediate"}
    student = tiny_student(teacher, data, distillation=distillation, **stage)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    old = as_format_one(tmp_path / "new.ckpt", tmp_path / "old.ckpt")

    # load_from_checkpoint with the old hyperparameters (what `test --ckpt_path` does)
    loaded = Student.load_from_checkpoint(old, map_location="cpu", weights_only=True)
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # init_from (e.g. the prediction stage after an older intermediate-stage run)
    follow = tiny_student(teacher, data, distillation=distillation, stage="prediction", init_from=str(old))
    for key, value in student.model.state_dict().items():
        assert torch.equal(follow.model.state_dict()[key], value), key
    # export reads the HF config of format 1
    report = export_student(old, tmp_path / "exported")
    assert report.hf_max_abs_diff <= 1e-5 and (tmp_path / "exported" / "config.json").is_file()
