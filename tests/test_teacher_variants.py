"""Teacher variants for the benchmark: the t_i rescaling (``transferability_scale``), the multi-task
teacher (BERT-mtl, one head per domain), the checkpoint's class name and the per-example test outputs."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import ToyMultiDomainDataModule, pad_collate, tiny_student, tiny_teacher, tiny_trainer

from metakd import prototypes as P
from metakd.pipeline import PredictionsWriter, read_predictions
from metakd.teacher import CLASS_KEY, MetaTeacher
from metakd.teacher_mtl import MultiTaskTeacher


def make(cls: type, dm: ToyMultiDomainDataModule, **kwargs) -> MetaTeacher:
    pl.seed_everything(0, verbose=False)
    kwargs.setdefault("learning_rate", 1e-3)
    return tiny_teacher(dm, teacher_class=cls, backbone="tiny-test-bert", **kwargs)


# ------------------------------------------------------------------------------ t_i rescaling

T = torch.tensor([0.2, 0.4, -0.1, float("nan"), 0.6])


def test_rescale_none_is_the_identity() -> None:
    out = P.rescale_transferability(T, "none")
    assert torch.equal(out[[0, 1, 2, 4]], T[[0, 1, 2, 4]]) and torch.isnan(out[3])


def test_rescale_mean1_divides_the_clamped_scores_by_their_mean() -> None:
    # clamped: 0.2, 0.4, 0, 0.6 (NaN left out) -> mean 0.3 -> 2/3, 4/3, 0, 2
    out = P.rescale_transferability(T, "mean1")
    assert out[[0, 1, 2, 4]].tolist() == pytest.approx([2 / 3, 4 / 3, 0.0, 2.0])
    assert torch.isnan(out[3])


@pytest.mark.parametrize("mode", ["temperature:0.1", "0.1", 0.1])
def test_rescale_temperature_is_n_times_a_softmax(mode) -> None:
    # exp(t / 0.1) = e^2, e^4, e^-1, e^6; weights = 4 exp(t_i / T) / sum_j exp(t_j / T)
    exps = [math.exp(2), math.exp(4), math.exp(-1), math.exp(6)]
    expected = [4 * e / sum(exps) for e in exps]
    out = P.rescale_transferability(T, mode)
    assert out[[0, 1, 2, 4]].tolist() == pytest.approx(expected, rel=1e-6)
    assert float(out[[0, 1, 2, 4]].mean()) == pytest.approx(1.0)
    flat = P.rescale_transferability(T, "temperature:1000")  # a large T flattens towards 1
    assert flat[[0, 1, 2, 4]].tolist() == pytest.approx([1.0] * 4, abs=1e-3)


@pytest.mark.parametrize("mode", ["mean2", "temperature:0", "temperature:-1", "temperature:x", "inf"])
def test_rescale_refuses_unknown_modes(mode) -> None:
    with pytest.raises(ValueError, match="transferability_scale must be"):
        P.rescale_transferability(T, mode)
    with pytest.raises(ValueError, match="transferability_scale must be"):
        make(MetaTeacher, ToyMultiDomainDataModule(), transferability_scale=mode)


def test_rescale_mean1_needs_a_positive_score() -> None:
    with pytest.raises(ValueError, match="every score is <= 0"):
        P.rescale_transferability(torch.tensor([-0.2, 0.0]), "mean1")


def test_teacher_weights_are_the_rescaled_scores() -> None:
    dm = ToyMultiDomainDataModule()
    plain, scaled = make(MetaTeacher, dm), make(MetaTeacher, dm, transferability_scale="mean1")
    for model in (plain, scaled):
        tiny_trainer(max_steps=1).fit(model, dm)
    batch = next(iter(dm.train_eval_dataloader()))
    t = plain.transferability
    assert torch.equal(scaled.transferability, t)  # the buffer keeps the raw scores
    assert torch.equal(plain._prototype_weights(batch), t[batch["example_ids"]].clamp_min(0))
    clamped = t.clamp_min(0)
    expected = clamped[batch["example_ids"]] / clamped.mean()
    assert torch.allclose(scaled._prototype_weights(batch), expected, atol=1e-6)


# ------------------------------------------------------------------------------ multi-task teacher


def test_mtl_logits_come_from_each_examples_domain_head() -> None:
    dm = ToyMultiDomainDataModule()
    dm.setup("fit")
    model = make(MultiTaskTeacher, dm).eval()
    batch = pad_collate(dm.train_dataset.rows)  # every domain
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["domain_ids"])
    out = model(*args, output_hidden_states=True)
    cls = out.hidden_states[-1][:, 0]
    for row, domain in enumerate(batch["domain_ids"].tolist()):
        assert torch.allclose(out.logits[row], model.network.domain_heads[domain](cls[row]), atol=1e-6)
    assert out.transferable is None and out.domain_logits is None
    assert "transferable" not in MultiTaskTeacher.provides and "transferable" in MetaTeacher.provides
    with torch.no_grad():  # changing domain 0's head changes domain 0's logits only
        model.network.domain_heads[0].bias.add_(1.0)
    changed = model(*args).logits
    rows0 = batch["domain_ids"] == 0
    assert rows0.any() and (~rows0).any()
    assert torch.allclose(changed[rows0], out.logits[rows0] + 1.0, atol=1e-6)
    assert torch.equal(changed[~rows0], out.logits[~rows0])


def test_mtl_loss_trains_only_the_heads_of_the_batchs_domains() -> None:
    dm = ToyMultiDomainDataModule()
    dm.setup("fit")
    model = make(MultiTaskTeacher, dm)
    batch = next(iter(dm.train_eval_dataloader()))
    only0 = {k: v[batch["domain_ids"] == 0] for k, v in batch.items()}
    out = model._run(only0)
    torch.nn.functional.cross_entropy(out.logits, only0["labels"]).backward()
    heads = model.network.domain_heads
    assert heads[0].weight.grad.abs().sum() > 0
    assert heads[1].weight.grad.abs().sum() == 0 and heads[2].weight.grad.abs().sum() == 0


def test_mtl_fits_saves_its_class_and_reloads(tmp_path) -> None:
    dm = ToyMultiDomainDataModule()
    model = make(MultiTaskTeacher, dm)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and torch.all(model.transferability == 1)
    path = tmp_path / "mtl.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint[CLASS_KEY] == "metakd.teacher_mtl.MultiTaskTeacher"
    assert checkpoint["hyper_parameters"]["weighting"] == "none"
    loaded = MultiTaskTeacher.load_from_checkpoint(path, map_location="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with pytest.raises(ValueError, match="weighting and domain_loss must be 'none'"):
        make(MultiTaskTeacher, dm, weighting="prototype")


def test_meta_teacher_checkpoint_names_its_class(tmp_path) -> None:
    dm = ToyMultiDomainDataModule()
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(make(MetaTeacher, dm, weighting="none"), dm)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    checkpoint = torch.load(tmp_path / "t.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint[CLASS_KEY] == "metakd.teacher.MetaTeacher"


# ------------------------------------------------------------------------------ per-example predictions


@pytest.mark.parametrize("cls", [MetaTeacher, MultiTaskTeacher])
def test_test_step_rows_become_the_predictions_file(cls, tmp_path) -> None:
    dm = ToyMultiDomainDataModule()
    model = make(cls, dm, weighting="none", domain_loss="none")
    path = tmp_path / "predictions.jsonl"
    trainer = tiny_trainer(max_steps=1, callbacks=[PredictionsWriter(str(path))])
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]
    rows = read_predictions(path)
    assert len(rows) == len(dm.test_dataset) == 12
    assert {r["domain"] for r in rows} == set(dm.domain_names)
    expected = {r["example_ids"]: r["labels"] for r in dm.test_dataset.rows}
    assert {r["example_id"]: r["label"] for r in rows} == expected
    assert all(r["pred"] == max(range(2), key=lambda c: r["logits"][c]) for r in rows)
    accuracy = sum(r["pred"] == r["label"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["test/acc"])
    json.dumps(rows)  # plain JSON


def test_students_distil_from_a_multi_task_teacher_checkpoint(tmp_path) -> None:
    from metakd.errors import StudentConfigError

    dm = ToyMultiDomainDataModule(backbone="minilm-l6")
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(tiny_teacher(dm, teacher_class=MultiTaskTeacher), dm)  # MiniLM's tokenizer, as the data's
    path = str(tmp_path / "mtl.ckpt")
    trainer.save_checkpoint(path)
    target = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    for method in ("vanilla", "tinybert"):  # logits; layers and logits
        student = tiny_student(path, target, distillation=method, intermediate_epochs=1)
        run = tiny_trainer(max_epochs=2, max_steps=-1, limit_train_batches=1)
        run.fit(student, target)
        assert run.global_step == 2, method
    with pytest.raises(StudentConfigError, match="transferable"):  # Meta-KD's L_tk needs g
        tiny_student(path, target, distillation="meta")
