"""MetaTeacher: forward contract, every switch for a couple of steps, checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from helpers import ToyMultiDomainDataModule, pad_collate, tiny_encoder_config, tiny_trainer

from metakd import prototypes as P
from metakd.teacher import CheckpointMismatchError, MetaTeacher, TeacherOutput, build_encoder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))


def make_teacher(dm: ToyMultiDomainDataModule, **kwargs) -> MetaTeacher:
    pl.seed_everything(0, verbose=False)
    kwargs.setdefault("learning_rate", 1e-3)
    return MetaTeacher(
        backbone="tiny-test-bert",
        encoder_config=tiny_encoder_config(),
        num_labels=dm.num_labels,
        num_domains=dm.num_domains,
        domain_names=dm.domain_names,
        label_names=dm.label_names,
        **kwargs,
    )


def test_forward_matches_the_contract() -> None:
    dm = ToyMultiDomainDataModule()
    dm.setup("fit")
    model = make_teacher(dm).eval()
    batch = next(iter(dm.train_eval_dataloader()))
    out = model(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["domain_ids"],
        output_hidden_states=True, output_attentions=True,
    )  # fmt: skip
    assert isinstance(out, TeacherOutput)
    b, t = batch["input_ids"].shape
    assert out.logits.shape == (b, 2) and out.domain_logits.shape == (b, 3)
    assert out.pooled.shape == out.transferable.shape == (b, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (b, t, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (b, 2, t, t)
    net = model.network
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(out.pooled, pooled, atol=1e-5)
    g = net.corrupt_dense(net.domain_embedding(batch["domain_ids"]) + pooled)
    assert torch.allclose(out.transferable, g, atol=1e-5)
    assert torch.allclose(out.domain_logits, net.domain_classifier(torch.tanh(g)), atol=1e-5)
    assert torch.allclose(out.logits, net.classifier(out.hidden_states[-1][:, 0]), atol=1e-5)


@pytest.mark.parametrize(
    ("weighting", "domain_loss", "granularity"),
    [
        ("prototype", "corruption", "domain"),
        ("prototype", "reversal", "domain_class"),
        ("meta", "corruption", "domain"),
        ("prototype+meta", "reversal", "domain"),
        ("none", "none", "domain"),
    ],
)
def test_switches_train(weighting: str, domain_loss: str, granularity: str) -> None:
    dm = ToyMultiDomainDataModule()
    model = make_teacher(
        dm,
        weighting=weighting,
        domain_loss=domain_loss,
        prototype_granularity=granularity,
        meta_heldout="all",
    )
    before = model.network.classifier.weight.detach().clone()
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert not torch.equal(before, model.network.classifier.weight)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/loss_cls", "train/loss_domain", "train/weight_mean"} <= set(metrics)
    assert model.transferability.shape == (dm.num_pooled_train,)
    if "prototype" in weighting:
        assert not torch.all(model.transferability == 1)
        expected_protos = (3, 2, 32) if granularity == "domain_class" else (3, 32)
        assert model.prototypes.shape == expected_protos
    else:
        assert torch.all(model.transferability == 1) and model.prototypes.numel() == 0
    if "meta" in weighting:
        assert model.encoder.config._attn_implementation == "eager"
        assert "train/meta_zero_frac" in metrics
    if domain_loss == "none":
        assert metrics["train/loss_domain"] == 0


def test_meta_other_domains_and_every_n_steps() -> None:
    dm = ToyMultiDomainDataModule()
    model = make_teacher(dm, weighting="meta", meta_heldout="other_domains", meta_every_n_steps=2)
    calls = []
    original = model._meta_weights

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model._meta_weights = counting
    tiny_trainer(max_steps=3).fit(model, dm)
    assert len(calls) == 2  # steps 0 and 2


def test_validate_and_test_metrics() -> None:
    dm = ToyMultiDomainDataModule(target_domain="dom2")
    model = make_teacher(dm, weighting="prototype")
    trainer = tiny_trainer(max_steps=2, limit_val_batches=None)
    trainer.fit(model, dm)
    # Single-domain teacher: only dom2 was scored, the rest of t is NaN and never read.
    kept = torch.tensor([row["example_ids"] for row in dm.train_dataset.rows])
    assert torch.isfinite(model.transferability[kept]).all()
    assert torch.isnan(model.transferability).sum() == dm.num_pooled_train - len(kept)
    val = trainer.validate(model, dm, verbose=False)[0]
    assert {"val/acc", "val/loss", "val/acc_dom2"} <= set(val) and "val/acc_dom0" not in val
    assert val["val/acc_dom2"] == pytest.approx(val["val/acc"])
    test = trainer.test(model, dm, verbose=False)[0]
    assert {"test/acc", "test/acc_dom2"} <= set(test)


def test_transferability_cache_reused_by_a_second_fit(tmp_path, monkeypatch) -> None:
    calls = []
    real = P.compute_transferability

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "compute_transferability", counting)
    dm = ToyMultiDomainDataModule()
    first = make_teacher(dm)
    tiny_trainer(max_steps=1).fit(first, dm)
    second = make_teacher(dm)
    tiny_trainer(max_steps=1).fit(second, dm)
    assert len(calls) == 1
    assert torch.equal(first.transferability, second.transferability)
    assert len(list((tmp_path / "cache" / "transferability").glob("*.pt"))) == 1


def test_checkpoint_round_trip_and_refusals(tmp_path, monkeypatch) -> None:
    dm = ToyMultiDomainDataModule()
    model = make_teacher(dm, prototype_granularity="domain_class")
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, dm)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["split_fingerprint"] == dm.split_fingerprint
    assert checkpoint["hyper_parameters"]["domain_names"] == dm.domain_names

    loaded = MetaTeacher.load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(loaded.transferability, model.transferability)
    assert torch.equal(loaded.prototypes, model.prototypes)
    assert loaded.split_fingerprint == dm.split_fingerprint
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    # Resuming the same data reuses the stored scores: no recomputation.
    monkeypatch.setattr(P, "compute_transferability", lambda *a, **k: pytest.fail("recomputed t"))
    tiny_trainer(max_steps=3).fit(loaded, dm)

    with pytest.raises(CheckpointMismatchError, match="num_labels: checkpoint has 2, this model has 3"):
        MetaTeacher.load_from_checkpoint(path, map_location="cpu", num_labels=3, label_names=None)
    other = make_teacher(ToyMultiDomainDataModule(num_domains=2))
    with pytest.raises(CheckpointMismatchError, match="num_domains"):
        tiny_trainer(max_steps=3).fit(other, ToyMultiDomainDataModule(num_domains=2), ckpt_path=path)
    with pytest.raises(CheckpointMismatchError, match="backbone"):
        MetaTeacher.load_from_checkpoint(path, map_location="cpu", backbone="another-model")


def test_nan_loss_names_step_and_examples() -> None:
    dm = ToyMultiDomainDataModule()
    model = make_teacher(dm, weighting="none")
    with torch.no_grad():
        model.network.classifier.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"global step 0 .*example_ids of the batch: \[\d+"):
        tiny_trainer(max_steps=1).fit(model, dm)


def test_encoder_trains_with_dropout_on(monkeypatch) -> None:
    # from_pretrained hands back an encoder in eval mode; the teacher must switch it to train mode.
    import metakd.teacher as teacher_module

    real = teacher_module.build_encoder
    monkeypatch.setattr(teacher_module, "build_encoder", lambda *a, **k: real(*a, **k).eval())
    model = make_teacher(ToyMultiDomainDataModule())
    assert all(module.training for module in model.network.modules())


def test_bad_arguments() -> None:
    dm = ToyMultiDomainDataModule()
    with pytest.raises(ValueError, match="weighting must be one of"):
        make_teacher(dm, weighting="learned")
    with pytest.raises(ValueError, match="domain_names has 2 entries"):
        MetaTeacher(encoder_config=tiny_encoder_config(), num_domains=3, domain_names=["a", "b"])
    with pytest.raises(ValueError, match="cannot be built with attn_implementation='eager'"):
        build_encoder("x", {**tiny_encoder_config(), "num_attention_heads": 5}, "eager")
    with pytest.warns(UserWarning, match="replaced by 'eager'"):
        model = make_teacher(dm, weighting="meta", attn_implementation="sdpa")
    assert model.encoder.config._attn_implementation == "eager"


def _has_real_datamodules() -> bool:
    try:
        from datamodules import JsonlDataModule  # noqa: F401
        from metakd.backbones import resolve_backbone

        resolve_backbone("minilm-l6")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _has_real_datamodules(), reason="datamodules or the MiniLM tokenizer not available")
def test_trains_on_a_real_jsonl_datamodule(tmp_path) -> None:
    from datamodules import JsonlDataModule

    rows = [
        {"text": f"{word} review number {i} of the {domain} shop", "label": label, "domain": domain}
        for i in range(12)
        for domain in ("books", "kitchen")
        for word, label in (("great", "pos"), ("awful", "neg"))
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = JsonlDataModule(
        train_file=str(path),
        backbone="minilm-l6",
        max_length=16,
        batch_size=8,
        cache_dir=str(tmp_path / "data"),
    )
    model = make_teacher(dm, weighting="prototype+meta")
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, dm)
    assert model.transferability.shape == (dm.num_pooled_train,)
    assert trainer.global_step == 2


def test_one_domain_teacher_logs_its_domain_accuracy(tmp_path) -> None:
    """A corpus cut to one domain (domains: [dvd]) trains, validates and tests; acc_dvd is logged."""
    from datamodules import JsonlDataModule

    rows = [
        {"text": f"{word} item {i} in {domain}", "label": label, "domain": domain}
        for i in range(12)
        for domain in ("books", "dvd")
        for word, label in (("great", "pos"), ("awful", "neg"))
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = JsonlDataModule(
        train_file=str(path), domains=["dvd"], max_length=16, batch_size=8, cache_dir=str(tmp_path / "d")
    )
    model = make_teacher(dm, weighting="prototype")
    trainer = tiny_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(model, dm)
    assert "val/acc_dvd" in trainer.callback_metrics
    results = trainer.test(model, dm, verbose=False)
    assert results[0]["test/acc_dvd"] == pytest.approx(results[0]["test/acc"])


def test_negative_transferability_is_clamped_to_zero_weight() -> None:
    """w_i = max(t_i, 0) with weighting 'prototype' (a negative weight would ascend that instance's
    loss); the buffer keeps the raw scores. MiniLM gives t_i down to -0.075 on Amazon."""
    dm = ToyMultiDomainDataModule()
    model = make_teacher(dm, weighting="prototype", domain_loss="none")
    tiny_trainer(max_steps=1).fit(model, dm)
    t = torch.linspace(-0.5, 0.5, dm.num_pooled_train)  # ids 0-17 negative, 18-35 positive
    model.transferability = t.clone()
    batch = pad_collate([dm.train_dataset.rows[i] for i in (0, 5, 17, 18, 30, 35)])
    weights = model.instance_weights(batch, None)
    expected = [0.0, 0.0, 0.0, float(t[18]), float(t[30]), 0.5]
    assert weights.tolist() == pytest.approx(expected, abs=1e-7)
    assert torch.equal(model.transferability, t)
    # Training with every score negative: zero weights, zero loss (the stored scores are kept: same split).
    model.transferability = -t.abs() - 0.1
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["train/weight_max"] == 0.0
    assert trainer.callback_metrics["train/loss"] == 0.0
