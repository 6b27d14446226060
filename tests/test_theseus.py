"""BERT-of-Theseus: the module-replacing student against hand-built references (p = 1: the successor
stack; p = 0: the predecessor), its replacement-rate schedulers against hand values, what trains, the
two kinds of predecessor, export, bad input and the pipeline row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from helpers import ToyMultiDomainDataModule, tiny_encoder_config, tiny_student, tiny_trainer

from metakd import pipeline
from metakd.distill import DISTILLERS
from metakd.distill.theseus import BertOfTheseus, replacement_rate
from metakd.errors import StudentConfigError
from metakd.teachers import TeacherRequest

THESEUS = {"class_path": "theseus", "init_args": {"num_successors": 2}}


def toy() -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")


@pytest.fixture(scope="module")
def hf_teacher_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer: Any) -> str:
    """A tiny 4-layer BertForSequenceClassification (random weights, no dropout) with the data's labels
    and the MiniLM tokenizer: a user's fine-tuned HF classifier as predecessor."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        **tiny_encoder_config(num_hidden_layers=4),
        num_labels=2,
        id2label={0: "label0", 1: "label1"},
        label2id={"label0": 0, "label1": 1},
    )
    directory = tmp_path_factory.mktemp("hf_predecessor")
    BertForSequenceClassification(config).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return str(directory)


def theseus_student(teacher: str, data: Any, **overrides: Any) -> Any:
    spec = overrides.pop("student_model", THESEUS)
    return tiny_student(
        teacher, data, distillation="theseus", student_config=None, student_model=spec, **overrides
    )


def batch_of(data: Any) -> dict[str, torch.Tensor]:
    data.setup()
    return next(iter(data.train_eval_dataloader()))


# ------------------------------------------------------------------------------------- the forward


@pytest.mark.parametrize("init", ["bottom", "block"])
def test_p1_is_the_successor_stack_and_p0_the_predecessor(hf_teacher_dir: str, init: str) -> None:
    from transformers import BertForSequenceClassification

    data = toy()
    batch = batch_of(data)
    spec = {"class_path": "theseus", "init_args": {"num_successors": 2, "successor_init": init}}
    student = theseus_student(hf_teacher_dir, data, student_model=spec)
    model = student.model.train()  # training mode: the mixing path (the tiny configs have no dropout)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    # p = 1: the predecessor's embeddings, layers {0, 1} (bottom) or {0, 2} (block: first of each block
    # of k = 2) and head, built independently with HF.
    reference = BertForSequenceClassification.from_pretrained(hf_teacher_dir).eval()
    keep = [0, 1] if init == "bottom" else [0, 2]
    reference.bert.encoder.layer = torch.nn.ModuleList([reference.bert.encoder.layer[i] for i in keep])
    model.set_replacing_rate(1.0)
    with torch.no_grad():
        expected = reference(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2]).logits
        torch.testing.assert_close(model(*inputs).logits, expected, rtol=0, atol=1e-6)
        assert bool(model.last_replaced.all())
        torch.testing.assert_close(model.eval()(*inputs).logits, expected, rtol=0, atol=1e-6)

        # p = 0: the predecessor itself, as the frozen teacher computes it.
        model.train().set_replacing_rate(0.0)
        teacher_logits = student.teacher_source.forward(batch, TeacherRequest()).logits
        torch.testing.assert_close(model(*inputs).logits, teacher_logits, rtol=0, atol=1e-6)
        assert not bool(model.last_replaced.any())


def test_blocks_are_replaced_independently_with_probability_p(hf_teacher_dir: str) -> None:
    model = theseus_student(hf_teacher_dir, toy()).model.train()
    model.set_replacing_rate(0.5)
    torch.manual_seed(0)
    draws = []
    for _ in range(400):
        layers = model.sample_layers()
        draws.append(model.last_replaced.clone())
        successors = list(model.bert.encoder.layer)
        expected = []
        for index, replaced in enumerate(model.last_replaced.tolist()):
            expected += (
                [successors[index]] if replaced else model.predecessor_layers[2 * index : 2 * index + 2]
            )
        assert [id(m) for m in layers] == [id(m) for m in expected]
    draws = torch.stack(draws).float()
    assert draws.mean(0).sub(0.5).abs().max() < 0.08  # each block: p = 0.5
    assert (draws[:, 0] == draws[:, 1]).float().mean().sub(0.5).abs() < 0.08  # independent blocks


# ------------------------------------------------------------------------------------- the schedule


def test_replacement_rate_schedulers_against_hand_values() -> None:
    assert [replacement_rate(t, "constant", 0.5, 6e-4, 0.3) for t in (0, 10, 10_000)] == [0.5, 0.5, 0.5]
    linear = [replacement_rate(t, "linear", 0.5, 0.1, 0.3) for t in (0, 1, 3, 6, 7, 50)]
    assert linear == pytest.approx([0.3, 0.4, 0.6, 0.9, 1.0, 1.0])
    # the authors' curriculum: b = 0.3, k = 6e-4 reaches 1 after 1167 steps
    assert replacement_rate(1000, "linear", 0.5, 6e-4, 0.3) == pytest.approx(0.9)
    assert replacement_rate(1167, "linear", 0.5, 6e-4, 0.3) == 1.0
    method = BertOfTheseus()
    assert (method.scheduler, method.replacing_rate, method.linear_k, method.linear_b) == (
        "constant",
        0.5,
        6e-4,
        0.3,
    )


class RateRecorder(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.stages: list[str] = []

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        self.rates.append(module.model.replacing_rate)
        self.stages.append(module.current_stage().name)


def test_replacement_then_successor_fine_tuning_trains_only_successor_and_head(
    tiny_teacher_ckpt: str,
) -> None:
    """A MetaTeacher predecessor (encoder + its classifier on raw [CLS]), the linear curriculum over two
    replacement epochs, then successor fine-tuning at p = 1; the teacher never changes."""
    data = toy()
    options = {"scheduler": "linear", "linear_k": 0.25, "linear_b": 0.3, "replacing_epochs": 2}
    student = theseus_student(tiny_teacher_ckpt, data, distillation_options=options, prediction_lr=1e-2)
    model = student.model
    assert model.head == "cls" and model.block_size == 1 and model.hf_model is None
    teacher_before = {k: v.clone() for k, v in student.teacher.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(student.state_dict()) == {f"model.{k}" for k in before}  # the predecessor is not in it
    recorder = RateRecorder()
    trainer = tiny_trainer(max_steps=-1, max_epochs=3, limit_train_batches=2, callbacks=[recorder])
    trainer.fit(student, datamodule=data)

    assert recorder.stages == ["replacement"] * 4 + ["successor"] * 2
    assert recorder.rates == pytest.approx([0.3, 0.55, 0.8, 1.0, 1.0, 1.0])  # min(1, 0.25 t + 0.3), then 1
    assert float(trainer.callback_metrics["train/replacing_rate"]) == 1.0
    for key, value in student.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("bert.embeddings."))
    trained = ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight")
    for key in (*trained, "classifier.weight"):
        assert not torch.equal(after[key], before[key]), key
    assert student.teacher_source.forward_calls == 0  # no loss term reads the teacher's outputs


# ------------------------------------------------------------------------------------- export


def test_export_is_the_successor_alone(hf_teacher_dir: str, tiny_teacher_ckpt: str, tmp_path: Path) -> None:
    from transformers import pipeline as hf_pipeline

    from metakd.export import export_student
    from metakd.students import load_exported

    data = toy()
    batch = batch_of(data)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    for name, teacher in (("hf", hf_teacher_dir), ("meta", tiny_teacher_ckpt)):
        student = theseus_student(teacher, data, distillation_options={"replacing_epochs": 1})
        trainer = tiny_trainer(max_steps=2)
        trainer.fit(student, datamodule=data)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        report = export_student(tmp_path / f"{name}.ckpt", tmp_path / name, onnx=name == "hf")
        assert name != "hf" or report.onnx_max_abs_diff <= 1e-4
        model, _, labels = load_exported(tmp_path / name)
        assert labels == data.label_names
        with torch.no_grad():
            expected = student.model.eval()(*inputs).logits
            torch.testing.assert_close(model(*inputs).logits, expected, rtol=0, atol=1e-5)
        assert len(model.bert.encoder.layer) == 2  # the successor modules, no predecessor layer
    # The HF predecessor's successor is a plain HF directory: transformers.pipeline serves it.
    classify = hf_pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None)
    (scores,) = classify(["a good book"])
    assert sorted(s["label"] for s in scores) == ["label0", "label1"]
    assert not (tmp_path / "hf" / "metakd_student.json").exists()
    assert (tmp_path / "meta" / "metakd_student.json").is_file()  # raw-[CLS] head: a metakd directory


# ------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_the_key(
    tiny_teacher_ckpt: str, hf_teacher_dir: str, tmp_path: Path
) -> None:
    data = toy()
    with pytest.raises(
        StudentConfigError, match=r"num_successors=3: the teacher .* has 2 layers, not a multiple of 3"
    ):
        theseus_student(
            tiny_teacher_ckpt,
            data,
            student_model={"class_path": "theseus", "init_args": {"num_successors": 3}},
        )
    with pytest.raises(
        StudentConfigError, match=r"distillation='theseus' trains a module-replacing student.*HFStudent"
    ):
        tiny_student(tiny_teacher_ckpt, data, distillation="theseus")
    with pytest.raises(
        StudentConfigError, match=r"distillation_options.replacing_rate must be in \(0, 1\], got 1.5"
    ):
        theseus_student(tiny_teacher_ckpt, data, distillation_options={"replacing_rate": 1.5})
    with pytest.raises(StudentConfigError, match=r"distillation_options.scheduler must be one of"):
        theseus_student(tiny_teacher_ckpt, data, distillation_options={"scheduler": "cosine"})
    with pytest.raises(StudentConfigError, match=r"successor_init must be one of \['bottom', 'block'\]"):
        theseus_student(
            tiny_teacher_ckpt,
            data,
            student_model={"class_path": "theseus", "init_args": {"successor_init": "top"}},
        )
    with pytest.raises(StudentConfigError, match=r"built around its teacher: set model.teacher_ckpt"):
        theseus_student(None, data)

    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        **tiny_encoder_config(),
        num_labels=2,
        id2label={0: "label0", 1: "label1"},
        label2id={"label0": 0, "label1": 1},
    )
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "roberta")
    with pytest.raises(
        StudentConfigError,
        match=r"needs a BERT classifier as its predecessor.*RobertaForSequenceClassification",
    ):
        theseus_student(str(tmp_path / "roberta"), data)


def test_theseus_is_a_registry_entry() -> None:
    """Its Amazon and MNLI rows (``theseus_k3``) are checked in test_fastbert.py."""
    assert DISTILLERS.get("theseus") is BertOfTheseus and BertOfTheseus.teacher_role == "single"
    assert pipeline.main_rows(["theseus"]) == [
        ("teacher_single", "Teacher: single-domain"),
        ("student_theseus", "Student: BERT-of-Theseus (single-domain teacher)"),
    ]
