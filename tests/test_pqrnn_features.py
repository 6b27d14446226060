"""pQRNN as published: the text featurizer (hashed word and character n-gram strings, stable across
processes), quantisation-aware training against hand-computed roundings, distillation from a teacher that
reads its own tokenization of the same examples, and the int8 export (size, agreement, classify)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, run_metakd, run_python, tiny_student, tiny_trainer, write_tiny_corpus

from metakd.errors import StudentConfigError
from metakd.students import StudentContext, build_student
from metakd.students.quantization import fake_quantize_activation, fake_quantize_weight
from metakd.text_features import HASH_PRIME, featurizer_for, stable_id

SMALL = {"projection_size": 16, "bottleneck_size": 8, "hidden_size": 6, "mlp_size": 5}


def hand_id(kind: str, text: str) -> int:
    return 1 + int.from_bytes(
        hashlib.blake2b(f"{kind}:{text}".encode(), digest_size=8).digest(), "little"
    ) % (HASH_PRIME - 1)


# ------------------------------------------------------------------------------------------ featurizer


def test_featurizer_ids_by_hand() -> None:
    featurizer = featurizer_for("pqrnn-features")
    assert featurizer.config.features_per_word == 8 and featurizer.config.ngram_sizes == (3,)
    out = featurizer("Good BOOK!")
    good = [hand_id("w", "good")] + [hand_id("c3", g) for g in ("<go", "goo", "ood", "od>")] + [0, 0, 0]
    book = [hand_id("w", "book")] + [hand_id("c3", g) for g in ("<bo", "boo", "ook", "ok>")] + [0, 0, 0]
    bang = [hand_id("w", "!"), hand_id("c3", "<!>")] + [0] * 6
    assert out["input_ids"] == good + book + bang
    assert out["attention_mask"] == [1] * 24 and out["token_type_ids"] == [0] * 24
    # a long word keeps 7 of its n-grams, evenly spaced, the first and the last among them
    long = featurizer("extraordinarily")["input_ids"]
    grams = [hand_id("c3", "<extraordinarily>"[i : i + 3]) for i in range(15)]
    assert long == [hand_id("w", "extraordinarily")] + [grams[i] for i in (0, 2, 5, 7, 9, 12, 14)]
    # a pair: a's words, a separator word, b's words (type 1 from the separator on); max_length in words
    pair = featurizer(
        ["good book"], ["bad"], truncation=True, max_length=3, padding=True, return_tensors="pt"
    )
    assert pair["input_ids"].shape == (1, 24)  # "good" (truncated longest first), [SEP], "bad"
    assert pair["input_ids"][0, 8].item() == hand_id("s", "[SEP]")
    assert pair["token_type_ids"][0].tolist() == [0] * 8 + [1] * 16
    words = featurizer_for("pqrnn-words")("good book")["input_ids"]
    assert words == [hand_id("w", "good"), hand_id("w", "book")]  # one slot a word
    assert stable_id("w", "good") == hand_id("w", "good")


FEATURES_SCRIPT = """
import json, sys, torch
from metakd.backbones import load_tokenizer
from metakd.students.pqrnn import PQRNNStudent
featurizer = load_tokenizer("pqrnn-features")
batch = featurizer(["a wonderful book, really"], return_tensors="pt")
model = PQRNNStudent(num_labels=2, projection_size=32, tokenizer_name="pqrnn-features")
print(json.dumps([batch["input_ids"].tolist(), model.project(batch["input_ids"]).tolist()]))
"""


def test_features_and_projection_are_the_same_in_every_process(tmp_path: Path) -> None:
    script = tmp_path / "features.py"
    script.write_text(FEATURES_SCRIPT, encoding="utf-8")
    outputs = [run_python(script, extra_env={"PYTHONHASHSEED": seed}).stdout.strip().splitlines()[-1]
               for seed in ("1", "2")]  # fmt: skip
    assert outputs[0] == outputs[1]
    ids, projection = json.loads(outputs[0])
    assert ids == [featurizer_for("pqrnn-features")("a wonderful book, really")["input_ids"]]
    torch.testing.assert_close(torch.tensor(projection).shape, torch.Size([1, 5, 32]))


def test_word_projection_is_the_scaled_sum_of_its_features() -> None:
    model = build_student({"class_path": "pqrnn", "init_args": {**SMALL, "projection_size": 32}},
                          StudentContext(2, ("neg", "pos"), "pqrnn-features", HASH_PRIME, 0))  # fmt: skip
    assert model.features_per_word == 8 and model.payload()["init_args"]["features_per_word"] == 8
    ids = featurizer_for("pqrnn-features")("good", return_tensors="pt")["input_ids"]  # 5 features, 3 empty
    a, b = model.hash_a, model.hash_b
    ternary = [((a * h + b) % HASH_PRIME) % 3 - 1 for h in ids[0, :5].tolist()]
    expected = torch.stack(ternary).float().sum(0) / 5**0.5
    torch.testing.assert_close(model.project(ids)[0, 0], expected)


def test_refusals() -> None:
    context = StudentContext(2, ("neg", "pos"), "pqrnn-features", HASH_PRIME, 0)
    with pytest.raises(StudentConfigError, match="features_per_word=3, but the featurizer 'pqrnn-features'"):
        build_student({"class_path": "pqrnn", "init_args": {**SMALL, "features_per_word": 3}}, context)
    with pytest.raises(StudentConfigError, match="TextCNNStudent reads a vocabulary's token ids"):
        build_student({"class_path": "textcnn", "init_args": {"embedding_init": "random"}}, context)
    model = build_student({"class_path": "pqrnn", "init_args": SMALL}, context)
    with pytest.raises(StudentConfigError, match="12 input ids are not whole words of 8 slots"):
        model(torch.ones(1, 12, dtype=torch.long), torch.ones(1, 12, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ QAT


def test_fake_quantisation_by_hand() -> None:
    weight = torch.tensor([0.5, -1.27, 0.003, 0.6349], requires_grad=True)
    # s = 1.27 / 127 = 0.01: 0.5 -> 50, -1.27 -> -127, 0.003 -> 0, 0.6349 -> 63
    quantized = fake_quantize_weight(weight)
    torch.testing.assert_close(quantized, torch.tensor([0.5, -1.27, 0.0, 0.63]))
    quantized.sum().backward()
    assert weight.grad.tolist() == [1.0, 1.0, 1.0, 1.0]  # straight through
    x = torch.tensor([-1.0, 0.5, 2.0])
    # s = 3 / 255, zero point round(1 / s) = 85: -1 -> 0, 0.5 -> round(42.5) + 85 = 127, 2 -> 255
    torch.testing.assert_close(fake_quantize_activation(x), torch.tensor([-1.0, 42 * 3 / 255, 2.0]))


def test_quantisation_aware_forward_and_the_export_copy() -> None:
    torch.manual_seed(0)
    context = StudentContext(2, ("neg", "pos"), "pqrnn-features", HASH_PRIME, 0)
    model = build_student({"class_path": "pqrnn", "init_args": SMALL}, context).eval()
    plain = build_student(
        {"class_path": "pqrnn", "init_args": {**SMALL, "quantization_aware": False}}, context
    )
    plain.load_state_dict(model.state_dict())
    batch = featurizer_for("pqrnn-features")(["a good book", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        quantized = model(batch["input_ids"], batch["attention_mask"]).logits
        exported = model.for_export()
        assert exported is not model and not exported.quantization_aware
        for layer in exported.quantized_layers():  # every weight on its int8 grid
            scale = layer.weight.abs().max() / 127
            torch.testing.assert_close(layer.weight / scale, torch.round(layer.weight / scale))
        torch.testing.assert_close(exported(batch["input_ids"], batch["attention_mask"]).logits, quantized)
        assert not torch.allclose(plain.eval()(batch["input_ids"], batch["attention_mask"]).logits, quantized)
    assert plain.for_export() is plain


# ------------------------------------------------------------------- distillation, int8 export, classify


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from helpers import train_tiny_teacher

    from datamodules import JsonlDataModule

    root = tmp_path_factory.mktemp("pqrnn")
    corpus = write_tiny_corpus(root / "corpus.jsonl", per_domain=30)
    data = {"train_file": str(corpus), "max_length": 24, "batch_size": 8, "cache_dir": str(root / "cache")}
    teacher = train_tiny_teacher(str(root / "teacher.ckpt"), JsonlDataModule(backbone="minilm-l6", **data))
    return {"root": root, "data": data, "teacher": teacher}


def test_distil_from_a_teacher_reading_its_own_tokens_then_int8(setup: dict[str, Any]) -> None:
    from datamodules import JsonlDataModule
    from metakd.export import export_student
    from metakd.inference import TextClassifier

    root = setup["root"]
    data = JsonlDataModule(backbone="pqrnn-features", target_domain="books", **setup["data"])
    # large enough that the int8 weights outweigh the quantisation nodes in the file
    sizes = {"projection_size": 64, "bottleneck_size": 64, "hidden_size": 32}
    spec = {"class_path": "pqrnn", "init_args": sizes}
    with pytest.raises(StudentConfigError, match="set model.init_args.cache_teacher_outputs: logits"):
        tiny_student(setup["teacher"], data, student_config=None, student_model=spec, distillation="tang",
                     cache_teacher_outputs="none")  # fmt: skip
    student = tiny_student(setup["teacher"], data, student_config=None, student_model=spec,
                           distillation="meta_logit", prediction_lr=1e-2)  # fmt: skip
    assert student.teacher_source.reads_own_tokens
    trainer = tiny_trainer(max_steps=6, enable_checkpointing=True, default_root_dir=str(root / "run"))
    trainer.fit(student, datamodule=data)
    teacher = student.teacher_source
    view = teacher.view(data)
    assert view.backbone == "minilm-l6" and view.split_fingerprint == data.split_fingerprint
    train_ids = torch.tensor([int(i) for i in data.train_dataset["example_ids"]])
    assert bool(teacher.cache.filled[train_ids].all())  # every training example, from the teacher's view
    assert 0 < float(trainer.callback_metrics["train/weight_mean"]) < 1
    assert float(trainer.callback_metrics["train/loss_mse"]) > 0
    ckpt = root / "student.ckpt"
    trainer.save_checkpoint(ckpt)

    report = export_student(ckpt, root / "exported", onnx=True, int8=True)
    assert report.onnx_max_abs_diff <= 1e-4
    sizes = report.size_mb
    assert 0 < sizes["model.int8.onnx"] < sizes["model.onnx"]
    assert (root / "exported" / "metakd_student.json").is_file()
    assert (root / "exported" / "metakd_featurizer.json").is_file()
    texts = [r["text"] for r in JsonlDataModule(**setup["data"]).raw_splits()["train"][:32]]
    fp32 = torch.softmax(TextClassifier(root / "exported").logits(texts), -1)
    int8 = torch.softmax(TextClassifier(root / "exported", runtime="int8").logits(texts), -1)
    # Stated tolerance: int8 probabilities within 0.02 of the fp32 model's, on 32 training texts.
    assert float((int8 - fp32).abs().max()) <= 0.02

    # The real CLI from raw text, with the featurizer saved beside the model.
    result = run_metakd("classify", "--model", root / "exported", texts[0], "--int8", cwd=REPO)
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    # (dynamic quantisation takes its activation ranges from the batch: compare the same one-text batch)
    alone = torch.softmax(TextClassifier(root / "exported", runtime="int8").logits(texts[:1]), -1)
    assert rows[0]["probabilities"][data.label_names[1]] == pytest.approx(float(alone[0, 1]), abs=1e-5)


def test_the_teachers_view_of_data_built_by_lightning_cli(setup: dict[str, Any]) -> None:
    """LightningCLI saves `_class_path` (and `_instantiator`) among a datamodule's hyperparameters; the
    teacher's view of a pQRNN student's data must still be built (the pipeline's cells failed on it)."""
    from datamodules import JsonlDataModule

    data = JsonlDataModule(backbone="pqrnn-features", target_domain="books", **setup["data"])
    data.hparams["_class_path"] = "datamodules.JsonlDataModule"  # as LightningCLI leaves it
    data.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    data.setup()
    view = data.with_backbone("minilm-l6")
    assert view.backbone == "minilm-l6" and view.split_fingerprint == data.split_fingerprint
    assert view.with_backbone("minilm-l6") is view
