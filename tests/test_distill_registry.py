"""The method registry, student architectures behind one interface, and any classifier as a teacher."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from helpers import (
    REPO,
    MeanPoolMLPStudent,
    ToyMultiDomainDataModule,
    tiny_encoder_config,
    tiny_student,
    tiny_trainer,
    train_tiny_teacher,
)

from metakd.distill import DISTILLERS, StepContext
from metakd.errors import StudentConfigError
from metakd.teachers import TeacherOutputs

MLP = {"class_path": "helpers.MeanPoolMLPStudent", "init_args": {"dim": 8}}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt"))


def toy() -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")


# ------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_methods_and_refuses_bad_names(teacher_ckpt: str) -> None:
    assert {"none", "vanilla", "tinybert", "meta"} <= set(DISTILLERS.names())
    assert DISTILLERS.get("meta").teacher_role == "meta" and DISTILLERS.get("none").teacher_role is None
    data = toy()
    with pytest.raises(StudentConfigError, match=r"got 'tinybret'.*did you mean 'tinybert'"):
        tiny_student(teacher_ckpt, data, distillation="tinybret")
    with pytest.raises(
        StudentConfigError, match=r"distillation_options: MetaKD \('meta'\) takes no \['gamma'\]"
    ):
        tiny_student(teacher_ckpt, data, distillation="meta", distillation_options={"gamma": 1.0})
    with pytest.raises(
        StudentConfigError, match=r"distillation='tinybert' takes no \['instance_weighting'\]"
    ):
        tiny_student(teacher_ckpt, data, distillation="tinybert", instance_weighting=True)
    with pytest.raises(StudentConfigError, match="no 'warmup' stage"):
        tiny_student(teacher_ckpt, data, distillation="meta", stage="warmup")


def test_meta_kd_weight_switches(teacher_ckpt: str) -> None:
    """w_i = (1 + t_i) sigma_i, and each factor can be switched off on its own."""
    from metakd.distill.losses import domain_expertise

    data = toy()
    data.setup()
    batch = next(iter(data.train_eval_dataloader()))
    logits = torch.tensor([[2.0, -1.0]]).repeat(batch["labels"].shape[0], 1)
    t = torch.linspace(0.0, 0.5, data.num_pooled_train)
    sigma = domain_expertise(logits, batch["labels"])
    expected = {
        (): (1 + t[batch["example_ids"]]) * sigma,
        ("transferability_weights",): sigma,
        ("expertise_weights",): 1 + t[batch["example_ids"]],
    }
    for off, weights in expected.items():
        method = DISTILLERS.get("meta")(**{name: False for name in off})
        method.transferability = t
        step = StepContext(batch, None, TeacherOutputs(logits=logits), {})
        torch.testing.assert_close(method.instance_weights(step), weights)
    assert DISTILLERS.get("meta")(instance_weighting=False).instance_weights(step) is None


def test_meta_kd_rescales_t_before_weighting() -> None:
    """transferability_scale: t_i rescaled over the training split (as the teacher option), then 1 + t_i."""
    t = torch.tensor([0.2, -0.1, 0.6, float("nan")])
    teacher = SimpleNamespace(transferability=lambda datamodule: t)
    weighted = [SimpleNamespace(weighted=True)]
    method = DISTILLERS.get("meta")(transferability_scale="mean1")
    method.setup(teacher, None, weighted)
    expected = torch.tensor([0.2 / (0.8 / 3), 0.0, 0.6 / (0.8 / 3)])  # max(t, 0) / mean(max(t, 0))
    torch.testing.assert_close(method.transferability[:3], expected)
    assert torch.isnan(method.transferability[3])
    plain = DISTILLERS.get("meta")()
    plain.setup(teacher, None, weighted)
    torch.testing.assert_close(plain.transferability, t, equal_nan=True)  # "none": the scores as they are
    with pytest.raises(StudentConfigError, match="transferability_scale must be"):
        DISTILLERS.get("meta")(transferability_scale="loud")


# ------------------------------------------------------------------------ a student without token states


def test_student_without_hidden_states_distils_with_vanilla_kd_and_refuses_tinybert(
    teacher_ckpt: str, tmp_path: Path
) -> None:
    from metakd.export import export_student
    from metakd.students import load_exported

    data = toy()
    student = tiny_student(teacher_ckpt, data, distillation="vanilla", student_config=None, student_model=MLP)
    assert isinstance(student.model, MeanPoolMLPStudent) and student.model.init_args["vocab_size"] == 30522
    before = student.model.classifier.weight.detach().clone()
    trainer = tiny_trainer(max_steps=3, enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(student, datamodule=data)
    assert "train/loss_kd" in trainer.callback_metrics
    assert not torch.equal(before, student.model.classifier.weight)
    with pytest.raises(
        StudentConfigError, match=r"needs the student's \['hidden'\].*MeanPoolMLPStudent provides"
    ):
        tiny_student(teacher_ckpt, data, distillation="tinybert", student_config=None, student_model=MLP)
    # Meta-KD's prediction stage alone needs no token states ...
    tiny_student(
        teacher_ckpt, data, distillation="meta", stage="prediction", student_config=None, student_model=MLP
    )

    # ... and the architecture exports through its own interface: ONNX checked against PyTorch, and an
    # inference directory that loads without the training code's datamodule.
    ckpt = tmp_path / "mlp.ckpt"
    trainer.save_checkpoint(ckpt)
    report = export_student(ckpt, tmp_path / "exported", onnx=True)
    assert report.onnx_max_abs_diff <= 1e-4 and (tmp_path / "exported" / "model.onnx").is_file()
    model, tokenizer, labels = load_exported(tmp_path / "exported")
    assert labels == data.label_names and isinstance(model, MeanPoolMLPStudent)
    encoded = tokenizer(["a good book"], return_tensors="pt")
    student.eval()
    with torch.no_grad():
        expected = student(encoded["input_ids"], encoded["attention_mask"]).logits
        torch.testing.assert_close(model(encoded["input_ids"], encoded["attention_mask"]).logits, expected)


def test_bad_student_model_specs_name_the_key(teacher_ckpt: str) -> None:
    data = toy()
    for spec, message in (
        ({"class_path": "bilstmm"}, r"student_model.class_path: unknown student architecture 'bilstmm'"),
        ({"class_path": "helpers.MeanPoolMLPStudent", "init_args": {"width": 3}}, r"takes no \['width'\]"),
        ({"init_args": {}}, "must be a mapping with class_path"),
        ({"class_path": "torch.nn.Linear"}, "not a metakd.students.StudentModel subclass"),
    ):
        with pytest.raises(StudentConfigError, match=message):
            tiny_student(teacher_ckpt, data, distillation="vanilla", student_config=None, student_model=spec)
    both = "student_model or student_layers / student_config, not both"
    with pytest.raises(StudentConfigError, match=both):  # tiny_student sets a student_config
        tiny_student(teacher_ckpt, data, distillation="vanilla", student_model=MLP)


# ------------------------------------------------------------------------------- a plain HF teacher


@pytest.fixture(scope="module")
def hf_teacher_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer: Any) -> str:
    """A tiny BertForSequenceClassification saved with save_pretrained, with the data's label names and
    the MiniLM tokenizer beside it: a user's own fine-tuned classifier."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(**tiny_encoder_config(), num_labels=2, id2label={0: "label0", 1: "label1"},
                        label2id={"label0": 0, "label1": 1})  # fmt: skip
    directory = tmp_path_factory.mktemp("hf_teacher")
    BertForSequenceClassification(config).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return str(directory)


def test_student_distils_from_a_plain_hf_classifier_directory(hf_teacher_dir: str) -> None:
    from transformers import BertForSequenceClassification

    data = toy()
    data.setup()
    student = tiny_student(hf_teacher_dir, data, distillation="vanilla")
    assert isinstance(student.teacher, BertForSequenceClassification) and not student.teacher.training
    assert all(not p.requires_grad for p in student.teacher.parameters())
    batch = next(iter(data.train_eval_dataloader()))
    reference = BertForSequenceClassification.from_pretrained(hf_teacher_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    from metakd.teachers import TeacherRequest

    torch.testing.assert_close(student.teacher_source.forward(batch, TeacherRequest()).logits, expected)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    assert "train/loss_kd" in trainer.callback_metrics

    # TinyBERT-KD reads its token states and attention maps; Meta-KD needs the meta-teacher's heads.
    tinybert = tiny_student(hf_teacher_dir, data, distillation="tinybert", intermediate_epochs=1)
    tiny_trainer(max_steps=-1, max_epochs=2).fit(tinybert, datamodule=data)
    assert float(tinybert.trainer.callback_metrics["train/loss_hidden"]) > 0
    with pytest.raises(StudentConfigError, match=r"needs the teacher's \['transferable'\].*domain heads"):
        tiny_student(hf_teacher_dir, data, distillation="meta")
    with pytest.raises(StudentConfigError, match="label mismatch"):
        tiny_student(hf_teacher_dir, data, distillation="vanilla", label_names=["neg", "pos"])


# ------------------------------------------------------------------- a user's method and architecture, CLI

USER_METHOD = '''
from metakd.distill import Distiller, HardCE, LogitKD, Stage


class HalfKD(Distiller):
    """Half soft-logit KD, half hard labels: a method written outside metakd."""

    label = "half KD"
    teacher_role = "mixed"

    def __init__(self, prediction_lr: float = 3e-5, share: float = 0.5) -> None:
        self.lr, self.share = prediction_lr, share

    def stages(self):
        return [Stage("prediction", [LogitKD(self.share, name="kd"), HardCE(1 - self.share)], lr=self.lr)]
'''


def test_user_method_and_architecture_by_class_path_in_yaml(teacher_ckpt: str, tmp_path: Path) -> None:
    from helpers import run_metakd

    (tmp_path / "my_methods.py").write_text(USER_METHOD, encoding="utf-8")
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 3,
            "accelerator": "cpu",
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path / "run"),
            "enable_progress_bar": False,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "run"), "name": "logs"},
            },
        },  # fmt: skip
        "model": {
            "class_path": "metakd.Student",
            "init_args": {
                "teacher_ckpt": teacher_ckpt,
                "distillation": "my_methods.HalfKD",
                "distillation_options": {"share": 0.25},
                "student_model": MLP,
            },
        },  # fmt: skip
        "data": {
            "class_path": "helpers.ToyMultiDomainDataModule",
            "init_args": {"backbone": "minilm-l6", "target_domain": "dom1"},
        },  # fmt: skip
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    pythonpath = f"{tmp_path}:{REPO / 'tests'}:{REPO}"
    run_metakd("fit", "--config", path, extra_env={"PYTHONPATH": pythonpath})
    header = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_kd", "train/loss_ce", "train/loss"} <= set(header)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["metakd_student"]["student"]["class_path"] == "helpers.MeanPoolMLPStudent"
    assert state["hyper_parameters"]["distillation"] == "my_methods.HalfKD"
