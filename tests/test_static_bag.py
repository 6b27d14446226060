"""The static-bag student (model2vec's classifier shape): shapes, the masked mean by hand, padding, the
same logits as model2vec's own classifier, its embedding initialisation, distillation with logit MSE
through the Student, and export (ONNX, int8, reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_student, tiny_trainer

from metakd.errors import StudentConfigError
from metakd.students import STUDENTS, StudentContext, build_student, load_exported
from metakd.students.static_bag import StaticBagStudent

SMALL = {"embedding_init": "random", "embedding_dim": 6, "hidden_dim": 5}


def bag(tokenizer: Any, **overrides: Any) -> StaticBagStudent:
    torch.manual_seed(0)
    context = StudentContext(2, ("neg", "pos"), "minilm-l6", len(tokenizer), tokenizer.pad_token_id)
    return build_student({"class_path": "static_bag", "init_args": {**SMALL, **overrides}}, context)


def test_shapes_registration_and_model2vec_head(minilm_tokenizer) -> None:
    assert STUDENTS.get("static_bag") is StaticBagStudent
    model = bag(minilm_tokenizer)
    assert model.provides == {"pooled"} and model.num_layers is None and model.hidden_size == 6
    encoded = minilm_tokenizer(["a good book", "no"], padding=True, return_tensors="pt")
    out = model(encoded["input_ids"], encoded["attention_mask"], need=frozenset({"pooled"}))
    assert out.logits.shape == (2, 2) and out.pooled.shape == (2, 6) and out.hidden_states is None
    # model2vec's head: Linear(E, 512) -> ReLU -> Linear(512, C) by default; n_layers 0: one Linear
    default = StaticBagStudent(num_labels=3, vocab_size=10, embedding_init="random", embedding_dim=4)
    assert [type(m).__name__ for m in default.head] == ["Linear", "ReLU", "Linear"]
    assert [tuple(m.weight.shape) for m in default.head[::2]] == [(512, 4), (3, 512)]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in default.head[::2])
    linear = StaticBagStudent(
        num_labels=3, vocab_size=10, embedding_init="random", embedding_dim=4, n_layers=0
    )
    assert [tuple(m.weight.shape) for m in linear.head] == [(3, 4)]
    with pytest.raises(StudentConfigError, match="static_bag: n_layers must be >= 0"):
        bag(minilm_tokenizer, n_layers=-1)


@pytest.mark.parametrize("normalize", [False, True])
def test_masked_mean_by_hand_and_padding_does_not_change_the_output(normalize: bool) -> None:
    model = StaticBagStudent(num_labels=2, vocab_size=6, embedding_init="random", embedding_dim=2,
                             normalize=normalize).eval()  # fmt: skip
    with torch.no_grad():
        model.embeddings.weight.copy_(torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, 0.0], [0.0, 4.0],
                                                    [2.0, 2.0], [-6.0, 1.0]]))  # fmt: skip
    # example 0: tokens 1, 2, 3 and one pad (id 0); example 1: token 5 alone, right then left padded
    ids = torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    means = torch.tensor([[4.0 / 3.0, 2.0], [-6.0, 1.0]])  # (1 + 3 + 0) / 3, (2 + 0 + 4) / 3; token 5
    if normalize:  # |(4/3, 2)| = sqrt(52) / 3; |(-6, 1)| = sqrt(37)
        means = means / torch.tensor([[52.0**0.5 / 3.0], [37.0**0.5]])
    with torch.no_grad():
        out = model(ids, mask, need=frozenset({"pooled"}))
        torch.testing.assert_close(out.pooled, means)
        torch.testing.assert_close(out.logits, model.head(means))
        # the same texts unpadded, left-padded, or with other ids under the padding: the same logits
        alone = torch.cat([model(ids[:1, :3], mask[:1, :3]).logits, model(ids[1:, :1], mask[1:, :1]).logits])
        torch.testing.assert_close(out.logits, alone)
        left = model(torch.tensor([[0, 1, 2, 3], [0, 0, 0, 5]]), mask.flip(1)).logits
        torch.testing.assert_close(left, alone)
        torch.testing.assert_close(model(ids.masked_fill(mask == 0, 4), mask).logits, alone)


def test_the_same_logits_as_model2vecs_own_classifier(minilm_tokenizer) -> None:
    """Given the same table and head weights, model2vec's StaticModelForClassification (fed the tokens
    without padding) and this student (fed a padded batch) compute the same logits."""
    pytest.importorskip("model2vec")
    from model2vec.train import StaticModelForClassification
    from model2vec.train.dataset import TokenBatch

    ours = bag(minilm_tokenizer, n_layers=2).eval()
    theirs = StaticModelForClassification(vectors=ours.embeddings.weight.detach().clone(), hidden_dim=5,
                                          n_layers=2, out_dim=2,
                                          tokenizer=minilm_tokenizer.backend_tokenizer)  # fmt: skip
    assert [type(m) for m in theirs.head] == [type(m) for m in ours.head]
    theirs.head.load_state_dict(ours.head.state_dict())
    texts = [minilm_tokenizer.encode(t, add_special_tokens=False) for t in ("a good book", "it broke")]
    batch = minilm_tokenizer.pad({"input_ids": texts}, return_tensors="pt")
    with torch.no_grad():
        expected = theirs.eval()(TokenBatch.from_token_ids(texts))
        torch.testing.assert_close(ours(batch["input_ids"], batch["attention_mask"]).logits, expected)


def test_default_embeddings_are_model2vecs_at_their_own_width(
    tiny_tokenizer_dir: str, tiny_backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("model2vec")
    from metakd.backbones import load_tokenizer
    from metakd.students.distilled_embeddings import model2vec_word_embeddings

    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    vocab_size = len(load_tokenizer(tiny_tokenizer_dir))
    context = StudentContext(2, ("neg", "pos"), tiny_tokenizer_dir, vocab_size, 0)

    def build(**init_args: Any) -> StaticBagStudent:
        spec = {"class_path": "static_bag", "init_args": {"backbone": tiny_backbone, **init_args}}
        return build_student(spec, context)

    full = build()  # no PCA: the backbone's width, 16
    expected = model2vec_word_embeddings(tiny_backbone, tiny_tokenizer_dir, vocab_size, None)
    assert full.embeddings.weight.shape == (vocab_size, 16) and full.embeddings.weight.requires_grad
    torch.testing.assert_close(full.embeddings.weight.detach(), expected)
    reduced = build(embedding_dim=4)  # PCA when asked
    assert reduced.embeddings.weight.shape == (vocab_size, 4) and reduced.hidden_size == 4
    assert build(embedding_init="backbone", embedding_dim=3).embeddings.weight.shape == (vocab_size, 3)


@pytest.fixture(scope="module")
def distilled(tiny_teacher_ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A static-bag student distilled with Tang's logit MSE for 8 epochs (16 steps) of the toy target
    domain; the loss of every step and the checkpoint."""
    import pytorch_lightning as pl

    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    torch.manual_seed(0)
    student = tiny_student(tiny_teacher_ckpt, data, distillation="tang", student_config=None,
                           student_model={"class_path": "static_bag", "init_args": SMALL},
                           prediction_lr=1e-2)  # fmt: skip
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
            losses.append(float(outputs["loss"]))

    directory = tmp_path_factory.mktemp("bag")
    trainer = tiny_trainer(max_epochs=8, max_steps=-1, limit_val_batches=0, callbacks=[Record()],
                           default_root_dir=str(directory))  # fmt: skip
    trainer.fit(student, datamodule=data)
    ckpt = directory / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"student": student, "losses": losses, "ckpt": ckpt, "data": data}


def test_distilling_with_logit_mse_reduces_the_loss(distilled: dict[str, Any]) -> None:
    losses = distilled["losses"]
    assert len(losses) == 16  # 12 examples of dom1, batch 8: 2 steps an epoch, each epoch the whole set
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.5 * first, losses


def test_export_onnx_int8_and_reload(distilled: dict[str, Any], tmp_path: Path) -> None:
    from metakd.export import export_student
    from metakd.inference import TextClassifier

    report = export_student(distilled["ckpt"], tmp_path / "exported", onnx=True, int8=True)
    assert report.onnx_max_abs_diff <= 1e-4 and report.hf_max_abs_diff <= 1e-5
    model, tokenizer, labels = load_exported(tmp_path / "exported")
    assert type(model) is StaticBagStudent and labels == distilled["data"].label_names
    texts = ["a good book", "the blender broke after two days"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    student = distilled["student"].eval()
    with torch.no_grad():
        expected = student(encoded["input_ids"], encoded["attention_mask"]).logits
    torch.testing.assert_close(model(encoded["input_ids"], encoded["attention_mask"]).logits, expected)
    for runtime in ("torch", "onnx"):
        torch.testing.assert_close(TextClassifier(tmp_path / "exported", runtime=runtime).logits(texts),
                                   expected, atol=1e-4, rtol=0)  # fmt: skip
