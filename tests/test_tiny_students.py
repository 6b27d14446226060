"""The small students (BiLSTM, TextCNN, pQRNN): padding, embeddings, pQRNN's hash projection and
f-pooling, distillation with the existing methods, export (ONNX, reload, classify) and the real CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import (
    REPO,
    ToyMultiDomainDataModule,
    run_metakd,
    run_python,
    tiny_student,
    tiny_trainer,
    write_tiny_corpus,
)
from helpers import train_tiny_teacher as _train_tiny_teacher

from metakd.errors import StudentConfigError
from metakd.students import STUDENTS, StudentContext, build_student, load_exported, rebuild_student
from metakd.students.bilstm import BiLSTMStudent
from metakd.students.pqrnn import HASH_PRIME, PQRNNStudent, f_pooling, hash_constants
from metakd.students.textcnn import TextCNNStudent

SMALL = {  # tiny sizes and random embeddings: what every test but the embedding ones uses
    "bilstm": {"embedding_init": "random", "embedding_dim": 8, "hidden_size": 6, "mlp_size": 5},
    "textcnn": {
        "embedding_init": "random",
        "embedding_dim": 8,
        "filters": 4,
        "widths": [2, 3],
        "mlp_size": 5,
    },
    "pqrnn": {"projection_size": 16, "bottleneck_size": 8, "hidden_size": 6, "mlp_size": 5},
}
# In a LightningCLI config a student is named by its dotted path (jsonargparse imports class_path values).
CLASS_PATHS = {
    "bilstm": "metakd.students.bilstm.BiLSTMStudent",
    "textcnn": "metakd.students.textcnn.TextCNNStudent",
    "pqrnn": "metakd.students.pqrnn.PQRNNStudent",
}
VARIANTS = [
    ("bilstm", {}),
    ("bilstm", {"num_layers": 2, "pooling": "max"}),
    ("textcnn", {}),
    ("textcnn", {"widths": [1, 5]}),
    ("pqrnn", {}),
    ("pqrnn", {"num_layers": 1, "kernel_width": 3, "pooling": "max"}),
]


def context(tokenizer: Any) -> StudentContext:
    return StudentContext(2, ("neg", "pos"), "minilm-l6", len(tokenizer), tokenizer.pad_token_id)


def small(name: str, tokenizer: Any, **overrides: Any) -> Any:
    torch.manual_seed(0)
    return build_student({"class_path": name, "init_args": {**SMALL[name], **overrides}}, context(tokenizer))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _train_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt"))


# ------------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_padding_does_not_change_the_output(name: str, overrides: dict[str, Any], minilm_tokenizer) -> None:
    model = small(name, minilm_tokenizer, **overrides).eval()
    texts = ["a wonderful book", "no", "the blender broke after two days and nobody answered my mails"]
    with torch.no_grad():
        alone = []
        for text in texts:
            encoded = minilm_tokenizer([text], return_tensors="pt")
            alone.append(model(encoded["input_ids"], encoded["attention_mask"]).logits)
        alone = torch.cat(alone)
        for side in ("right", "left"):
            minilm_tokenizer.padding_side = side
            try:
                batch = minilm_tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt")
            finally:
                minilm_tokenizer.padding_side = "right"
            padded = model(batch["input_ids"], batch["attention_mask"]).logits
            torch.testing.assert_close(padded, alone, atol=1e-6, rtol=0)
    # what is under the padding does not matter either
    scrambled = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1234)
    with torch.no_grad():
        torch.testing.assert_close(model(scrambled, batch["attention_mask"]).logits, alone, atol=1e-6, rtol=0)


def test_registered_and_declared(minilm_tokenizer) -> None:
    assert {"bilstm", "textcnn", "pqrnn"} <= set(STUDENTS.names())
    for name in ("bilstm", "textcnn", "pqrnn"):
        model = small(name, minilm_tokenizer)
        assert model.provides == {"pooled"} and model.num_layers is None
        encoded = minilm_tokenizer(["a good book"], return_tensors="pt")
        out = model(encoded["input_ids"], encoded["attention_mask"], need=frozenset({"pooled"}))
        assert out.logits.shape == (1, 2) and out.pooled.shape == (1, model.hidden_size)
        assert out.hidden_states is None and out.attentions is None
    with pytest.raises(StudentConfigError, match="bilstm: pooling must be 'max' or 'final'"):
        small("bilstm", minilm_tokenizer, pooling="mean")
    with pytest.raises(StudentConfigError, match="textcnn: widths"):
        small("textcnn", minilm_tokenizer, widths=[])
    with pytest.raises(StudentConfigError, match=r"pqrnn: \{'hidden_size': 0\} must be >= 1"):
        small("pqrnn", minilm_tokenizer, hidden_size=0)
    with pytest.raises(StudentConfigError, match="embedding_init must be 'backbone', 'model2vec' or"):
        small("textcnn", minilm_tokenizer, embedding_init="glove")


# ------------------------------------------------------------------------------------------ BiLSTM


@pytest.mark.parametrize("pooling", ["final", "max"])
def test_bilstm_poolings_against_the_lstms_run_by_hand(pooling: str, minilm_tokenizer) -> None:
    model = small("bilstm", minilm_tokenizer, pooling=pooling).eval()
    assert BiLSTMStudent(num_labels=2, vocab_size=10, embedding_init="random").pooling == "final"  # default
    ids = minilm_tokenizer(["a wonderful little book"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pooled = model(ids, torch.ones_like(ids), need=frozenset({"pooled"})).pooled
        embedded = model.embeddings(ids)
        forward_out, (forward_last, _) = model.forward_layers[0](embedded)
        backward_out, (backward_last, _) = model.backward_layers[0](embedded.flip(1))
    assert pooled.shape == (1, 12)  # 2 directions x hidden 6
    if pooling == "final":  # forward state after the last token, backward state after the first
        expected = torch.cat([forward_last[0], backward_last[0]], dim=-1)
    else:  # max over time of [forward_t, backward_t], the backward states back in reading order
        expected = torch.cat([forward_out, backward_out.flip(1)], dim=-1).amax(dim=1)
    torch.testing.assert_close(pooled, expected)


def test_bilstm_siamese_features_of_a_pair(minilm_tokenizer) -> None:
    model = small("bilstm", minilm_tokenizer, siamese=True).eval()
    assert model.hidden_size == 48  # [h1, h2, h1 h2, |h1 - h2|], each 2 x 6
    pairs = [("a good book", "it broke after two days"), ("no", "the story is wonderful and long")]
    with torch.no_grad():
        for side in ("right", "left"):
            minilm_tokenizer.padding_side = side
            try:
                batch = minilm_tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding="max_length",
                                         max_length=24, return_tensors="pt")  # fmt: skip
            finally:
                minilm_tokenizer.padding_side = "right"
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        need=frozenset({"pooled"}))  # fmt: skip
            assert out.pooled.shape == (2, 48) and out.logits.shape == (2, 2)
            for row, (a, b) in enumerate(pairs):
                # each segment as the datamodule gives it: [CLS] a [SEP] (type 0), then b [SEP] (type 1)
                first = minilm_tokenizer([a], return_tensors="pt")["input_ids"]
                second = minilm_tokenizer([b], return_tensors="pt")["input_ids"][:, 1:]
                h1 = model.encode(first, torch.ones_like(first, dtype=torch.bool))[0]
                h2 = model.encode(second, torch.ones_like(second, dtype=torch.bool))[0]
                expected = torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()])
                torch.testing.assert_close(out.pooled[row], expected, atol=1e-6, rtol=0)
        # a single sentence (no second segment): h2 = 0, so the features are [h1, 0, 0, |h1|]
        single = minilm_tokenizer(["a good book"], return_tensors="pt")
        pooled = model(single["input_ids"], single["attention_mask"], single["token_type_ids"],
                       need=frozenset({"pooled"})).pooled[0]  # fmt: skip
        h1 = pooled[:12]
        torch.testing.assert_close(pooled[12:36], torch.zeros(24))
        torch.testing.assert_close(pooled[36:], h1.abs())


# ----------------------------------------------------------------------------------------- embeddings


def test_embeddings_start_from_the_backbone_or_its_principal_components(minilm_tokenizer) -> None:
    from metakd.backbones import load_encoder

    minilm = load_encoder("minilm-l6").get_input_embeddings().weight.detach()
    full = small("bilstm", minilm_tokenizer, embedding_init="backbone", embedding_dim=None)
    torch.testing.assert_close(full.embeddings.weight.detach(), minilm)
    assert full.embeddings.weight.requires_grad

    reduced = small("textcnn", minilm_tokenizer, embedding_init="backbone", embedding_dim=6,
                    freeze_embeddings=True)  # fmt: skip
    table = reduced.embeddings.weight.detach().double()
    assert table.shape == (minilm.shape[0], 6) and not reduced.embeddings.weight.requires_grad
    # The leading principal components: centred, uncorrelated, variances = the top eigenvalues.
    centred = minilm.double() - minilm.double().mean(dim=0)
    top = torch.linalg.svdvals(centred)[:6] ** 2
    gram = table.T @ table
    torch.testing.assert_close(torch.diagonal(gram), top, rtol=1e-4, atol=0)
    off_diagonal = gram - torch.diag(torch.diagonal(gram))
    assert off_diagonal.abs().max() < 1e-3 * top[-1]
    torch.testing.assert_close(table.mean(dim=0), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    with pytest.raises(StudentConfigError, match="at most the backbone 'minilm-l6'.s width 384"):
        small("textcnn", minilm_tokenizer, embedding_init="backbone", embedding_dim=500)


def test_a_rebuilt_student_never_loads_the_backbone(minilm_tokenizer, monkeypatch) -> None:
    model = small("textcnn", minilm_tokenizer, embedding_init="backbone", embedding_dim=6)
    payload = json.loads(json.dumps(model.payload()))
    assert payload["init_args"]["embedding_init"] == "backbone" and payload["embedding_dim"] == 6

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the backbone was loaded")

    monkeypatch.setattr("metakd.backbones.load_encoder", refuse)
    rebuilt = rebuild_student(payload)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.init_args == model.init_args
    encoded = minilm_tokenizer(["a good book"], return_tensors="pt")
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(encoded["input_ids"], encoded["attention_mask"]).logits,
            model(encoded["input_ids"], encoded["attention_mask"]).logits,
        )


# ------------------------------------------------------------------------------------------- pQRNN

HASH_SCRIPT = """
import json, sys, torch
from metakd.students.pqrnn import PQRNNStudent
model = PQRNNStudent(num_labels=2, projection_size=32, hash_seed=int(sys.argv[1]))
print(json.dumps(model.project(torch.tensor([[0, 101, 2204, 30521]])).int().tolist()))
"""


def test_pqrnn_projection_is_ternary_fixed_and_the_same_in_every_process(tmp_path: Path) -> None:
    model = PQRNNStudent(num_labels=2, projection_size=32, hash_seed=7)
    ids = torch.tensor([[0, 101, 2204, 30521]])
    projection = model.project(ids)
    assert projection.shape == (1, 4, 32) and set(projection.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # feature k of token t by hand: ((a_k t + b_k) mod (2^31 - 1)) mod 3 - 1, a_k and b_k from BLAKE2b
    digest = hashlib.blake2b(b"metakd-pqrnn:7:5", digest_size=16).digest()
    a = 1 + int.from_bytes(digest[:8], "little") % (HASH_PRIME - 1)
    b = int.from_bytes(digest[8:], "little") % HASH_PRIME
    assert projection[0, 2, 5].item() == ((a * 2204 + b) % HASH_PRIME) % 3 - 1
    assert (hash_constants(32, 7)[0][5].item(), hash_constants(32, 7)[1][5].item()) == (a, b)
    # Another process (another PYTHONHASHSEED) computes the same projection; another seed does not.
    script = tmp_path / "project.py"
    script.write_text(HASH_SCRIPT, encoding="utf-8")
    for seed, hashseed in ((7, "1"), (7, "2"), (8, "1")):
        result = run_python(script, str(seed), extra_env={"PYTHONHASHSEED": hashseed})
        other = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
        assert torch.equal(other, projection.int()) == (seed == 7)
    # Over many tokens the three values all occur, about a third each.
    many = model.project(torch.arange(30522).unsqueeze(0))
    shares = torch.stack([(many == v).float().mean() for v in (-1.0, 0.0, 1.0)])
    assert bool(((shares - 1 / 3).abs() < 0.01).all())


def test_pqrnn_has_no_vocabulary_sized_weights(minilm_tokenizer) -> None:
    model = small("pqrnn", minilm_tokenizer)
    assert all(30522 not in tensor.shape for tensor in model.state_dict().values())
    assert "hash_a" not in model.state_dict()  # derived from hash_seed, not saved
    other_vocabulary = build_student(
        {"class_path": "pqrnn", "init_args": SMALL["pqrnn"]},
        StudentContext(2, ("neg", "pos"), "minilm-l6", 1000, 0),
    )
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in other_vocabulary.state_dict().items()
    }


def test_f_pooling_and_the_backward_direction_against_a_hand_loop() -> None:
    forget = torch.tensor([[[0.5]], [[0.25]], [[1.0]]])  # (T=3, B=1, H=1)
    candidate = torch.tensor([[[1.0]], [[2.0]], [[-4.0]]])
    # h1 = 1; h2 = 0.25 * 1 + 2 = 2.25; h3 = 1.0 * 2.25 - 4 = -1.75
    torch.testing.assert_close(f_pooling(forget, candidate).flatten(), torch.tensor([1.0, 2.25, -1.75]))

    from metakd.students.pqrnn import BiQRNNLayer

    torch.manual_seed(0)
    layer = BiQRNNLayer(in_size=2, hidden_size=1, kernel_width=2)
    x = torch.randn(1, 4, 2)
    valid = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        out = layer(x, valid)[0]
        w, bias = layer.backward_gates.weight, layer.backward_gates.bias  # (2, 2, 2): z and f, anti-causal
        padded = torch.cat([x[0], torch.zeros(1, 2)])
        state, expected = 0.0, []
        for t in reversed(range(4)):  # h_t = f_t h_{t+1} + (1 - f_t) z_t over the window (t, t + 1)
            window = padded[t : t + 2].T  # (in, width)
            z = torch.tanh((w[0] * window).sum() + bias[0])
            f = torch.sigmoid((w[1] * window).sum() + bias[1])
            state = f * state + (1 - f) * z
            expected.insert(0, float(state))
    torch.testing.assert_close(out[:, 1], torch.tensor(expected))


# --------------------------------------------------------------- methods, export, classify (Python)


@pytest.mark.parametrize("name", ["bilstm", "textcnn", "pqrnn"])
def test_distil_export_onnx_and_classify(name: str, teacher_ckpt: str, tmp_path: Path) -> None:
    from metakd.export import export_student
    from metakd.inference import TextClassifier

    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    spec = {"class_path": name, "init_args": SMALL[name]}
    student = tiny_student(teacher_ckpt, data, distillation="tang", student_config=None, student_model=spec,
                           prediction_lr=1e-2)  # fmt: skip
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    trainer = tiny_trainer(max_steps=3, enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(student, datamodule=data)
    assert float(trainer.callback_metrics["train/loss_mse"]) > 0
    assert any(not torch.equal(before[k], v) for k, v in student.model.state_dict().items())
    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)

    report = export_student(ckpt, tmp_path / "exported", onnx=True, int8=True)
    assert report.onnx_max_abs_diff <= 1e-4 and report.hf_max_abs_diff <= 1e-5
    model, tokenizer, labels = load_exported(tmp_path / "exported")
    assert type(model) is {"bilstm": BiLSTMStudent, "textcnn": TextCNNStudent, "pqrnn": PQRNNStudent}[name]
    assert labels == data.label_names
    texts = ["a good book", "the blender broke after two days"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        expected = student(encoded["input_ids"], encoded["attention_mask"]).logits
    torch.testing.assert_close(model(encoded["input_ids"], encoded["attention_mask"]).logits, expected)
    for runtime in ("torch", "onnx"):
        logits = TextClassifier(tmp_path / "exported", runtime=runtime).logits(texts)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    results = TextClassifier(tmp_path / "exported")(texts)
    probabilities = torch.softmax(expected, dim=-1)
    for result, row in zip(results, probabilities):
        assert result["label"] == labels[int(row.argmax())]
        assert result["probabilities"][labels[1]] == pytest.approx(float(row[1]), abs=1e-6)


def test_existing_methods_run_and_refuse_what_needs_token_states(teacher_ckpt: str) -> None:
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    spec = {"class_path": "textcnn", "init_args": SMALL["textcnn"]}

    def student(**kwargs: Any) -> Any:
        return tiny_student(teacher_ckpt if kwargs.get("distillation") != "none" else None, data,
                            student_config=None, student_model=spec, **kwargs)  # fmt: skip

    for method in ("none", "vanilla"):
        tiny_trainer(max_steps=2).fit(student(distillation=method), datamodule=data)
    with pytest.raises(StudentConfigError, match=r"needs the student's \['attention'\]|\['hidden'\]"):
        student(distillation="tinybert")
    # Meta-KD's prediction stage, weighted per instance by w_i = (1 + t_i) sigma_i
    weighted = student(distillation="meta", stage="prediction",
                       distillation_options={"prediction_weighting": True})  # fmt: skip
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(weighted, datamodule=data)
    mean_weight = float(trainer.callback_metrics["train/weight_mean"])
    assert 0 < mean_weight < 1  # sigma_i < 1/2 and t_i in [-1, 1]: w_i is below 1, and not uniform
    # the named row: Tang's logit MSE weighted by the same w_i
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student(distillation="meta_logit"), datamodule=data)
    assert 0 < float(trainer.callback_metrics["train/weight_mean"]) < 1
    assert float(trainer.callback_metrics["train/loss_mse"]) > 0


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus") / "corpus.jsonl", per_domain=40)


@pytest.mark.parametrize("name", ["bilstm", "textcnn", "pqrnn", "pqrnn_features"])
def test_cli_fit(name: str, corpus: Path, tmp_path: Path) -> None:
    backbone = "pqrnn-features" if name == "pqrnn_features" else "minilm-l6"
    name = name.split("_")[0]
    config = {
        "seed_everything": 1,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run")},
        "model": {
            "class_path": "metakd.Student",
            "init_args": {"distillation": "none", "prediction_lr": 1e-2,
                          "student_model": {"class_path": CLASS_PATHS[name], "init_args": SMALL[name]}},
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {"train_file": str(corpus), "backbone": backbone, "max_length": 24,
                          "batch_size": 8, "cache_dir": str(corpus.parent / "cache"),
                          "target_domain": "books"},
        },
    }  # fmt: skip
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_metakd("fit", "--config", path, cwd=tmp_path)
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert state["metakd_student"]["student"]["class_path"] == CLASS_PATHS[name]
    init_args = state["metakd_student"]["student"]["init_args"]
    assert init_args.get("vocab_size") == (None if name == "pqrnn" else 30522)  # filled from the data
    if name == "pqrnn":  # the tokenizer linked from the data, and the word slots it gives
        assert state["metakd_student"]["tokenizer_name"] == backbone
        assert init_args["features_per_word"] == (8 if backbone == "pqrnn-features" else 1)
    assert any(k.startswith("model.head.") for k in state["state_dict"])


def test_cli_export_and_classify_raw_text(tmp_path: Path) -> None:
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    student = tiny_student(None, data, distillation="none", student_config=None,
                           student_model={"class_path": "pqrnn", "init_args": SMALL["pqrnn"]})  # fmt: skip
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "exported"
    result = run_metakd("export", "--ckpt", ckpt, "--out", out, "--onnx", cwd=tmp_path)
    assert "ONNX:" in result.stdout and (out / "metakd_student.json").is_file()
    texts = ["a good book", "it broke after two days"]
    (tmp_path / "texts.txt").write_text(texts[1] + "\n", encoding="utf-8")
    lines = run_metakd("classify", "--model", out, texts[0], "--file", tmp_path / "texts.txt", "--onnx",
                       cwd=tmp_path).stdout.strip().splitlines()  # fmt: skip
    rows = [json.loads(line) for line in lines]
    assert [row["text"] for row in rows] == texts
    student.eval()
    from metakd.backbones import load_tokenizer

    encoded = load_tokenizer("minilm-l6")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(student(encoded["input_ids"], encoded["attention_mask"]).logits, -1)
    for row, expected in zip(rows, probabilities):
        assert row["label"] == data.label_names[int(expected.argmax())]
        assert [row["probabilities"][label] for label in data.label_names] == pytest.approx(
            expected.tolist(), abs=1e-4
        )


def test_classify_refuses_what_is_not_an_export(tmp_path: Path) -> None:
    result = run_metakd("classify", "--model", tmp_path, "some text", cwd=REPO, check=False)
    assert result.returncode == 2
    assert "is not an exported student" in result.stderr and "metakd_student.json" in result.stderr
    result = run_metakd("classify", "--model", tmp_path / "missing", cwd=REPO, check=False)
    assert result.returncode == 2 and "no text to classify" in result.stderr


def test_the_tiny_students_pipeline_config_plans_rows_with_a_fixed_teacher() -> None:
    from metakd import pipeline

    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "tiny_students.yaml")
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    assert not [name for name, cell in cells.items() if cell.kind == "teacher"]  # the teacher is fixed
    kd = pipeline.cell_config(config, 2, cells["student/textcnn_pc128_tang/dvd"])["model"]["init_args"]
    assert kd["teacher_ckpt"] == "/work/runs/tiny/teacher_m64/best.ckpt" and kd["distillation"] == "tang"
    assert kd["student_model"]["init_args"] == {"embedding_dim": 128, "filters": 100}
    plain = pipeline.cell_config(config, 2, cells["student/textcnn_pc128_none/dvd"])["model"]["init_args"]
    assert plain["teacher_ckpt"] is None and plain["distillation"] == "none"
    # the Meta-KD row (declared, not in `methods`) needs the pipeline's meta-teacher
    config["methods"] = ["textcnn_pc128_meta"]
    (teacher, student, *_) = pipeline.plan_cells(config)
    assert teacher.name == "teacher/meta" and student.needs == ["teacher/meta"]
    options = pipeline.cell_config(config, 1, student)["model"]["init_args"]
    assert options["teacher_ckpt"] == str(pipeline.best_checkpoint(config, 1, "teacher/meta"))
    assert options["distillation_options"] == {"prediction_weighting": True}
    # the issue-22 study rows: pipeline teachers (mixed for logit MSE, meta for the Meta-KD weights)
    students = ("textcnn_pc128", "textcnn_m2v128", "bilstm_final", "pqrnn_features")
    config["methods"] = [f"{s}_{m}" for s in students for m in ("none", "mse", "metaw")]
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    teachers = {name for name, cell in cells.items() if cell.kind == "teacher"}
    assert teachers == {"teacher/mixed", "teacher/meta"}
    rows = (("textcnn_m2v128_mse", "mixed", "tang"), ("pqrnn_features_metaw", "meta", "meta_logit"))
    for row, teacher, method in rows:
        cell = pipeline.cell_config(config, 1, cells[f"student/{row}/books"])
        init = cell["model"]["init_args"]
        assert init["distillation"] == method
        assert init["teacher_ckpt"] == str(pipeline.best_checkpoint(config, 1, f"teacher/{teacher}"))
    cell = pipeline.cell_config(config, 1, cells["student/pqrnn_features_metaw/books"])
    assert cell["data"]["init_args"]["backbone"] == "pqrnn-features"
    assert cell["model"]["init_args"]["cache_teacher_outputs"] == "logits"
    m2v = pipeline.cell_config(config, 1, cells["student/textcnn_m2v128_none/books"])["model"]["init_args"]
    assert m2v["student_model"]["init_args"]["embedding_init"] == "model2vec" and m2v["teacher_ckpt"] is None
