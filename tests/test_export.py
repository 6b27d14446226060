"""Export: HF directory round trip through transformers.pipeline, ONNX and int8 round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_student_config, tiny_trainer

from metakd.export import ExportError, export_student, main
from metakd.student import Student


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Student]:
    """A tiny no-KD student (real MiniLM tokenizer, tiny BertConfig of vocab 30522), 2 steps."""
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom0")
    student = Student(
        teacher_ckpt=None,
        distillation="none",
        num_labels=data.num_labels,
        num_domains=data.num_domains,
        domain_names=data.domain_names,
        label_names=["negative", "positive"],
        target_domain="dom0",
        tokenizer_name="minilm-l6",
        student_config=tiny_student_config(),
    )
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    path = tmp_path_factory.mktemp("student") / "student.ckpt"
    trainer.save_checkpoint(path)
    return str(path), student.eval()


def test_export_round_trip_through_pipeline_and_onnx(
    student_ckpt: tuple[str, Student], tmp_path: Path, minilm_tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    path, student = student_ckpt
    out = tmp_path / "exported"
    assert main(["--ckpt", path, "--out", str(out), "--onnx", "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "ONNX:" in printed and "argmax agreement" in printed
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["onnx_max_abs_diff"] <= 1e-4
    # The int8 agreement is what the quantised model really does on the probe texts.
    import onnxruntime as ort

    from metakd.export import PROBE_TEXTS

    probe = minilm_tokenizer(PROBE_TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: probe[i.name].numpy() for i in session.get_inputs()}
    quantized = torch.from_numpy(session.run(["logits"], feeds)[0])
    with torch.no_grad():
        full = student(probe["input_ids"], probe["attention_mask"], probe["token_type_ids"]).logits
    agreement = float((quantized.argmax(-1) == full.argmax(-1)).float().mean())
    assert report["int8_argmax_agreement"] == pytest.approx(agreement)
    assert report["int8_max_abs_diff"] == pytest.approx(float((quantized - full).abs().max()), abs=1e-6)

    texts = ["a good book", "the movie was not great at all, sadly"]
    batch = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        torch.testing.assert_close(exported(**batch).logits, expected, atol=1e-6, rtol=0)
    assert exported.config.id2label == {0: "negative", 1: "positive"}

    classify = pipeline("text-classification", model=str(out), device="cpu")
    predictions = classify(texts)
    assert [p["label"] for p in predictions] == [
        exported.config.id2label[int(i)] for i in expected.argmax(-1)
    ]
    assert predictions[0]["score"] == pytest.approx(float(expected.softmax(-1)[0].max()), abs=1e-5)


def test_export_rejects_what_it_cannot_export(tmp_path: Path, student_ckpt: tuple[str, Student]) -> None:
    with pytest.raises(ExportError, match="checkpoint not found"):
        export_student(tmp_path / "missing.ckpt", tmp_path / "out")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ExportError, match="not a metakd Student checkpoint"):
        export_student(foreign, tmp_path / "out")
    with pytest.raises(ExportError, match="add --onnx"):
        export_student(student_ckpt[0], tmp_path / "out", int8=True)
    with pytest.raises(ExportError, match="not a metakd Student checkpoint"):
        main(["--ckpt", str(foreign), "--out", str(tmp_path / "out")])
    from metakd.cli import main as cli_main  # the error boundary: `error: <message>`, exit status 2

    assert cli_main(["export", "--ckpt", str(foreign), "--out", str(tmp_path / "out")]) == 2


def test_export_never_loses_what_out_already_holds(tmp_path: Path, student_ckpt: tuple[str, Student]) -> None:
    out = tmp_path / "served"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_student(student_ckpt[0], out)
    # A failing check (ONNX tolerance below zero) with --overwrite leaves the old directory as it was.
    with pytest.raises(ExportError, match="ONNX logits differ"):
        export_student(student_ckpt[0], out, onnx=True, atol=-1.0, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    report = export_student(student_ckpt[0], out, overwrite=True)
    assert report.out_dir == str(out) and (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert json.loads((out / "export_report.json").read_text())["out_dir"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no staging folder left behind
