"""AdaBERT: Gumbel-softmax and its annealing, the expected cost against a hand count, derivation from
known alphas, the derived student (padding, a few KD steps, ONNX), and a tiny search from the CLI that the
Student then retrains; the pipeline's per-domain search cells and robustness columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    ToyMultiDomainDataModule,
    run_metakd,
    run_python,
    tiny_student,
    tiny_trainer,
    train_tiny_teacher,
)

from metakd.errors import StudentConfigError
from metakd.pipeline import cellstore
from metakd.search.derive import derive
from metakd.search.relaxation import gumbel_softmax, sample_gumbel, temperature_at
from metakd.search.supernet import SuperNet, expected_cost
from metakd.students.adabert import (
    AdaBERTStudent,
    architecture_cost,
    architecture_json,
    load_architecture,
    op_cost,
)

ARCH = {
    "format": 1,
    "hidden_size": 8,
    "num_cells": 2,
    "nodes_per_cell": 2,
    "embedding": {"source": None, "dim": 6, "freeze": False},
    "cell": [
        {"node": 2, "inputs": [[0, "conv5"], [1, "maxpool3"]]},
        {"node": 3, "inputs": [[2, "dilconv3"], [0, "avgpool3"]]},
    ],
    "dropout": 0.0,
}


# ------------------------------------------------------------------------------------- relaxation


def test_gumbel_softmax_is_the_formula_and_samples_the_softmax() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0])
    noise = sample_gumbel((3,), torch.Generator().manual_seed(3))
    sample = gumbel_softmax(logits, 0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample, torch.softmax((logits + noise) / 0.5, -1))
    # The argmax of a sample is distributed as softmax(logits) (the Gumbel-max trick).
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([gumbel_softmax(logits, 1.0, generator=generator) for _ in range(4000)])
    frequency = torch.bincount(draws.argmax(-1), minlength=3).float() / 4000
    torch.testing.assert_close(frequency, torch.softmax(logits, -1), atol=0.03, rtol=0)
    # A lower temperature gives sharper samples; hard samples are one-hot and pass the soft gradient.
    cold = gumbel_softmax(logits, 0.05, generator=torch.Generator().manual_seed(1))
    assert float(cold.max()) > 0.99
    leaf = logits.clone().requires_grad_(True)
    hard = gumbel_softmax(leaf, 1.0, hard=True, generator=torch.Generator().manual_seed(1))
    assert sorted(hard.tolist()) == [0.0, 0.0, 1.0]
    (hard * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0


def test_temperature_anneals_exponentially() -> None:
    assert temperature_at(0, 3, 1.0, 0.01) == 1.0
    assert math.isclose(temperature_at(1, 3, 1.0, 0.01), 0.1)  # the geometric midpoint
    assert math.isclose(temperature_at(2, 3, 1.0, 0.01), 0.01)
    assert math.isclose(temperature_at(99, 3, 1.0, 0.01), 0.01)  # clamped after the last step


# ----------------------------------------------------------------------------------------- cost


def test_expected_cost_against_a_hand_count() -> None:
    # width 4: conv3 has 3*4*4 + 4 + 2*4 = 60 parameters and 2*3*4*4 = 96 FLOPs/token; maxpool3 0 and 12.
    assert op_cost("conv3", 4) == (60, 96) and op_cost("maxpool3", 4) == (0, 12)
    assert op_cost("identity", 4) == op_cost("zero", 4) == (0, 0)
    operations = ["conv3", "maxpool3", "identity", "zero"]
    edges = torch.tensor([[0.5, 0.25, 0.25, 0.0]]).repeat(5, 1)  # 2 nodes: 2 + 3 edges
    depth = torch.tensor([0.2, 0.8])  # E[cells] = 0.2 * 1 + 0.8 * 2 = 1.8
    params, flops = expected_cost(edges, depth, operations, 4)
    # per cell: 5 * 0.5 * 60 + 8 (the cell's LayerNorm) = 158 parameters, 5 * (0.5 * 96 + 0.25 * 12) = 255
    assert math.isclose(float(params), 1.8 * 158, rel_tol=1e-6)
    assert math.isclose(float(flops), 1.8 * 255, rel_tol=1e-6)


def test_derived_student_cost_is_its_parameter_count_and_the_hand_count() -> None:
    model = AdaBERTStudent(ARCH, num_labels=3, vocab_size=50)
    cost = architecture_cost(ARCH, vocab_size=50, num_labels=3)
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())
    # FLOPs/token: projection 2*6*8 = 96; per cell conv5 2*5*64 = 640, maxpool3 24, dilconv3 384, avgpool3 24
    assert cost["flops_per_token"] == 96 + 2 * (640 + 24 + 384 + 24)


# ------------------------------------------------------------------------------------- derivation


def test_derive_keeps_the_strongest_non_zero_operations() -> None:
    operations = ["conv3", "maxpool3", "identity", "zero"]
    alpha = torch.full((5, 4), -5.0)  # edges (0,2) (1,2) (0,3) (1,3) (2,3)
    alpha[0, 3] = 9.0  # zero wins on edge 0->2, but zero is never kept: its best op is compared instead
    alpha[0, 0] = 1.0
    alpha[1, 1] = 3.0  # 1->2 maxpool3
    alpha[2, 2] = 2.0  # 0->3 identity (weaker)
    alpha[3, 0] = 4.0  # 1->3 conv3
    alpha[4, 1] = 5.0  # 2->3 maxpool3
    depth = torch.tensor([0.1, 2.0, 0.3])
    derived = derive(alpha, depth, operations, nodes_per_cell=2, edges_per_node=2)
    assert derived["num_cells"] == 2
    assert derived["cell"] == [
        {"node": 2, "inputs": [[0, "conv3"], [1, "maxpool3"]]},
        {"node": 3, "inputs": [[1, "conv3"], [2, "maxpool3"]]},
    ]
    one = derive(alpha, depth, operations, nodes_per_cell=2, edges_per_node=1, fixed_cells=3)
    assert one["num_cells"] == 3 and one["cell"][1]["inputs"] == [[2, "maxpool3"]]
    with pytest.raises(StudentConfigError, match="alpha has shape"):
        derive(alpha[:4], depth, operations, nodes_per_cell=2)


def test_a_hard_sample_runs_only_the_sampled_operation() -> None:
    from metakd.search.supernet import MixedEdge

    edge = MixedEdge(["conv3", "maxpool3", "identity"], 4)
    x, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.long)
    calls = []
    for op in edge.ops:
        op.register_forward_hook(lambda module, args, out: calls.append(module.name))
    logits = torch.zeros(3, requires_grad=True)
    weights = gumbel_softmax(logits, 1.0, hard=True, generator=torch.Generator().manual_seed(0))
    chosen = int(weights.argmax())
    out = edge(x, mask, weights)
    assert calls == [edge.ops[chosen].name]
    torch.testing.assert_close(out, edge.ops[chosen](x, mask))
    out.sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0  # straight-through


def test_supernet_efficiency_loss_is_one_at_the_costliest_architecture() -> None:
    net = SuperNet(torch.randn(40, 6), 2, ["conv7", "maxpool3", "zero"], 8, 3, 2)
    costliest = torch.zeros(5, 3)
    costliest[:, 0] = 1.0
    assert math.isclose(
        float(net.efficiency_loss(costliest, torch.tensor([0.0, 0.0, 1.0]))), 1.0, rel_tol=1e-6
    )
    nothing = torch.zeros(5, 3)
    nothing[:, 2] = 1.0
    assert float(net.efficiency_loss(nothing, torch.tensor([1.0, 0.0, 0.0]))) < 0.01


# ---------------------------------------------------------------------------------------- student


def test_architecture_json_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "architecture.json"
    path.write_text(architecture_json(ARCH))
    assert load_architecture(path) == json.loads(json.dumps(ARCH))
    assert '[0, "conv5"]' in path.read_text()  # one edge per line: readable
    bad = {**ARCH, "cell": [{"node": 2, "inputs": [[3, "conv5"]]}, ARCH["cell"][1]]}
    with pytest.raises(StudentConfigError, match="node 2 takes input from node 3"):
        load_architecture(bad)
    with pytest.raises(StudentConfigError, match="unknown AdaBERT operation 'conv9'"):
        load_architecture({**ARCH, "cell": [{"node": 2, "inputs": [[0, "conv9"]]}, ARCH["cell"][1]]})
    with pytest.raises(StudentConfigError, match="architecture file not found"):
        load_architecture(tmp_path / "missing.json")


def test_padding_does_not_change_the_output() -> None:
    model = AdaBERTStudent(ARCH, num_labels=2, vocab_size=50).eval()
    ids = torch.randint(1, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        padded = model(ids, mask).logits[1]
        alone = model(ids[1:, :5], mask[1:, :5]).logits[0]
    torch.testing.assert_close(padded, alone)


def test_student_distils_exports_to_onnx_and_reloads(tmp_path: Path) -> None:
    from metakd.export import export_student
    from metakd.students import load_exported

    teacher = train_tiny_teacher(str(tmp_path / "teacher.ckpt"))
    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    path = tmp_path / "architecture.json"
    path.write_text(
        architecture_json({**ARCH, "embedding": {"source": "minilm-l6", "dim": 384, "freeze": True}})
    )
    spec = {"class_path": "adabert", "init_args": {"architecture": str(path)}}
    student = tiny_student(teacher, data, distillation="vanilla", student_config=None, student_model=spec)
    from metakd.backbones import pretrained_word_embeddings

    # the embeddings start as the teacher's WordPiece table and stay frozen
    torch.testing.assert_close(
        student.model.embeddings.weight[:100], pretrained_word_embeddings("minilm-l6")[:100]
    )
    frozen = student.model.embeddings.weight.detach().clone()
    before = student.model.classifier.weight.detach().clone()
    trainer = tiny_trainer(max_steps=3, enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(student, datamodule=data)
    assert not torch.equal(before, student.model.classifier.weight)
    assert torch.equal(frozen, student.model.embeddings.weight)
    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    report = export_student(ckpt, tmp_path / "exported", onnx=True)
    assert report.onnx_max_abs_diff <= 1e-4
    model, tokenizer, labels = load_exported(tmp_path / "exported")
    assert isinstance(model, AdaBERTStudent) and labels == data.label_names
    encoded = tokenizer(["a good book", "bad"], padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        expected = student(encoded["input_ids"], encoded["attention_mask"]).logits
        torch.testing.assert_close(model(encoded["input_ids"], encoded["attention_mask"]).logits, expected)


# -------------------------------------------------------------------------------- search from the CLI

WORDS = {"pos": "good great fine nice excellent wonderful", "neg": "bad awful poor boring terrible dull"}


def tiny_corpus(directory: Path) -> Path:
    rows = []
    for domain in ("books", "dvd"):
        for i in range(40):
            label = "pos" if i % 2 else "neg"
            words = " ".join(WORDS[label].split()[(i + k) % 6] for k in range(3))
            rows.append(json.dumps({"text": f"the {domain} story was {words} and long", "label": label,
                                    "domain": domain}))  # fmt: skip
    path = directory / "corpus.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_data(directory: Path, corpus: Path) -> dict:
    return {
        "class_path": "datamodules.JsonlDataModule",
        "init_args": {"train_file": str(corpus), "backbone": "minilm-l6", "max_length": 24, "batch_size": 8,
                      "cache_dir": str(directory / "cache")},
    }  # fmt: skip


OPERATIONS = ["conv3", "dilconv3", "maxpool3", "avgpool3", "identity", "zero"]
TINY_SEARCH = {"hidden_size": 8, "max_cells": 2, "nodes_per_cell": 2, "steps": 4, "warmup_steps": 1,
               "batch_size": 8, "operations": OPERATIONS}  # fmt: skip
ADABERT = "metakd.students.adabert.AdaBERTStudent"  # a dotted path: LightningCLI resolves class_path names


def test_tiny_search_from_the_cli_then_retrain_with_kd(tmp_path: Path) -> None:
    from datamodules import JsonlDataModule

    corpus = tiny_corpus(tmp_path)
    data = tiny_data(tmp_path, corpus)
    teacher = train_tiny_teacher(str(tmp_path / "teacher.ckpt"), JsonlDataModule(**data["init_args"]))
    config = {
        "teacher_ckpt": teacher,
        "data": {**data, "init_args": {**data["init_args"], "target_domain": "books"}},
        "search": {**TINY_SEARCH, "probes": True, "probe_steps": 3},
        "rosearch": {
            "enabled": True,
            "population": 2,
            "generations": 2,
            "candidate_steps": 2,
            "attack_examples": 3,
            "source": "embedding",
        },  # fmt: skip
        "out": str(tmp_path / "search"),
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    result = run_metakd("search", "--config", tmp_path / "search.yaml", "--search.steps", "5")
    assert "books:" in result.stdout and "cell(s)" in result.stdout
    architecture = load_architecture(tmp_path / "search" / "architecture.json")
    report = json.loads((tmp_path / "search" / "search.json").read_text())
    assert report["settings"]["steps"] == 5  # the command-line override
    split = report["split"]  # 20% of books' training reviews, stratified, never dev or test
    assert split["architecture"] == math.ceil(0.2 * (split["weight"] + split["architecture"])) > 0
    assert architecture["derived_from"]["target_domain"] == "books"
    assert {op for node in architecture["cell"] for _, op in node["inputs"]} <= set(
        TINY_SEARCH["operations"]
    ) - {"zero"}
    assert len(report["rosearch"]["candidates"]) >= 2 and len(report["probe_weights"]) == 2
    assert all(0 <= c["fitness"] <= 1 for c in report["rosearch"]["candidates"])
    assert len(report["edges"]) == 5 and math.isclose(
        sum(report["edges"][0]["probabilities"].values()), 1, abs_tol=1e-3
    )
    # the entropy of the operation distribution over the recorded steps, at most log |O| (uniform)
    entropy = report["entropy"]["op"]
    assert entropy["max"] == pytest.approx(math.log(len(OPERATIONS)))
    assert len(entropy["values"]) == len(report["history"]) and entropy["steps"][-1] == 4
    assert all(0 < value <= entropy["max"] + 1e-9 for value in [entropy["initial"], *entropy["values"]])
    assert architecture["derived_from"]["op_entropy"]["final"] == pytest.approx(entropy["final"], abs=1e-4)
    assert report["rosearch"]["trained"] == len(report["rosearch"]["candidates"])

    # retrain the derived architecture from scratch with KD: the ordinary Student, `vanilla`
    derived = tmp_path / "search" / "architecture.json"
    student = {
        "seed_everything": 1,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0,
                    "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "fit")},
        "model": {"class_path": "metakd.Student", "init_args": {
            "teacher_ckpt": teacher, "distillation": "vanilla",
            "student_model": {"class_path": ADABERT, "init_args": {"architecture": str(derived)}}}},
        "data": config["data"],
    }  # fmt: skip
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    run_metakd("fit", "--config", tmp_path / "student.yaml")
    saved = torch.load(tmp_path / "fit" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["metakd_student"]["student"]["init_args"]["architecture"]["cell"] == architecture["cell"]


def test_search_refuses_a_run_without_a_target_domain(tmp_path: Path) -> None:
    corpus = tiny_corpus(tmp_path)
    config = {
        "teacher_ckpt": "none.ckpt",
        "data": tiny_data(tmp_path, corpus),
        "search": TINY_SEARCH,
        "out": "x",
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    result = run_metakd("search", "--config", tmp_path / "search.yaml", check=False)
    assert result.returncode != 0 and "target_domain" in result.stderr


# -------------------------------------------------------------------------------------- pipeline


DOMAINS = ["books", "dvd"]


def test_pipeline_searches_per_domain_and_reports_robustness(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from test_pipeline import tiny_pipeline_config

    from metakd import pipeline

    config_path = tiny_pipeline_config(tmp_path)
    search_config = tmp_path / "search.yaml"
    search_config.write_text(yaml.safe_dump({"search": TINY_SEARCH}))
    config = yaml.safe_load(config_path.read_text())
    config.update(
        methods=["vanilla", "ada"],
        studies=["main"],
        variants={"ada": {"method": "vanilla", "teacher": "mixed", "label": "AdaBERT",
                          "search": str(search_config),
                          "model": {"student_config": None, "student_model": {"class_path": ADABERT}}}},
        robustness={"max_examples": 3, "max_fraction": 0.5, "source": "embedding"},
    )  # fmt: skip
    config_path.write_text(yaml.safe_dump(config))
    plan = [cell.name for cell in pipeline.plan_cells(pipeline.load_pipeline_config(config_path, quick=True))]
    assert plan.index("teacher/mixed") < plan.index("search/ada/books") < plan.index("student/ada/books")
    code = pipeline.main(["--config", str(config_path), "--quick", "--in-process"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((tmp_path / "results" / "tiny_quick.json").read_text())
    cell = json.loads(
        (tmp_path / "runs" / "tiny_quick" / "1" / "student" / "ada" / "books" / "result.json").read_text()
    )
    searched = tmp_path / "runs" / "tiny_quick" / "1" / "search" / "ada" / "books" / "architecture.json"
    arch_path = cell["config"]["model"]["init_args"]["student_model"]["init_args"]["architecture"]
    assert arch_path.startswith("@store/")  # the result file names no machine path
    assert Path(cellstore.fill_store(arch_path, tmp_path / "store")) == searched.resolve()
    assert set(summary["search"]) == {"1/search/ada/books", "1/search/ada/dvd"}
    for row in ("teacher_mixed", "student_vanilla", "student_ada"):
        for domain in ("books", "dvd"):
            entry = summary["robustness"][row][domain]
            assert entry["accuracy_under_attack"]["mean"] <= entry["clean_accuracy"]["mean"]
    markdown = (tmp_path / "results" / "tiny_quick.md").read_text()
    assert "## Robustness" in markdown and "## Searched architectures" in markdown

    # the side-by-side report: accuracy and robustness from the cells, size and throughput measured
    run_python(
        "benchmarks/students.py",
        "--config",
        config_path,
        "--quick",
        "--repeats",
        "1",
        "--seq",
        "12",
        "--batch",
        "2",
    )
    report = json.loads((tmp_path / "results" / "tiny_quick_students.json").read_text())
    assert set(report["entries"]) == {
        f"{row}/{d}" for row in ("teacher", "minilm_2l", "adabert") for d in DOMAINS
    }
    for entry in report["entries"].values():
        assert entry["examples_per_s"] > 0 and entry["parameters"] > 0 and entry["accuracy"] is not None
        assert entry["accuracy_under_attack"] <= entry["clean_accuracy"]
    assert isinstance(report["architectures_differ_across_domains"], bool)
    assert (
        "Architectures searched per domain" in (tmp_path / "results" / "tiny_quick_students.md").read_text()
    )


def test_shipped_search_configs_parse_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from helpers import REPO

    from metakd import pipeline
    from metakd.cli import main as cli_main
    from metakd.search.command import build_parser

    for name in ("adabert.yaml", "adabert_quick.yaml", "rosearch.yaml", "rosearch_quick.yaml"):
        path = REPO / "configs" / "amazon" / "search" / name
        parsed = build_parser().parse_args(["--config", str(path), "--teacher_ckpt", "t.ckpt", "--out", "o"])
        assert parsed.data.init_args.max_length == 64
        if name.startswith("adabert"):  # as published: probes and the ten operations
            assert parsed.search.hard and parsed.search.probes and len(parsed.search.operations) == 10
        else:  # RoSearch as a search: population 10 x 5 generations (the quick one smaller)
            assert parsed.rosearch.enabled and parsed.rosearch.initial == "random"
            assert (parsed.rosearch.population, parsed.rosearch.generations) >= (
                (10, 5) if name == "rosearch.yaml" else (1, 1)
            )
    for quick in (False, True):
        config = pipeline.load_pipeline_config(
            REPO / "configs" / "amazon" / "benchmark_search.yaml", quick=quick
        )
        config["runs_dir"] = str(tmp_path)
        cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
        assert len(config["domains"]) >= 2
        assert {f"search/{row}/{d}" for d in config["domains"] for row in ("adabert", "rosearch")} <= set(
            cells
        )
        domain = config["domains"][-1]
        search = pipeline.cell_config(config, 42, cells[f"search/adabert/{domain}"])
        assert search["data"]["init_args"]["target_domain"] == domain and search["search"]["steps"] == (
            40 if quick else 400
        )
        student = pipeline.cell_config(config, 42, cells[f"student/adabert/{domain}"])
        path = tmp_path / "student.yaml"
        path.write_text(yaml.safe_dump(student))
        with pytest.raises(SystemExit) as exit_:
            cli_main(["fit", "--config", str(path), "--print_config"])
        assert exit_.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["student_model"]["init_args"]["architecture"] == str(
            pipeline.store_path(config, 42, f"search/adabert/{domain}") / "architecture.json"
        )
