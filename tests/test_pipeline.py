"""The benchmark pipeline (``python -m metakd pipeline``) in its quick modes, with tiny models on a tiny
JSONL corpus: the results JSON and Markdown hold every row and column, and a second invocation skips
every finished cell (the speed benchmark: tests/test_speed.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_metakd, tiny_encoder_config, tiny_student_config

from metakd import pipeline
from metakd.pipeline import cellstore

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "boring"]}
DOMAINS = ["books", "dvd"]
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 2,
    "limit_train_batches": 1,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


def tiny_pipeline_config(directory: Path) -> Path:
    files = {}
    for split, count in (("train", 24), ("val", 6), ("test", 6)):
        lines = []
        for domain in [*DOMAINS, "music"]:  # a third corpus domain: the zero-shot teacher needs two
            for i in range(count):
                label = "pos" if i % 2 else "neg"
                words = " ".join(WORDS[label][(i + k) % 4] for k in range(3))
                lines.append(
                    json.dumps({"text": f"the {domain} is {words}", "label": label, "domain": domain})
                )
        files[f"{split}_file"] = str(directory / f"{split}.jsonl")
        Path(files[f"{split}_file"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {
        "class_path": "datamodules.JsonlDataModule",
        "init_args": {
            **files,
            "backbone": "minilm-l6",
            "max_length": 16,
            "batch_size": 8,
            "cache_dir": str(directory / "cache"),
        },
    }
    config = {
        "corpus": "tiny",
        "name": "tiny",
        "domains": DOMAINS,
        "seeds": [1],
        "studies": ["main", "scarcity", "zero_shot"],
        "runs_dir": str(directory / "runs"),
        "results_dir": str(directory / "results"),
        "scarcity": {"domain": "books", "methods": ["meta"], "fractions": [0.5, 1.0]},
        "zero_shot": {"domain": "books", "teacher_domain": "dvd", "all_domains": [*DOMAINS, "music"]},
        "teacher": {
            "trainer": {**TRAINER, "max_epochs": 3},
            "model": {
                "class_path": "metakd.MetaTeacher",
                "init_args": {
                    "backbone": "minilm-l6",
                    "encoder_config": tiny_encoder_config(),
                    "transferability_cache": False,
                },
            },
            "data": data,
        },
        "student": {
            "trainer": {**TRAINER, "max_epochs": 3},
            "model": {
                "class_path": "metakd.Student",
                "init_args": {
                    "student_backbone": "minilm-l6",
                    "student_config": tiny_student_config(),
                    "intermediate_epochs": 1,
                },
            },
            "data": data,
        },
        "quick": {"teacher": {"trainer": {"max_epochs": 1}}, "student": {"trainer": {"max_epochs": 2}}},
    }
    path = directory / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_plan_covers_every_row_and_study(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path), quick=True)
    assert config["name"] == "tiny_quick"
    assert config["teacher"]["trainer"]["max_epochs"] == 1  # the quick budget is merged
    names = [cell.name for cell in pipeline.plan_cells(config)]
    assert len(names) == len(set(names))
    for domain in DOMAINS:
        for method in ("none", "vanilla", "tinybert", "meta"):
            assert f"student/{method}/{domain}" in names
        assert f"teacher/single/{domain}" in names
    assert {"teacher/mixed", "teacher/meta", "teacher/meta_without_books"} <= set(names)
    assert {"student/meta_50pct/books", "student/meta_zeroshot/books"} <= set(names)
    # teachers come before the students that need them
    assert max(names.index(n) for n in names if n.startswith("teacher/")) < min(
        names.index(n) for n in names if n.startswith("student/")
    )
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    full = pipeline.cell_config(config, 1, cells["student/tinybert/dvd"])
    teacher_key = pipeline.cell_key(config, 1, "teacher/single/dvd")
    assert full["model"]["init_args"]["teacher_ckpt"] == str(
        tmp_path / "store" / teacher_key / "checkpoints/best.ckpt"
    )
    assert full["data"]["init_args"]["target_domain"] == "dvd"
    assert (
        pipeline.cell_config(config, 1, cells["student/none/dvd"])["model"]["init_args"]["teacher_ckpt"]
        is None
    )
    teacher = pipeline.cell_config(config, 1, cells["teacher/mixed"])["model"]["init_args"]
    assert teacher["weighting"] == "none" and teacher["domain_loss"] == "none"


def test_methods_restrict_the_main_study_to_their_teachers_and_rows(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path), quick=True)
    config["studies"], config["methods"] = ["main"], ["meta"]
    names = [cell.name for cell in pipeline.plan_cells(config)]
    assert names == ["teacher/meta", "student/meta/books", "student/meta/dvd"]
    assert list(pipeline.collect(config)["main"]) == ["teacher_meta", "student_meta"]
    config["methods"] = ["none", "tinybert"]
    names = [cell.name for cell in pipeline.plan_cells(config)]
    assert names == ["teacher/single/books", "teacher/single/dvd"] + [
        f"student/{m}/{d}" for m in ("none", "tinybert") for d in DOMAINS
    ]
    for bad in ([], ["meta", "meta"]):
        config["methods"] = bad
        with pytest.raises(pipeline.PipelineError, match="`methods` must be a non-empty list"):
            pipeline.check_choices("bench.yaml", config)
    config["methods"] = ["meta", "tinybret"]
    with pytest.raises(pipeline.PipelineError, match="unknown method 'tinybret'.*did you mean 'tinybert'"):
        pipeline.check_choices("bench.yaml", config)


def test_variants_are_rows_of_a_method_with_their_own_teacher_overrides_and_label(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path), quick=True)
    config["studies"], config["methods"] = ["main"], ["none", "hot_kd"]
    config["variants"] = {
        "hot_kd": {
            "method": "vanilla",
            "teacher": "meta",
            "label": "vanilla KD at T=4",
            "model": {"temperature": 4.0},
            "data": {"batch_size": 4},
        },  # fmt: skip
    }
    pipeline.check_choices("bench.yaml", config)
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    assert list(cells) == ["teacher/meta"] + [f"student/{m}/{d}" for m in ("none", "hot_kd") for d in DOMAINS]
    assert cells["student/hot_kd/books"].needs == ["teacher/meta"]
    full = pipeline.cell_config(config, 1, cells["student/hot_kd/books"])
    assert full["model"]["init_args"]["distillation"] == "vanilla"
    assert full["model"]["init_args"]["temperature"] == 4.0
    assert full["model"]["init_args"]["teacher_ckpt"] == str(
        pipeline.best_checkpoint(config, 1, "teacher/meta")
    )
    assert (
        full["data"]["init_args"]["batch_size"] == 4 and full["data"]["init_args"]["target_domain"] == "books"
    )
    assert pipeline.main_rows(config["methods"], config["variants"]) == [
        ("teacher_meta", "Teacher: meta-teacher"),
        ("student_none", "Student: fine-tune, no KD"),
        ("student_hot_kd", "Student: vanilla KD at T=4 (meta-teacher)"),
    ]
    for bad, message in (
        ({"hot_kd": {"label": "no method"}}, "must be a mapping with `method`"),
        ({"hot_kd": {"method": "vanilla", "teacher": "oracle"}}, "teacher must be one of"),
        ({"hot_kd": {"method": "vanilla", "lr": 1}}, r"unknown keys \['lr'\]"),
        ({"meta": {"method": "vanilla"}}, "the name of a registry method"),
    ):
        config["variants"] = bad
        with pytest.raises(pipeline.PipelineError, match=message):
            pipeline.check_choices("bench.yaml", config)


DOMAINS4 = ("books", "dvd", "electronics", "kitchen")


def test_main_job_is_a_meta_teacher_and_three_textcnn_students_per_domain() -> None:
    """`make run`: the built-in budget on Amazon; a meta-teacher, then per domain three TextCNN students of
    the same size and steps: no KD, no KD + the Meta-KD transfer set, Meta-KD (logits, w_i) + that set."""
    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "main_job.yaml")
    assert config["methods"] == ["textcnn_none", "textcnn_none_transfer", "textcnn_metakd"]
    assert config["seeds"] == [1] and config["test_sets"] == ["test", "test_large"]
    assert config["teacher"]["trainer"]["max_steps"] == 150
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    rows = ("textcnn_none", "textcnn_none_transfer", "textcnn_metakd")
    assert set(cells) == {"teacher/meta"} | {f"student/{m}/{d}" for m in rows for d in DOMAINS4}
    built = {m: pipeline.cell_config(config, 1, cells[f"student/{m}/books"]) for m in rows}
    for m in rows:  # the same student, steps and batch
        assert (
            built[m]["model"]["init_args"]["student_model"]
            == built["textcnn_none"]["model"]["init_args"]["student_model"]
        )
        assert built[m]["trainer"]["max_steps"] == 300 and built[m]["data"]["init_args"]["batch_size"] == 32
    assert "augment" not in built["textcnn_none"]["data"]["init_args"]
    for m in ("textcnn_none_transfer", "textcnn_metakd"):
        augment = built[m]["data"]["init_args"]["augment"]
        assert augment["class_path"] == "metakd_transfer" and augment["init_args"]["teacher_ckpt"].endswith(
            "best.ckpt"
        )
    assert built["textcnn_metakd"]["model"]["init_args"]["distillation"] == "meta_logit"


def test_main_job_runs_end_to_end_in_quick_mode(tmp_path: Path) -> None:
    """The real command `python -m metakd pipeline --config configs/amazon/main_job.yaml --quick`: every
    model trained and tested, the report with the showcase (throughput, the best student exported and
    answering the config's raw text), progress lines labelled by cell; a second call reuses everything."""
    args = ["pipeline", "--config", REPO / "configs" / "amazon" / "main_job.yaml", "--quick"]
    args += [
        "--runs-dir",
        tmp_path / "runs",
        "--store-dir",
        tmp_path / "store",
        "--results-dir",
        tmp_path / "r",
    ]
    result = run_metakd(*args, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "1/teacher/meta: Epoch" in output and "1/student/textcnn_metakd/books: Epoch" in output
    assert "Meta-KD transfer set" in output and "\r" not in output  # occasional lines off a terminal
    markdown = (tmp_path / "r" / "main_job_quick.md").read_text(encoding="utf-8")
    for label in ("TextCNN, no KD", "TextCNN, no KD + the Meta-KD transfer set", "TextCNN, Meta-KD"):
        assert f"| Student: {label}" in markdown, label
    assert "## Speed, and where the best student lands" in markdown and "**Best student**" in markdown
    assert "The battery died after two days" in markdown  # the exported student answered the raw text
    summary = json.loads((tmp_path / "r" / "main_job_quick.json").read_text(encoding="utf-8"))
    show = summary["showcase"]
    assert f"**{show['prediction']['label']}** (p = " in markdown
    assert all(row["examples_per_s"] for row in show["rows"].values())
    assert Path(show["export"]["out"]).is_dir() and any(Path(show["export"]["out"]).iterdir())
    again = run_metakd(*args, timeout=300)
    lines = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert again.returncode == 0 and len(lines) == 7 and all(" skipped " in line for line in lines)
    assert (tmp_path / "r" / "main_job_quick.md").read_text(encoding="utf-8") == markdown  # digit for digit


def test_main_job_40steps_config_is_the_meta_kd_slice_of_the_pipeline() -> None:
    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "main_job_40steps.yaml")
    assert config["in_process"] and config["methods"] == ["meta"] and config["name"] == "amazon_main"
    assert config["domains"] == ["books", "dvd", "electronics", "kitchen"]
    names = [cell.name for cell in pipeline.plan_cells(config)]
    assert names == ["teacher/meta"] + [f"student/meta/{d}" for d in config["domains"]]
    assert config["teacher"]["trainer"]["limit_train_batches"] == 40  # its own budget, merged
    assert config["student"]["trainer"]["limit_train_batches"] == 60
    assert config["student"]["model"]["init_args"]["student_layers"] == [0, 5]  # the rest inherited
    # `apply_quick` in a file that extends another applies the parent's `quick:` section
    quick = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "benchmark_quick.yaml")
    full = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "benchmark.yaml", quick=True)
    assert quick == full and quick["name"] == "amazon_quick"
    assert quick["student"]["trainer"]["limit_train_batches"] == 8


def test_several_seeds_are_reported_as_mean_and_std(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path))
    config["studies"], config["methods"], config["seeds"] = ["main"], ["meta"], [1, 2]
    accuracy = {  # (seed, cell) -> test metrics
        (1, "teacher/meta"): {"test/acc": 0.8, "test/acc_books": 0.7, "test/acc_dvd": 0.9},
        (2, "teacher/meta"): {"test/acc": 0.8, "test/acc_books": 0.9, "test/acc_dvd": 0.7},
        (1, "student/meta/books"): {"test/acc": 0.60},
        (2, "student/meta/books"): {"test/acc": 0.64},
        (1, "student/meta/dvd"): {"test/acc": 0.70},
        (2, "student/meta/dvd"): {"test/acc": 0.80},
    }
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    for (seed, name), metrics in accuracy.items():
        cell = cells[name]
        cellstore.write_result_file(
            pipeline.results_store(config),
            pipeline.cell_key(config, seed, name),
            {
                "cell": name,
                "kind": cell.kind,
                "seed": seed,
                "info": cell.info,
                "metrics": metrics,
                "seconds": 1.0,
            },
        )
    _, md_path = pipeline.write_results(config)
    student = json.loads((tmp_path / "results" / "tiny.json").read_text())["main"]["student_meta"]
    assert student["books"]["mean"] == pytest.approx(0.62) and student["books"]["std"] == pytest.approx(
        0.0283, abs=1e-4
    )
    # average per seed first (0.65, 0.72), then mean and sample std over seeds
    assert student["average"]["values"] == pytest.approx([0.65, 0.72])
    assert student["average"]["std"] == pytest.approx(0.0495, abs=1e-4)
    markdown = md_path.read_text()
    assert "seeds [1, 2] (mean ± std over seeds" in markdown
    assert "| Student: Meta-KD (meta-teacher) | 62.0 ± 2.8 | 75.0 ± 7.1 | 68.5 ± 4.9 |" in markdown
    assert "| Teacher: meta-teacher | 80.0 ± 14.1 | 80.0 ± 14.1 | 80.0 ± 0.0 |" in markdown


def test_in_process_output_goes_to_the_cell_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    log = tmp_path / "fit.log"
    with pipeline.output_to(log):
        print("from print")
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        sys.stderr.write("from sys.stderr\n")
    print("progress line")
    text = log.read_text()
    for line in ("from print", "from fd 1", "from fd 2", "from sys.stderr"):
        assert line in text
    captured = capfd.readouterr()
    assert "progress line" in captured.out
    assert "from" not in captured.out + captured.err


def test_quick_pipeline_writes_results_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_path = tiny_pipeline_config(tmp_path)
    # (zero_shot is planned but not run here: with a random tiny encoder the student cannot recompute t_i
    # for a split the teacher did not see; the real backbone can.)
    code = pipeline.main(
        ["--config", str(config_path), "--quick", "--in-process", "--studies", "main", "scarcity"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert " done " in out and "failed" not in out.split("cells:")[0]
    summary = json.loads((tmp_path / "results" / "tiny_quick.json").read_text())
    markdown = (tmp_path / "results" / "tiny_quick.md").read_text()
    rows = pipeline.main_rows(list(pipeline.DEFAULT_METHODS))
    assert rows == [  # read from the method registry; the labels of the committed tables
        ("teacher_single", "Teacher: single-domain"),
        ("teacher_mixed", "Teacher: mixed-domain"),
        ("teacher_meta", "Teacher: meta-teacher"),
        ("student_none", "Student: fine-tune, no KD"),
        ("student_vanilla", "Student: vanilla KD (mixed teacher)"),
        ("student_tinybert", "Student: TinyBERT-KD (single-domain teacher)"),
        ("student_meta", "Student: Meta-KD (meta-teacher)"),
    ]
    for key, label in rows:
        row = summary["main"][key]
        assert all(row[d]["mean"] is not None for d in DOMAINS), key
        assert row["average"]["mean"] is not None
        assert label in markdown
    assert "| method | books | dvd | average |" in markdown and "Budget" in markdown
    assert summary["scarcity"]["points"]["books"]["meta"]["0.5"]["mean"] is not None
    assert summary["versions"]["torch"] and summary["cell_configs"]
    assert summary["cells"] and all(summary["cells"].values())
    assert "| Student: Meta-KD (meta-teacher) |" in out  # the report is printed at the end

    # Resumable: a second run (the real command, in a subprocess) skips every finished cell.
    result = run_metakd(
        "pipeline", "--config", config_path, "--quick", "--studies", "main", "scarcity", timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert lines and len(lines) == len(summary["cells"]) and all(" skipped " in line for line in lines)

    # A finished cell is reused only for the config it ran with, never reported under a changed one: a
    # changed config is another cell (another key), with no result yet.
    config = pipeline.load_pipeline_config(config_path, quick=True)
    changed = pipeline.load_pipeline_config(config_path, quick=True)
    changed["student"]["trainer"]["max_epochs"] = 7
    cell = next(c for c in pipeline.plan_cells(changed) if c.kind == "student")
    assert pipeline.cell_key(changed, 1, cell) != pipeline.cell_key(config, 1, cell)
    assert pipeline.read_result(changed, 1, cell.name) is None
    assert pipeline.read_result(config, 1, cell.name) is not None
    teacher = next(c for c in pipeline.plan_cells(changed) if c.kind == "teacher")
    assert pipeline.cell_key(changed, 1, teacher) == pipeline.cell_key(config, 1, teacher)  # unchanged


@pytest.mark.parametrize(("name", "quick"), [("amazon/benchmark.yaml", True), ("mnli/benchmark.yaml", False)])
def test_shipped_pipeline_configs_resolve_in_the_cli(
    name: str, quick: bool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Each kind of cell of the shipped presets (every study) is a config LightningCLI accepts."""
    from metakd.cli import main as cli_main

    config = pipeline.load_pipeline_config(REPO / "configs" / name, quick=quick)
    config["studies"], config["runs_dir"] = ["main", "scarcity", "zero_shot"], str(tmp_path)
    kinds: dict[tuple, pipeline.Cell] = {}
    for cell in pipeline.plan_cells(config):
        kinds.setdefault((cell.kind, cell.info.get("study")), cell)
    assert len(kinds) == 5  # teacher and student of the main study, scarcity student, zero-shot pair
    for cell in kinds.values():
        path = tmp_path / f"{cell.name.replace('/', '_')}.yaml"
        path.write_text(yaml.safe_dump(pipeline.cell_config(config, 1, cell)), encoding="utf-8")
        with pytest.raises(SystemExit) as exit_:
            cli_main(["fit", "--config", str(path), "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert exit_.value.code in (0, None), cell.name
        assert config["corpus"] in printed["data"]["class_path"].lower(), cell.name
        expected = "metakd.MetaTeacher" if cell.kind == "teacher" else "metakd.Student"
        assert printed["model"]["class_path"] == expected, cell.name
        if cell.kind == "student":
            assert printed["data"]["init_args"]["target_domain"] == cell.info["domain"], cell.name
            assert printed["trainer"]["max_epochs"] == config["student"]["trainer"]["max_epochs"]


@pytest.mark.usefixtures("one_ray_at_a_time")
def test_ray_workers_give_the_sequential_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A local Ray instance with 2 workers runs the cells (students after their teacher) with the same
    results as the sequential run; a failing cell is run twice, then recorded, and the rest go on."""
    pytest.importorskip("ray", reason="Ray is the optional extra metakd[ray] (scripts/setup.sh installs it)")
    from metakd.pipeline import ray_runner

    config_path = tiny_pipeline_config(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["variants"] = {
        "broken": {"method": "vanilla", "teacher": "meta", "model": {"distillation_options": {"no_such": 1}}}
    }
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    common = ["--config", str(config_path), "--quick", "--in-process", "--studies", "main"]
    assert pipeline.main([*common, "--methods", "meta"]) == 0
    capsys.readouterr()
    ray_runs = tmp_path / "ray_runs"
    code = pipeline.main(
        [*common, "--methods", "meta", "broken", "--workers", "2", "--runs-dir", str(ray_runs),
         "--store-dir", str(tmp_path / "ray_store"), "--results-store", str(tmp_path / "ray_results")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out  # the broken cells failed
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 5
    order = [line.split()[3] for line in lines]
    assert order.index("teacher/meta") < min(order.index(f"student/meta/{d}") for d in DOMAINS)
    for domain in DOMAINS:
        sequential = json.loads(
            (tmp_path / "runs" / "tiny_quick" / "1" / f"student/meta/{domain}/result.json").read_text()
        )
        parallel = json.loads(
            (ray_runs / "tiny_quick" / "1" / f"student/meta/{domain}/result.json").read_text()
        )
        assert parallel["metrics"] == sequential["metrics"]
        assert parallel["key"] == sequential["key"] and parallel["config"] == sequential["config"]
        broken = ray_runs / "tiny_quick" / "1" / f"student/broken/{domain}"
        failure = json.loads((broken / ray_runner.FAILURE_FILE).read_text())
        assert failure["attempts"] == 2 and "fit failed" in failure["messages"][0]
        assert "no_such" in (broken / "fit.log").read_text()
        assert not (broken / pipeline.RESULT_FILE).exists()
    assert sum(" failed " in line and "after 2 attempts" in line for line in lines) == 2
    teacher = "teacher/meta/result.json"
    assert (
        json.loads((ray_runs / "tiny_quick" / "1" / teacher).read_text())["metrics"]
        == json.loads((tmp_path / "runs" / "tiny_quick" / "1" / teacher).read_text())["metrics"]
    )


def test_each_ray_cell_asks_for_its_cpus_or_gpus(tmp_path: Path) -> None:
    from metakd.pipeline.ray_runner import cell_resources

    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path), quick=True)
    config["studies"], config["methods"] = ["main"], ["meta"]
    teacher, student, _ = pipeline.plan_cells(config)
    assert cell_resources(config, 1, teacher) == {"num_cpus": 1.0, "num_gpus": 0.0}
    config["cell_cpus"] = 2
    config["student"]["trainer"].update(accelerator="gpu", devices=[0, 1])
    assert cell_resources(config, 1, student) == {"num_cpus": 2.0, "num_gpus": 2.0}
    assert cell_resources(config, 1, teacher) == {"num_cpus": 2.0, "num_gpus": 0.0}
    config["student"]["trainer"]["devices"] = "auto"
    with pytest.raises(
        pipeline.PipelineError, match="student/meta/books: on Ray a GPU cell needs trainer.devices"
    ):
        cell_resources(config, 1, student)
    config["cell_cpus"] = 0
    with pytest.raises(pipeline.PipelineError, match="`cell_cpus` must be a positive number"):
        cell_resources(config, 1, teacher)
    with pytest.raises(
        pipeline.PipelineError, match=r"`workers` \(--workers\) must be a whole number >= 1, got 0"
    ):
        pipeline.main(["--config", str(tmp_path / "benchmark.yaml"), "--workers", "0"])
