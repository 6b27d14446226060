"""Stored t_i are reused only for the examples they cover.

A MetaTeacher trained on a ``train_fraction`` (or a ``target_domain``) of the pooled training split
stores t_i for those examples only (NaN elsewhere), under the same ``split_fingerprint`` as the full
split. A student on other examples of that split gets t_i for every example it trains on, computed
from the teacher's stored prototypes (its pre-trained backbone), equal to the stored ones where both
exist; a teacher restored and fit on other examples computes them again; with a randomly initialised
teacher encoder (nothing to recompute from) the error says which examples lack a score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    ToyMultiDomainDataModule,
    tiny_encoder_config,
    tiny_student,
    tiny_teacher,
    tiny_trainer,
    train_tiny_teacher,
    write_tiny_corpus,
)

from datamodules import JsonlDataModule
from metakd.errors import ConfigError, StudentConfigError
from metakd.prototypes import pool, transferability_scores
from metakd.teacher import MetaTeacher


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer: Any) -> str:
    """A tiny 'pre-trained' BERT (random weights saved with save_pretrained) with the MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    BertModel(BertConfig(**tiny_encoder_config()), add_pooling_layer=False).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return str(directory)


def jsonl_data(directory: Path, backbone: str, **overrides: Any) -> JsonlDataModule:
    corpus = directory / "corpus.jsonl"
    if not corpus.is_file():
        write_tiny_corpus(corpus)
    kwargs = {"backbone": backbone, "max_length": 16, "batch_size": 8, "cache_dir": str(directory / "cache")}
    data = JsonlDataModule(train_file=str(corpus), **{**kwargs, **overrides})
    data.setup()
    return data


def train_ids(data: Any) -> torch.Tensor:
    return torch.cat([batch["example_ids"] for batch in data.train_eval_dataloader()])


def fit_teacher(data: Any, backbone: str, path: Path) -> MetaTeacher:
    teacher = tiny_teacher(data, backbone=backbone, encoder_config=None)
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(teacher, datamodule=data)
    trainer.save_checkpoint(path)
    return teacher


def scores_from_prototypes(data: Any, backbone: str, prototypes: torch.Tensor) -> torch.Tensor:
    """t_i of the data's training examples by hand: the pre-trained backbone's masked-mean states scored
    against the given prototypes; NaN for examples not loaded."""
    from transformers import BertModel

    encoder = BertModel.from_pretrained(backbone, add_pooling_layer=False).eval()
    t = torch.full((data.num_pooled_train,), float("nan"))
    with torch.no_grad():
        for batch in data.train_eval_dataloader():
            states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            h = pool(states.last_hidden_state, batch["attention_mask"], "masked_mean")
            t[batch["example_ids"]] = transferability_scores(h, batch["domain_ids"], prototypes)
    return t


@pytest.mark.parametrize("student_data", [{"train_fraction": 0.8}, {"target_domain": "dvd"}])
def test_a_student_on_other_examples_gets_t_i_from_the_prototypes(
    tmp_path: Path, backbone: str, student_data: dict[str, Any]
) -> None:
    teacher_data = jsonl_data(tmp_path, backbone, train_fraction=0.5)
    teacher = fit_teacher(teacher_data, backbone, tmp_path / "teacher.ckpt")
    stored = teacher.transferability.detach().cpu()
    covered = torch.isfinite(stored)
    assert covered[train_ids(teacher_data)].all() and not covered.all()  # half of the pooled split

    data = jsonl_data(tmp_path, backbone, **student_data)
    assert data.split_fingerprint == teacher_data.split_fingerprint  # the same pooled split
    ids = train_ids(data)
    assert not covered[ids].all()  # the student trains on examples the teacher has no t_i for
    student = tiny_student(str(tmp_path / "teacher.ckpt"), data, stage="intermediate", intermediate_epochs=1)
    tiny_trainer(max_steps=1).fit(student, datamodule=data)

    t = student.distiller.weights.transferability
    assert torch.isfinite(t[ids]).all()
    expected = scores_from_prototypes(data, backbone, teacher.prototypes.detach().cpu())
    torch.testing.assert_close(t[ids], expected[ids])
    both = ids[covered[ids]]
    assert both.numel() > 0
    torch.testing.assert_close(t[both], stored[both])  # the teacher's own scores where it has them


def test_a_transfer_set_student_gets_its_copies_sources_t_i(tmp_path: Path, backbone: str) -> None:
    """A ``metakd_transfer`` student of books trains on copies of dvd examples (their source ids); the
    teacher's t_i cover half of the pooled split, so each copy gets its source's recomputed score."""
    teacher_data = jsonl_data(tmp_path, backbone, train_fraction=0.5)
    teacher = fit_teacher(teacher_data, backbone, tmp_path / "teacher.ckpt")
    spec = {
        "class_path": "metakd_transfer",
        "per_example": 1,
        "init_args": {"teacher_ckpt": str(tmp_path / "teacher.ckpt")},
    }
    data = jsonl_data(tmp_path, backbone, target_domain="books", augment=spec)
    assert data.num_train_ids > data.num_pooled_train
    student = tiny_student(str(tmp_path / "teacher.ckpt"), data, stage="intermediate", intermediate_epochs=1)
    tiny_trainer(max_steps=1).fit(student, datamodule=data)

    t = student.distiller.weights.transferability
    ids = train_ids(data)
    expected = scores_from_prototypes(
        jsonl_data(tmp_path, backbone), backbone, teacher.prototypes.detach().cpu()
    )
    torch.testing.assert_close(t[ids], expected[data.source_example_ids[ids]])


def test_a_student_within_the_teachers_examples_reuses_its_stored_t_i(tmp_path: Path, backbone: str) -> None:
    teacher_data = jsonl_data(tmp_path, backbone)
    teacher = fit_teacher(teacher_data, backbone, tmp_path / "teacher.ckpt")
    data = jsonl_data(tmp_path, backbone, target_domain="books", train_fraction=0.5)
    student = tiny_student(str(tmp_path / "teacher.ckpt"), data, stage="intermediate", intermediate_epochs=1)
    student.teacher_source.origin.module.prototypes.zero_()  # a recomputation would give other scores
    tiny_trainer(max_steps=1).fit(student, datamodule=data)
    assert torch.equal(student.distiller.weights.transferability, teacher.transferability.detach().cpu())


def test_a_restored_teacher_fit_on_other_examples_computes_its_t_i_again(
    tmp_path: Path, backbone: str
) -> None:
    fit_teacher(jsonl_data(tmp_path, backbone, train_fraction=0.5), backbone, tmp_path / "teacher.ckpt")
    data = jsonl_data(tmp_path, backbone, train_fraction=0.8)
    restored = MetaTeacher.load_from_checkpoint(tmp_path / "teacher.ckpt", map_location="cpu")
    tiny_trainer(max_steps=1).fit(restored, datamodule=data)
    t = restored.transferability.detach().cpu()
    ids = train_ids(data)
    assert torch.isfinite(t[ids]).all()
    expected = scores_from_prototypes(data, backbone, restored.prototypes.detach().cpu())
    torch.testing.assert_close(t[ids], expected[ids])


def test_a_random_encoder_teacher_on_other_examples_names_the_missing_scores(tmp_path: Path) -> None:
    """Its initial weights are gone, so t_i cannot be recomputed: a clear error, not NaN weights."""
    teacher_data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom0")
    path = train_tiny_teacher(str(tmp_path / "teacher.ckpt"), teacher_data)
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    student = tiny_student(path, data, stage="intermediate", intermediate_epochs=1)
    uncovered = r"cover 0 of the 12 training examples of this data \(another train_fraction or target_domain"
    with pytest.raises(StudentConfigError, match=r"cannot recompute t_i.*" + uncovered):
        tiny_trainer(max_steps=1).fit(student, datamodule=data)
    restored = MetaTeacher.load_from_checkpoint(path, map_location="cpu")
    with pytest.raises(ConfigError, match=r"random initialisation.*" + uncovered):
        tiny_trainer(max_steps=1).fit(restored, datamodule=data)
