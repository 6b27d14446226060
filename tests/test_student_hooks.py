"""The Student's hooks into architectures and methods: an architecture bound to its teacher
(``needs_teacher`` / ``bind_teacher``), stages that train named parts of the student (``Stage.trains`` /
``StudentModel.parts``), a method's construction check (``Distiller.check``) and inference that differs
from the training forward (``StudentModel.predict_logits``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import (
    MeanPoolMLPStudent,
    ToyMultiDomainDataModule,
    WeightSnapshots,
    tiny_student,
    tiny_trainer,
)

from metakd.distill import Distiller, HardCE, Stage
from metakd.errors import StudentConfigError


@pytest.fixture
def teacher_ckpt(tiny_teacher_ckpt: str) -> str:
    return tiny_teacher_ckpt


def toy() -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")


class TeacherEmbeddingStudent(MeanPoolMLPStudent):
    """Starts from the teacher's word embeddings (frozen), which it reads in ``bind_teacher``."""

    needs_teacher = True

    def __init__(self, num_labels: int, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__(num_labels, vocab_size, pad_token_id, dim=32)  # the tiny teacher's width
        self.bound: list[Any] = []

    def bind_teacher(self, teacher: Any) -> None:
        self.bound.append(teacher)
        with torch.no_grad():
            self.embeddings.weight.copy_(teacher.module.encoder.embeddings.word_embeddings.weight)
        self.embeddings.requires_grad_(False)

    def parts(self) -> dict[str, list[torch.nn.Module]]:
        return {"body": [self.embeddings, self.mlp], "classifier": [self.classifier]}


BOUND = {"class_path": "test_student_hooks.TeacherEmbeddingStudent"}


class TwoPhases(Distiller):
    """The MLP and classifier first, then the classifier alone (both on the gold labels)."""

    label = "two phases"

    def __init__(self, prediction_lr: float = 1e-2) -> None:
        self.lr = prediction_lr

    def stages(self) -> list[Stage]:
        return [
            Stage("body", [HardCE()], epochs=1, lr=self.lr, trains=("body", "classifier")),
            Stage("head", [HardCE()], lr=self.lr, trains=["classifier"]),
        ]


def test_an_architecture_built_around_its_teacher_is_bound_to_it_once(teacher_ckpt: str) -> None:
    data = toy()
    student = tiny_student(teacher_ckpt, data, distillation="none", student_config=None, student_model=BOUND)
    model = student.model
    assert model.bound == [student.teacher_source]  # once, with the FrozenTeacher
    expected = student.teacher.encoder.embeddings.word_embeddings.weight
    torch.testing.assert_close(model.embeddings.weight, expected)
    assert "model.embeddings.weight" in student.state_dict()  # the copy is the student's ...
    assert not any(
        k.startswith(("teacher", "model.bound")) for k in student.state_dict()
    )  # ... the teacher not
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    # No loss term reads the teacher: it is neither prefilled nor run during the steps.
    assert student.teacher_source.forward_calls == 0 and student.teacher_source.cache is None
    torch.testing.assert_close(model.embeddings.weight, expected)  # frozen by the architecture

    with pytest.raises(
        StudentConfigError, match=r"TeacherEmbeddingStudent.*built around its teacher.*teacher_ckpt"
    ):
        tiny_student(None, data, distillation="none", student_config=None, student_model=BOUND)


def test_stages_train_their_parts_and_frozen_parameters_are_not_stepped(teacher_ckpt: str) -> None:
    """Epoch 0 trains the body and the classifier, epoch 1 the classifier alone: the MLP does not move
    in epoch 1, not even by weight decay; the embeddings the architecture froze never move."""
    data = toy()
    student = tiny_student(
        teacher_ckpt, data, distillation="test_student_hooks.TwoPhases", student_config=None,
        student_model=BOUND, weight_decay=0.5,
    )  # fmt: skip
    snapshots = WeightSnapshots()
    trainer = tiny_trainer(max_steps=-1, max_epochs=2, limit_train_batches=2, callbacks=[snapshots])
    trainer.fit(student, datamodule=data)
    start, body, head = snapshots.states
    for key in ("mlp.0.weight", "mlp.0.bias", "classifier.weight"):
        assert not torch.equal(body[key], start[key]), key  # epoch 0 trained them
    for key in ("mlp.0.weight", "mlp.0.bias"):
        assert torch.equal(head[key], body[key]), key  # frozen in epoch 1
    assert not torch.equal(head["classifier.weight"], body["classifier.weight"])
    assert torch.equal(head["embeddings.weight"], start["embeddings.weight"])
    assert student.current_stage().name == "head"
    assert all(not p.requires_grad for p in student.model.mlp.parameters())


class NeedsWideStudents(Distiller):
    """A method that refuses narrow students in its construction check."""

    def stages(self) -> list[Stage]:
        return [Stage("prediction", [HardCE()])]

    def check(self, context: Any) -> None:
        if context.student.hidden_size < 64:
            raise StudentConfigError(f"too narrow: {context.student.hidden_size}")


def test_unknown_parts_and_a_method_check_are_refused_at_construction(teacher_ckpt: str) -> None:
    data = toy()
    with pytest.raises(
        StudentConfigError,
        match=r"stage 'body'\) trains the student's parts \['body', 'classifier'\].*HFStudent has parts \[\]",
    ):
        tiny_student(teacher_ckpt, data, distillation="test_student_hooks.TwoPhases")
    with pytest.raises(StudentConfigError, match="too narrow: 16"):
        tiny_student(teacher_ckpt, data, distillation="test_student_hooks.NeedsWideStudents")


class ConstantInference(MeanPoolMLPStudent):
    """Its forward always says class 0; its inference always says class 1."""

    def __init__(self, num_labels: int, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__(num_labels, vocab_size, pad_token_id)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.copy_(torch.tensor([10.0, -10.0]))

    def predict_logits(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        logits = torch.zeros(input_ids.shape[0], 2)
        logits[:, 1] = 1.0
        return logits


def test_evaluation_and_prediction_go_through_predict_logits() -> None:
    data = toy()
    data.setup()
    spec = {"class_path": "test_student_hooks.ConstantInference"}
    student = tiny_student(None, data, distillation="none", student_config=None, student_model=spec)
    trainer = tiny_trainer(limit_test_batches=None)
    (metrics,) = trainer.test(student, datamodule=data, verbose=False)
    labels = torch.tensor([row["labels"] for row in data.test_dataset.rows])
    assert metrics["test/acc"] == pytest.approx(float((labels == 1).float().mean()))
    (probabilities, *_) = trainer.predict(student, dataloaders=data.test_dataloader())
    assert torch.equal(probabilities.argmax(-1), torch.ones(probabilities.shape[0], dtype=torch.long))
    batch = next(iter(data.test_dataloader()))
    forward = student(batch["input_ids"], batch["attention_mask"]).logits  # the training forward differs
    assert bool((forward.argmax(-1) == 0).all())
