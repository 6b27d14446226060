"""BERT-PKD (Sun et al. 2019): its layer maps, its loss against hand-computed values, a student, a row."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_student, tiny_trainer, train_tiny_teacher

from metakd import pipeline
from metakd.distill import DISTILLERS, StepContext
from metakd.distill.base import stage_loss
from metakd.distill.layer_maps import RecipeError
from metakd.distill.pkd import PatientKD, pkd_last_map, pkd_skip_map
from metakd.errors import StudentConfigError
from metakd.students import StudentOutput
from metakd.teachers import TeacherOutputs


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt"))


def toy() -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")


def test_pkd_layer_maps() -> None:
    def pairs(matches: list[Any]) -> list[tuple[int, int]]:
        return [(m.student_layer, m.teacher_layer) for m in matches]

    assert pairs(pkd_skip_map(12, 6)) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]  # the paper's PKD-skip
    assert pairs(pkd_last_map(12, 6)) == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]  # the paper's PKD-last
    assert pairs(pkd_skip_map(6, 2)) == [(1, 3)] and pairs(pkd_last_map(6, 2)) == [(1, 5)]
    assert all(m.feature == "hidden" and m.loss == "pkd_cls" for m in pkd_skip_map(12, 6))
    with pytest.raises(RecipeError, match="at least 2 layers"):
        pkd_skip_map(6, 1)


def test_pkd_loss_against_hand_values() -> None:
    alpha, beta, temperature = 0.3, 2.0, 2.0
    method = PatientKD(alpha=alpha, beta=beta, temperature=temperature, t2_scaling=True, layer_map="skip")
    (stage,) = method.stages()
    context = SimpleNamespace(
        student=SimpleNamespace(num_layers=2, hidden_size=2),
        teacher=SimpleNamespace(num_layers=6, hidden_size=2),
    )
    modules = {}
    for term in stage.active_terms:
        modules.update(term.build(context))
    assert len(modules["projections"]) == 0  # same width: no projection

    # [CLS] states: student layer 1 learns teacher layer 3 (PKD-skip, 6 -> 2).
    student_states = [torch.zeros(2, 3, 2) for _ in range(3)]
    teacher_states = [torch.zeros(2, 3, 2) for _ in range(7)]
    student_states[1][0, 0] = torch.tensor([3.0, 4.0])  # / 5 -> (0.6, 0.8)
    teacher_states[3][0, 0] = torch.tensor([1.0, 0.0])  # -> squared distance 0.16 + 0.64 = 0.8
    student_states[1][1, 0] = torch.tensor([0.0, 2.0])  # -> (0, 1)
    teacher_states[3][1, 0] = torch.tensor([0.0, -3.0])  # -> (0, -1): squared distance 4
    student_states[1][:, 1:] = 7.0  # other tokens must not matter
    batch = {"labels": torch.tensor([0, 1]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    step = StepContext(
        batch,
        StudentOutput(logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]), hidden_states=tuple(student_states)),
        TeacherOutputs(logits=torch.tensor([[1.0, 1.0], [3.0, 0.0]]), hidden_states=tuple(teacher_states)),
        modules,
    )
    loss, logs = stage_loss(stage, step, None)

    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))]
    p1 = 1 / (1 + math.exp(1.5))  # softmax([3, 0] / 2)[1]
    soft = [math.log(1 + math.e) - 0.5, math.log(1 + math.exp(0.5)) - 0.5 * p1]  # soft CE at T = 2
    kd = [temperature**2 * v for v in soft]
    pt = [0.8, 4.0]
    # the paper's eq. 5 (and the authors' code): (1 - alpha) * CE + alpha * KD + beta * PT
    expected = sum((1 - alpha) * c + alpha * k + beta * p for c, k, p in zip(ce, kd, pt)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(logs["train/loss_ce"]) == pytest.approx(sum(ce) / 2, rel=1e-6)
    assert float(logs["train/loss_kd"]) == pytest.approx(sum(kd) / 2, rel=1e-6)
    assert float(logs["train/loss_pt"]) == pytest.approx(2.4, rel=1e-6)


def test_pkd_student_trains_with_projections(teacher_ckpt: str) -> None:
    data = toy()
    student = tiny_student(
        teacher_ckpt, data, distillation="pkd", student_config=None, student_layers=[0, 5]
    )  # fmt: skip  (2 MiniLM layers, hidden 384 -> teacher 32)
    assert sorted(student.projections) == ["hidden_t1_s1"]  # 2 -> 2 layers: student 1 learns teacher 1
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    assert {"train/loss_ce", "train/loss_kd", "train/loss_pt"} <= set(trainer.callback_metrics)


def test_pkd_is_a_registry_entry_with_a_pipeline_row(teacher_ckpt: str) -> None:
    assert DISTILLERS.get("pkd") is PatientKD and PatientKD.teacher_role == "single"
    assert pipeline.main_rows(["none", "pkd"]) == [
        ("teacher_single", "Teacher: single-domain"),
        ("student_none", "Student: fine-tune, no KD"),
        ("student_pkd", "Student: BERT-PKD (single-domain teacher)"),
    ]
    with pytest.raises(StudentConfigError, match=r"PatientKD \('pkd'\) takes no \['gamma'\]"):
        tiny_student(teacher_ckpt, toy(), distillation="pkd", distillation_options={"gamma": 1.0})
    with pytest.raises(StudentConfigError, match="layer_map must be one of"):
        tiny_student(teacher_ckpt, toy(), distillation="pkd", distillation_options={"layer_map": "first"})
