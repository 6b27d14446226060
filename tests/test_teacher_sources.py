"""The two teacher sources behind one interface (``metakd/teacher_sources.py``) and FrozenTeacher's
freezing of either: a MetaTeacher checkpoint (the v1 golden file) and a plain HF classifier directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden.teacher_golden import CHECKPOINTS, checkpoint_batch
from helpers import tiny_encoder_config

from metakd.errors import StudentConfigError, TeacherCheckpointError
from metakd.teacher_sources import HFClassifier, MetaTeacherCheckpoint, TeacherSource, open_teacher_source
from metakd.teachers import FrozenTeacher
from metakd.utils import file_fingerprint


def hf_directory(path: Path, labels: dict[int, str] | None) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    names = {} if labels is None else {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
    config = BertConfig(**tiny_encoder_config(vocab_size=5000), num_labels=2, **names)
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def test_the_checkpoint_source(tmp_path: Path) -> None:
    path = str(CHECKPOINTS["teacher"])
    source = open_teacher_source(path)
    assert isinstance(source, MetaTeacherCheckpoint) and isinstance(source, TeacherSource)
    assert (source.kind, source.label_names, source.domains) == (
        "metakd",
        ["label0", "label1"],
        ["dom0", "dom1", "dom2"],
    )
    assert source.tokenizer_name == "minilm-l6" and "transferable" in source.provides
    assert source.config.num_hidden_layers == 1 and source.encoder is source.module.encoder
    batch = checkpoint_batch()
    logits, hidden, attentions, g = source.run(batch, batch["domain_ids"], hidden=True, attention=False)
    assert logits.shape == (9, 2) and len(hidden) == 2 and attentions is None and g.shape == (9, 8)
    assert source.fingerprint() == file_fingerprint(path)
    with pytest.raises(StudentConfigError, match="instance weighting needs a metakd datamodule"):
        source.transferability(None, torch.tensor([0, 1, 2]))
    for missing in (
        str(tmp_path / "none.ckpt"),
        str(tmp_path / "sub" / "x"),
    ):  # a file path that is not there
        with pytest.raises(TeacherCheckpointError, match="teacher checkpoint not found"):
            open_teacher_source(missing)


def test_the_hf_source(tmp_path: Path) -> None:
    directory = hf_directory(tmp_path / "hf", {0: "neg", 1: "pos"})
    source = open_teacher_source(directory)
    assert isinstance(source, HFClassifier) and isinstance(source, TeacherSource)
    assert (source.kind, source.label_names, source.domains) == ("hf", ["neg", "pos"], None)
    assert source.tokenizer_name is None  # the directory ships no tokenizer
    assert source.provides == {"logits", "hidden", "attention"} and not source.positional_labels
    batch = checkpoint_batch()
    logits, hidden, attentions, g = source.run(batch, None, hidden=True, attention=False)
    assert logits.shape == (9, 2) and len(hidden) == 3 and g is None
    assert source.fingerprint() != open_teacher_source(hf_directory(tmp_path / "other", None)).fingerprint()
    with pytest.raises(StudentConfigError, match="is a plain HuggingFace classifier"):
        source.transferability(None, torch.zeros(3, dtype=torch.long))
    source.source = "org/model"  # a hub name is identified by its name
    assert source.fingerprint() == "hub:org/model"


@pytest.mark.parametrize("kind", ["teacher", "hf"])
def test_frozen_teacher_freezes_either_source(kind: str, tmp_path: Path) -> None:
    path = str(CHECKPOINTS["teacher"]) if kind == "teacher" else hf_directory(tmp_path / "hf", None)
    teacher = FrozenTeacher(path, ["label0", "label1"], ["dom0", "dom1", "dom2"])
    assert not teacher.module.training and not any(p.requires_grad for p in teacher.module.parameters())
    assert teacher.kind == ("metakd" if kind == "teacher" else "hf")
    assert teacher.uses_domains == (kind == "teacher")
    assert teacher.label_names == ["label0", "label1"]  # an HF config's LABEL_0, LABEL_1 are positional
    expected = [0, 1, 2] if kind == "teacher" else [0, 0, 0]
    assert teacher.domain_map.tolist() == expected
