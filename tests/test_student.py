"""Student: a frozen teacher outside the checkpoint, caching, baselines, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import (
    ToyMultiDomainDataModule,
    tiny_student,
    tiny_trainer,
    train_tiny_teacher,
)

from metakd.distill.layer_maps import LayerMatch, RecipeError
from metakd.student import Student, StudentConfigError, TeacherCheckpointError, recompute_transferability
from metakd.teacher import MetaTeacher


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt"))


def toy_data(**overrides: Any) -> ToyMultiDomainDataModule:
    kwargs: dict[str, Any] = {"backbone": "minilm-l6", "target_domain": "dom1"}
    kwargs.update(overrides)
    return ToyMultiDomainDataModule(**kwargs)


def make_student(teacher_ckpt: str | None, datamodule: ToyMultiDomainDataModule, **overrides: Any) -> Student:
    return tiny_student(teacher_ckpt, datamodule, **{"intermediate_epochs": 1, **overrides})


class CountingForward:
    """Wraps a module's forward and counts the calls."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._forward = module.forward
        module.forward = self  # instance attribute: nn.Module.__call__ finds it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._forward(*args, **kwargs)


def test_teacher_is_frozen_and_absent_from_checkpoint_and_optimiser(
    teacher_ckpt: str, tmp_path: Path
) -> None:
    data = toy_data()
    student = make_student(teacher_ckpt, data, stage="intermediate")
    teacher = student.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(m is not teacher for m in student.modules())

    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)

    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    teacher_ids = {id(p) for p in teacher.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not teacher_ids & optimised
    assert {id(p) for p in student.projections.parameters()} <= optimised
    assert {id(p) for p in student.transferable_head.parameters()} <= optimised

    trainer.save_checkpoint(tmp_path / "student.ckpt")
    state = torch.load(tmp_path / "student.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith(("_teacher", "teacher", "network."))]
    assert any(k.startswith("model.bert.") for k in state) and any(
        k.startswith("projections.") for k in state
    )
    for key in ("train/loss_hidden", "train/loss_attention", "train/loss_tk", "train/weight_mean"):
        assert key in trainer.callback_metrics


def test_instance_weights_use_teacher_transferability(teacher_ckpt: str) -> None:
    data = toy_data()
    student = make_student(teacher_ckpt, data, stage="intermediate")
    tiny_trainer(max_steps=1).fit(student, datamodule=data)
    stored = MetaTeacher.load_from_checkpoint(
        teacher_ckpt, map_location="cpu", weights_only=True
    ).transferability
    assert torch.equal(
        student.distiller.transferability.cpu(), stored
    )  # same split: read by example_ids, not recomputed
    weight_mean = float(student.trainer.callback_metrics["train/weight_mean"])
    assert 0.0 < weight_mean < 1.0  # (1 + t) * sigma, sigma in [1/(1+e), 1/2]


def test_teacher_cache_second_epoch_skips_teacher(teacher_ckpt: str, tmp_path: Path) -> None:
    data = toy_data()  # 12 target-domain examples, batch 8 -> 2 batches an epoch
    student = make_student(teacher_ckpt, data, stage="both", cache_dir=str(tmp_path / "cache"))
    counter = CountingForward(student.teacher)
    tiny_trainer(max_steps=-1, max_epochs=3).fit(student, datamodule=data)
    assert counter.calls == 2  # epoch 0 (intermediate stage) only; epochs 1-2 read cached logits
    assert "train/loss_kd" in student.trainer.callback_metrics

    # A later run on the same data and teacher (e.g. a prediction-stage run) reads the logits from cache_dir.
    again = make_student(teacher_ckpt, data, distillation="vanilla", cache_dir=str(tmp_path / "cache"))
    counter = CountingForward(again.teacher)
    tiny_trainer(max_steps=-1, max_epochs=1).fit(again, datamodule=data)
    assert counter.calls == 0

    # Without a disk cache, vanilla KD runs the teacher once over the training set before its first
    # epoch (train_eval_dataloader: 2 batches), then never again.
    fresh = make_student(teacher_ckpt, data, distillation="vanilla")
    counter = CountingForward(fresh.teacher)
    tiny_trainer(max_steps=-1, max_epochs=2).fit(fresh, datamodule=data)
    assert counter.calls == 2


def test_cache_all_skips_teacher_in_stage_one(teacher_ckpt: str) -> None:
    data = toy_data()
    student = make_student(teacher_ckpt, data, stage="intermediate", cache_teacher_outputs="all")
    counter = CountingForward(student.teacher)
    tiny_trainer(max_steps=-1, max_epochs=2).fit(student, datamodule=data)
    assert counter.calls == 2


def test_cached_features_equal_a_fresh_teacher_forward(teacher_ckpt: str) -> None:
    data = toy_data()
    data.setup()
    student = make_student(teacher_ckpt, data, stage="intermediate", cache_teacher_outputs="all")
    source = student.teacher_source
    source.setup_cache("all", data, data.num_labels, None)
    request = student.teacher_requests["intermediate"]
    batches = list(data.train_eval_dataloader())
    fresh = source.outputs(batches[0], request)
    cached = source.outputs(batches[0], request)
    assert source.forward_calls == 1
    torch.testing.assert_close(cached.logits, fresh.logits)
    torch.testing.assert_close(cached.transferable, fresh.transferable)
    mask = batches[0]["attention_mask"].bool()
    kept = [i for i, b in enumerate(fresh.hidden_states) if b is not None]
    assert kept == sorted(request.hidden_layers) == [0, 2]  # uniform map, 1 student layer: teacher 0 and 2
    for a, b in zip(cached.hidden_states, fresh.hidden_states):
        if b is not None:
            torch.testing.assert_close(a[mask], b[mask])


@pytest.mark.parametrize("distillation", ["none", "vanilla", "tinybert"])
def test_baselines_run(distillation: str, teacher_ckpt: str) -> None:
    data = toy_data()
    student = make_student(None if distillation == "none" else teacher_ckpt, data, distillation=distillation)
    assert (student.teacher is None) == (distillation == "none")
    epochs = 2 if distillation == "tinybert" else 1
    trainer = tiny_trainer(max_steps=-1, max_epochs=epochs, limit_val_batches=None)
    trainer.fit(student, datamodule=data)
    metrics = trainer.callback_metrics
    assert "val/acc" in metrics and "train/loss_ce" in metrics
    assert ("train/loss_kd" in metrics) == (distillation != "none")
    if distillation == "tinybert":
        assert float(metrics["train/weight_mean"]) == 1.0 and float(metrics["train/loss_tk"]) == 0.0
    tested = trainer.test(student, datamodule=data, verbose=False)[0]
    # test/acc is the accuracy on the target domain's test rows, computed here by hand.
    student.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in data.test_dataloader():
            rows = batch["domain_ids"] == data.domain_names.index("dom1")
            logits = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
            correct += int((logits.argmax(-1)[rows] == batch["labels"][rows]).sum())
            total += int(rows.sum())
    assert total > 0 and tested["test/acc"] == pytest.approx(correct / total)


def test_init_from_stage_one_checkpoint(teacher_ckpt: str, tmp_path: Path) -> None:
    data = toy_data()
    stage1 = make_student(teacher_ckpt, data, stage="intermediate")
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(stage1, datamodule=data)
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    stage2 = make_student(teacher_ckpt, data, stage="prediction", init_from=str(tmp_path / "stage1.ckpt"))
    for key, value in stage1.model.state_dict().items():
        assert torch.equal(stage2.model.state_dict()[key], value)
    assert not [k for k in stage2.state_dict() if not k.startswith("model.")]  # no projections, no head


def test_layer_subset_of_pretrained_backbone(teacher_ckpt: str) -> None:
    from metakd.backbones import load_encoder

    data = toy_data()
    student = make_student(
        teacher_ckpt, data, student_config=None, student_layers=[0, 5], stage="intermediate"
    )
    assert student.model.config.num_hidden_layers == 2
    pretrained = load_encoder("minilm-l6")
    torch.testing.assert_close(
        student.model.bert.encoder.layer[1].output.dense.weight,
        pretrained.encoder.layer[5].output.dense.weight,
    )
    assert sorted(student.projections) == ["embeddings_t0_s0", "hidden_t1_s1", "hidden_t2_s2"]  # 384 -> 32


def test_clear_errors(teacher_ckpt: str, tmp_path: Path, tiny_tokenizer_dir: str) -> None:
    data = toy_data()
    with pytest.raises(TeacherCheckpointError, match="not found: '/no/such.ckpt'"):
        make_student("/no/such.ckpt", data)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherCheckpointError, match="corrupt.ckpt"):
        make_student(str(corrupt), data)
    with pytest.raises(StudentConfigError, match="needs model.teacher_ckpt"):
        make_student(None, data)
    with pytest.raises(StudentConfigError, match=r"label mismatch.*\['label0', 'label1'\].*\['neg', 'pos'\]"):
        make_student(teacher_ckpt, data, label_names=["neg", "pos"])
    with pytest.raises(RecipeError, match=r"teacher_layer=5.*valid teacher_layer is 0\.\.2"):
        make_student(teacher_ckpt, data, matches=[LayerMatch(5, 1, "hidden")])
    unknown = toy_data(num_domains=4, target_domain="dom3")
    with pytest.raises(
        StudentConfigError, match=r"'dom3' is unknown to the teacher.*\['dom0', 'dom1', 'dom2'\]"
    ):
        make_student(teacher_ckpt, unknown)
    with pytest.raises(StudentConfigError, match="target_domain 'dom7' is not a domain of the data"):
        make_student(teacher_ckpt, data, target_domain="dom7")
    with pytest.raises(StudentConfigError, match="tokenizer mismatch"):
        make_student(teacher_ckpt, data, tokenizer_name=tiny_tokenizer_dir)
    with pytest.raises(StudentConfigError, match="no intermediate-layer stage"):
        make_student(teacher_ckpt, data, distillation="vanilla", stage="both")
    with pytest.raises(StudentConfigError, match="leaves none for the prediction stage"):
        tiny_trainer(max_steps=-1, max_epochs=1).fit(make_student(teacher_ckpt, data), datamodule=data)


def test_zero_shot_teacher_domain_override(teacher_ckpt: str) -> None:
    unknown = toy_data(num_domains=4, target_domain="dom3")
    student = make_student(teacher_ckpt, unknown, teacher_domain="dom0", instance_weighting=False)
    assert student.teacher_domain_map.tolist() == [0, 1, 2, 0]
    tiny_trainer(max_steps=1).fit(student, datamodule=unknown)


def test_other_split_without_pretrained_encoder_is_a_clear_error(teacher_ckpt: str) -> None:
    other = toy_data(seed=1)  # another pooled split than the teacher's
    student = make_student(teacher_ckpt, other, stage="intermediate")
    with pytest.raises(StudentConfigError, match="cannot recompute t_i"):
        tiny_trainer(max_steps=1).fit(student, datamodule=other)


def test_recompute_transferability_matches_prototype_module(tmp_path: Path) -> None:
    """On another split, t_i comes from the teacher's stored prototypes and its pre-trained backbone."""
    from helpers import tiny_encoder_config
    from transformers import BertConfig, BertModel

    from metakd.prototypes import compute_transferability

    torch.manual_seed(0)
    backbone_dir = tmp_path / "backbone"
    BertModel(BertConfig(**tiny_encoder_config()), add_pooling_layer=False).save_pretrained(backbone_dir)
    data = ToyMultiDomainDataModule(target_domain=None)
    data.setup()
    encoder = BertModel.from_pretrained(backbone_dir, add_pooling_layer=False)
    expected, prototypes = compute_transferability(
        encoder, data.train_eval_dataloader(), data.num_pooled_train, data.num_domains, data.num_labels
    )
    teacher = SimpleNamespace(
        hparams={"backbone": str(backbone_dir), "encoder_config": None, "prototype_pooling": "masked_mean"},
        prototypes=prototypes,
        split_fingerprint="another split",
    )
    t = recompute_transferability(teacher, data, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(t, expected)
    # A domain unknown to the teacher: t_i is the cosine to the mean of the known prototypes.
    t_unknown = recompute_transferability(teacher, data, torch.tensor([0, 1, -1]))
    assert torch.isfinite(t_unknown).all()
    torch.testing.assert_close(t_unknown[:24], expected[:24])
    assert not torch.allclose(t_unknown[24:], expected[24:])


def test_teacher_records_its_own_hparams_inside_lightning_cli_context(teacher_ckpt: str) -> None:
    """LightningCLI hands the Student's init args to nested save_hyperparameters(); not to the teacher."""
    from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters_context

    data = toy_data()
    with _given_hyperparameters_context({"teacher_ckpt": teacher_ckpt}, "test"):
        student = make_student(teacher_ckpt, data, distillation="vanilla")
    assert student.teacher.hparams["backbone"] == "minilm-l6"


def test_pretrained_student_trains_with_dropout_on() -> None:
    """from_pretrained gives eval mode; the student's layer subset must be in train mode for fit."""
    from metakd.student import build_student_model

    model = build_student_model(2, ["neg", "pos"], "minilm-l6", "minilm-l6", [0, 5], None)
    assert len(model.base_model.encoder.layer) == 2
    assert all(module.training for module in model.modules())
