"""FastBERT: the uncertainty against hand values, early exit (speed 0 and 1, batched vs one at a time),
the two stages (what trains when, the self-distillation loss by hand), the export (HF directory at full
depth, the early-exit model, one ONNX graph per exit point through the real CLI), bad input, the rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import (
    REPO,
    ToyMultiDomainDataModule,
    WeightSnapshots,
    run_metakd,
    tiny_encoder_config,
    tiny_student,
    tiny_trainer,
)

from metakd import pipeline
from metakd.distill import DISTILLERS, StepContext
from metakd.distill.base import stage_loss
from metakd.distill.fastbert import FastBERT
from metakd.errors import StudentConfigError
from metakd.students import StudentOutput
from metakd.students.early_exit import EarlyExitStudent, normalized_entropy


def toy() -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1", eval_per_domain=12)


def early_exit_spec(speed: float = 0.0, layers: int = 3) -> dict[str, Any]:
    return {
        "class_path": "early_exit",
        "init_args": {"config": tiny_encoder_config(num_hidden_layers=layers), "speed": speed},
    }


def fastbert_student(data: Any, speed: float = 0.0, **overrides: Any) -> Any:
    overrides.setdefault("distillation_options", {"finetune_epochs": 1})
    return tiny_student(
        None,
        data,
        distillation="fastbert",
        student_config=None,
        student_model=early_exit_spec(speed),
        **overrides,
    )


def test_normalized_entropy_against_hand_values() -> None:
    def logits_of(*p: float) -> torch.Tensor:
        return torch.tensor([math.log(x) for x in p])

    rows = torch.stack([logits_of(0.5, 0.5), logits_of(0.9, 0.1), logits_of(0.99, 0.01)])
    expected = [
        1.0,
        (0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(0.5),
        (0.99 * math.log(0.99) + 0.01 * math.log(0.01)) / math.log(0.5),
    ]
    assert normalized_entropy(rows).tolist() == pytest.approx(expected, rel=1e-5)  # 1, 0.4690, 0.0808
    three = torch.stack([logits_of(0.7, 0.2, 0.1), torch.zeros(3), torch.tensor([200.0, 0.0, 0.0])])
    hand = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)  # 0.7298
    assert normalized_entropy(three).tolist() == pytest.approx([hand, 1.0, 0.0], abs=1e-6)


def sharpen_branches(model: EarlyExitStudent) -> EarlyExitStudent:
    """Sharper branches, so that their uncertainties spread over [0, 1]."""
    with torch.no_grad():
        for branch in model.branches:
            branch.classifier.weight.mul_(40.0)
    return model.eval()


def spread_student(data: Any) -> EarlyExitStudent:
    """A tiny early-exit student (seeded, random weights) with sharpened branches."""
    data.setup()
    torch.manual_seed(0)
    return sharpen_branches(fastbert_student(data).model)


def test_speed_0_runs_every_layer_speed_1_exits_at_the_first_branch_and_exits_agree() -> None:
    data = toy()
    model = spread_student(data)
    batch = next(iter(data.test_dataloader()))
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        full = model(*inputs, need=frozenset({"exit_logits"}))
        zero = model.early_exit(*inputs, speed=0.0)
        assert zero.exit_layers.tolist() == [3] * len(zero.exit_layers)
        torch.testing.assert_close(zero.logits, full.logits, rtol=0, atol=1e-6)
        one = model.early_exit(*inputs, speed=1.0)
        assert one.exit_layers.tolist() == [1] * len(one.exit_layers)
        torch.testing.assert_close(one.logits, full.exit_logits[0], rtol=0, atol=1e-5)

        # A speed between the first branch's uncertainties: some samples leave after layer 1, the others
        # go on; each sample's logits are those of the branch it left at, batched or alone.
        speed = float(normalized_entropy(full.exit_logits[0]).median()) + 1e-4
        batched = model.early_exit(*inputs, speed=speed)
        assert len(set(batched.exit_layers.tolist())) >= 2
        for row in range(len(batched.exit_layers)):
            n = int(batch["attention_mask"][row].sum())
            alone = model.early_exit(*(x[row : row + 1, :n] for x in inputs), speed=speed)
            assert int(alone.exit_layers) == int(batched.exit_layers[row])
            torch.testing.assert_close(alone.logits[0], batched.logits[row], rtol=0, atol=1e-5)
            layer = int(batched.exit_layers[row])
            torch.testing.assert_close(
                batched.logits[row], full.exit_logits[layer - 1][row], rtol=0, atol=1e-5
            )
            entropies = [float(normalized_entropy(full.exit_logits[m][row : row + 1])) for m in range(layer)]
            assert all(u >= speed for u in entropies[: layer - 1])  # it stayed while unsure ...
            assert layer == 3 or entropies[-1] < speed  # ... and left at the first sure branch
        model.speed = speed
        torch.testing.assert_close(model.predict_logits(*inputs), batched.logits)
        assert torch.equal(model.last_exit_layers, batched.exit_layers)


def test_self_distillation_loss_against_hand_values() -> None:
    (_, stage) = FastBERT().stages()
    branch1, branch2, final = (
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[2.0, 0.0]]),
    )
    student = StudentOutput(logits=final, exit_logits=(branch1, branch2, final))
    step = StepContext({"labels": torch.tensor([0])}, student, None, {})
    loss, logs = stage_loss(stage, step, None)

    def softmax(z: float) -> tuple[float, float]:
        return (math.exp(z) / (1 + math.exp(z)), 1 / (1 + math.exp(z)))

    def kl(p: tuple[float, float], q: tuple[float, float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    expected = kl(softmax(2.0), softmax(0.0)) + kl(softmax(2.0), softmax(1.0))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(logs["train/loss_self_distill"]) == pytest.approx(expected, rel=1e-6)


def test_fine_tuning_then_self_distillation_train_their_parts() -> None:
    data = toy()
    student = fastbert_student(data, speed=0.3, weight_decay=0.1)
    assert FastBERT.teacher_role is None and student.teacher is None
    snapshots = WeightSnapshots()
    trainer = tiny_trainer(max_steps=-1, max_epochs=2, limit_train_batches=2, callbacks=[snapshots])
    trainer.fit(student, datamodule=data)
    start, finetuned, distilled = snapshots.states
    backbone = (
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
    )
    branch = ("branches.0.reduce.weight", "branches.1.classifier.weight")
    for key in backbone:
        assert not torch.equal(finetuned[key], start[key]), key  # fine-tuning trains them
        assert torch.equal(distilled[key], finetuned[key]), key  # self-distillation does not
    for key in branch:
        assert torch.equal(finetuned[key], start[key]), key  # frozen while fine-tuning
        assert not torch.equal(distilled[key], finetuned[key]), key
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss_self_distill"]) > 0 and "val/stage1_acc" in metrics


def test_export_full_depth_hf_directory_early_exit_model_and_onnx_exit_graphs(tmp_path: Path) -> None:
    from transformers import pipeline as hf_pipeline

    from metakd.students import load_exported
    from metakd.students.early_exit import OnnxEarlyExit

    data = toy()
    data.setup()
    torch.manual_seed(0)
    student = fastbert_student(data, speed=0.4)
    trainer = tiny_trainer(max_steps=-1, max_epochs=2, limit_train_batches=2)
    trainer.fit(student, datamodule=data)
    sharpen_branches(student.model)
    trainer.save_checkpoint(tmp_path / "fastbert.ckpt")
    run_metakd("export", "--ckpt", tmp_path / "fastbert.ckpt", "--out", tmp_path / "out", "--onnx")
    out = tmp_path / "out"
    report = json.loads((out / "export_report.json").read_text())
    assert report["onnx_extras"]["exit_segments"] == [f"exits/segment_{m}.onnx" for m in (1, 2, 3)]
    assert report["onnx_extras"]["exit_max_abs_diff"] <= 1e-4 and report["onnx_max_abs_diff"] <= 1e-4

    batch = next(iter(data.test_dataloader()))
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    model = student.model.eval()
    exported, tokenizer, labels = load_exported(out)
    assert isinstance(exported, EarlyExitStudent) and exported.speed == 0.4 and labels == data.label_names
    runner = OnnxEarlyExit(out)
    with torch.no_grad():
        for speed in (
            0.0,
            0.4,
            float(
                normalized_entropy(model(*inputs, need=frozenset({"exit_logits"})).exit_logits[0]).median()
            ),
            1.0,
        ):
            expected = model.early_exit(*inputs, speed=speed)
            reloaded = exported.early_exit(*inputs, speed=speed)
            assert torch.equal(reloaded.exit_layers, expected.exit_layers)
            torch.testing.assert_close(reloaded.logits, expected.logits, rtol=0, atol=1e-5)
            logits, exit_layers = runner(*(x.numpy() for x in inputs), speed)
            assert exit_layers.tolist() == expected.exit_layers.tolist()
            torch.testing.assert_close(torch.from_numpy(logits), expected.logits, rtol=0, atol=1e-4)

        # transformers.pipeline reads the plain HF part: the final classifier after every layer.
        classify = hf_pipeline("text-classification", model=str(out), top_k=None)
        text = "a good book"
        encoded = tokenizer([text], return_tensors="pt")
        full = torch.softmax(
            model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]).logits, -1
        )[0]
        scores = {s["label"]: s["score"] for s in classify([text])[0]}
        assert [scores[name] for name in data.label_names] == pytest.approx(full.tolist(), abs=1e-5)


def test_bad_input_is_refused_with_the_key() -> None:
    data = toy()
    for speed in (1.5, -0.1, "fast"):
        with pytest.raises(
            StudentConfigError, match=r"model.student_model.init_args.speed must be a number in \[0, 1\]"
        ):
            fastbert_student(data, speed=speed)
    model = fastbert_student(data).model
    with pytest.raises(StudentConfigError, match=r"speed must be a number in \[0, 1\].*got 2"):
        model.early_exit(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), speed=2)
    with pytest.raises(
        StudentConfigError, match=r"trains the student's parts \['backbone', 'classifier'\].*HFStudent"
    ):
        tiny_student(None, data, distillation="fastbert")
    with pytest.raises(StudentConfigError, match="at least 2 layers"):
        tiny_student(
            None, data, distillation="fastbert", student_config=None, student_model=early_exit_spec(layers=1)
        )
    with pytest.raises(
        StudentConfigError, match=r"distillation_options.finetune_epochs must be an integer >= 1"
    ):
        fastbert_student(data, distillation_options={"finetune_epochs": 0})


@pytest.mark.parametrize(
    ("name", "quick"), [("amazon/benchmark_compression.yaml", False), ("mnli/benchmark.yaml", True)]
)
def test_compression_rows_resolve_in_the_cli(
    name: str, quick: bool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The Theseus and FastBERT rows of the Amazon and MNLI presets: their cells are configs LightningCLI
    accepts, with the architecture, the method and the teacher each row names."""
    from metakd.cli import main as cli_main

    assert DISTILLERS.get("fastbert") is FastBERT
    config = pipeline.load_pipeline_config(REPO / "configs" / name, quick=quick)
    config["methods"], config["runs_dir"] = ["theseus_k3", "fastbert_l2", "fastbert_l6"], str(tmp_path)
    config["studies"] = ["main"]  # the presets' ablation study adds its own teachers
    planned = pipeline.plan_cells(config)
    assert [c.name for c in planned if c.kind == "teacher"] == [
        f"teacher/single/{d}" for d in config["domains"]
    ]
    cells = {c.name.split("/")[1]: c for c in planned if c.kind == "student"}
    rows = (
        ("theseus_k3", "theseus", "theseus.TheseusStudent", True),
        ("fastbert_l2", "fastbert", "early_exit.EarlyExitStudent", False),
        ("fastbert_l6", "fastbert", "early_exit.EarlyExitStudent", False),
    )
    for row, method, architecture, has_teacher in rows:
        cell = cells[row]
        path = tmp_path / f"{row}.yaml"
        path.write_text(yaml.safe_dump(pipeline.cell_config(config, 1, cell)), encoding="utf-8")
        with pytest.raises(SystemExit) as exit_:
            cli_main(["fit", "--config", str(path), "--print_config"])
        assert exit_.value.code in (0, None), row
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["student_model"]["class_path"] == f"metakd.students.{architecture}"
        assert printed["student_layers"] is None and printed["distillation"] == method
        stages = printed["distillation_options"]
        assert stages == (
            {"replacing_epochs": 1 if quick else 2} if has_teacher else {"finetune_epochs": 1 if quick else 2}
        )
        if has_teacher:
            expected = pipeline.best_checkpoint(config, 1, f"teacher/single/{cell.info['domain']}")
            assert printed["teacher_ckpt"] == str(expected)
        else:
            assert printed["teacher_ckpt"] is None
    labels = dict(pipeline.main_rows(config["methods"], config["variants"]))
    assert labels["student_theseus_k3"] == "Student: BERT-of-Theseus, 6 -> 2 layers (single-domain teacher)"
    assert labels["student_fastbert_l6"] == "Student: FastBERT, 6 layers with early exit (speed 0.2)"
    assert labels["student_fastbert_l2"] == "Student: FastBERT, 2 layers with early exit (speed 0.2)"


def test_early_exit_benchmark_measures_accuracy_layers_and_throughput_per_speed(tmp_path: Path) -> None:
    """benchmarks/early_exit.py's measurement on a tiny student: the values it reports are the early-exit
    rule's, computed here independently; its Markdown table and PNG are written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("early_exit_bench", REPO / "benchmarks" / "early_exit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = toy()
    model = spread_student(data)
    dev, test = list(data.val_dataloader()), list(data.test_dataloader())
    full = {
        "teacher (full depth)": lambda b: (
            model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        )
    }
    models = {"dom1": {"fastbert": model, "dev": dev, "test": test, "target": 1, "references": full}}
    with torch.no_grad():
        first = torch.cat(
            [
                model(b["input_ids"], b["attention_mask"], need=frozenset({"exit_logits"})).exit_logits[0]
                for b in test
            ]
        )
    middle = float(normalized_entropy(first).median()) + 1e-4
    entries = bench.measure(models, ["dom1"], (0.0, middle, 1.0), reps=2)

    labels = torch.cat([b["labels"] for b in test])
    for speed in (0.0, middle, 1.0):
        entry = entries[f"fastbert@{speed:g}"]
        with torch.no_grad():
            outs = [
                model.early_exit(b["input_ids"], b["attention_mask"], b["token_type_ids"], speed)
                for b in test
            ]
        predictions = torch.cat([o.logits.argmax(-1) for o in outs])
        layers = torch.cat([o.exit_layers for o in outs]).float()
        assert entry["test_acc"] == pytest.approx(float((predictions == labels).float().mean()))
        assert entry["avg_layers"] == pytest.approx(float(layers.mean()))
        assert entry["examples"] == len(labels) and entry["examples_per_s"] > 0
    assert entries["fastbert@0"]["avg_layers"] == 3 and entries["fastbert@1"]["avg_layers"] == 1
    assert entries["fastbert@0"]["test_acc"] == entries["teacher (full depth)"]["test_acc"]
    assert 1 < entries[f"fastbert@{middle:g}"]["avg_layers"] < 3

    report = {
        "name": "toy",
        "seed": 0,
        "domains": ["dom1"],
        "num_layers": 3,
        "batch_size": 8,
        "max_length": 12,
        "reps": 2,
        "threads": 1,
        "entries": entries,
        "dev_tolerance": 1.0,
        "dev_choice": bench.dev_choice(entries, 100.0),
        "versions": {"torch": torch.__version__},
    }
    assert (
        report["dev_choice"]
        == max((e for e in entries.values() if e["kind"] == "fastbert"), key=lambda e: e["examples_per_s"])[
            "speed"
        ]
    )
    report["plot"] = bench.plot(report, tmp_path / "toy.png")
    table = bench.render(report)
    assert "| FastBERT, speed 0 |" in table
    assert "| teacher (full depth) |" in table and "| 100.0% |" in table  # accuracy retained vs itself
    assert report["plot"] is None or (tmp_path / "toy.png").stat().st_size > 0
