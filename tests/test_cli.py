"""The real command line, end to end, in subprocesses: a tiny meta-teacher `fit` and `test --ckpt_path
best`, one teacher checkpoint serving a student per domain, `export`, and a prediction through
``transformers.pipeline`` from the exported directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import (
    REPO,
    run_metakd,
    stderr_lines,
    tiny_encoder_config,
    tiny_student_config,
    write_tiny_corpus,
)

TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 2,
    "limit_train_batches": 3,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny 2-domain corpus (labels given as names, label set inferred) and tiny configs."""
    directory = tmp_path_factory.mktemp("cli")
    write_tiny_corpus(directory / "corpus.jsonl", per_domain=40)
    data = {
        "class_path": "datamodules.JsonlDataModule",
        "init_args": {
            "train_file": str(directory / "corpus.jsonl"),
            "backbone": "minilm-l6",
            "max_length": 24,
            "batch_size": 8,
            "cache_dir": str(directory / "cache"),
        },
    }
    teacher = {
        "seed_everything": 1,
        "trainer": {**TRAINER, "default_root_dir": str(directory / "teacher")},
        "model": {
            "class_path": "metakd.MetaTeacher",
            "init_args": {
                "backbone": "minilm-l6",
                "encoder_config": tiny_encoder_config(),
                "transferability_cache": False,
                "learning_rate": 1e-3,
            },
        },
        "data": data,
    }
    student = {
        "seed_everything": 1,
        "trainer": {**TRAINER, "default_root_dir": str(directory / "student")},
        "model": {
            "class_path": "metakd.Student",
            "init_args": {
                "teacher_ckpt": str(directory / "teacher" / "checkpoints" / "best.ckpt"),
                "student_backbone": "minilm-l6",
                "student_config": tiny_student_config(),
                "distillation": "meta",
                "stage": "both",
                "intermediate_epochs": 1,
            },
        },
        "data": {**data, "init_args": {**data["init_args"], "target_domain": "books"}},
    }
    (directory / "teacher.yaml").write_text(yaml.safe_dump(teacher), encoding="utf-8")
    (directory / "student.yaml").write_text(yaml.safe_dump(student), encoding="utf-8")
    return directory


def test_print_config_resolves_the_shipped_configs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shipped experiment config resolves: the first through the real command (a subprocess), the
    others through the same entry point in this process (``metakd.cli.main``; ``--print_config`` exits 0)."""
    from metakd.cli import main as cli_main

    def is_pipeline_config(path: Path) -> bool:  # read by `metakd pipeline`, not LightningCLI
        return "model" not in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})

    configs = sorted(
        p for p in (REPO / "configs").glob("*/*.yaml")
        if p.parent.name != "loggers" and not is_pipeline_config(p)
    )  # fmt: skip
    expected = {
        f"{c}/meta_{m}{q}.yaml"
        for c in ("amazon", "mnli")
        for m in ("teacher", "distill")
        for q in ("", "_quick")
    }
    assert expected <= {f"{p.parent.name}/{p.name}" for p in configs}  # and every other experiment config
    for index, config in enumerate(configs):
        if index == 0:
            result = run_metakd("fit", "--config", str(config), "--print_config", cwd=REPO)
            printed = yaml.safe_load(result.stdout)
        else:
            with pytest.raises(SystemExit) as exit_:
                cli_main(["fit", "--config", str(config), "--print_config"])
            assert exit_.value.code in (0, None), (config, capsys.readouterr().err[-3000:])
            printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] in ("metakd.MetaTeacher", "metakd.Student"), config
        assert printed["data"]["init_args"]["backbone"] == "minilm-l6", config


def test_teacher_student_export_round_trip(workdir: Path) -> None:
    # Teacher: fit writes checkpoints, the resolved config and the stable best.ckpt.
    run_metakd("fit", "--config", str(workdir / "teacher.yaml"), cwd=workdir)
    checkpoints = workdir / "teacher" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and (checkpoints / "best.ckpt").is_file()
    saved = list((workdir / "teacher").rglob("config.yaml"))
    assert saved, "LightningCLI wrote no config.yaml"
    assert yaml.safe_load(saved[0].read_text())["model"]["class_path"] == "metakd.MetaTeacher"

    # A separate `test` process finds "best" and reports per-domain accuracy.
    result = run_metakd("test", "--config", str(workdir / "teacher.yaml"), "--ckpt_path", "best", cwd=workdir)
    assert "test/acc_books" in result.stdout and "test/acc_dvd" in result.stdout

    # The same teacher checkpoint serves a student per domain; the domain comes from the data.
    run_metakd("fit", "--config", str(workdir / "student.yaml"), cwd=workdir)
    for domain in ("dvd",):
        run_metakd(
            "fit",
            "--config",
            str(workdir / "student.yaml"),
            "--data.init_args.target_domain",
            domain,
            "--trainer.default_root_dir",
            str(workdir / f"student_{domain}"),
            "--trainer.max_epochs",
            "1",
            "--model.init_args.stage",
            "prediction",
            cwd=workdir,
        )
        assert (workdir / f"student_{domain}" / "checkpoints" / "best.ckpt").is_file()
    student_ckpt = workdir / "student" / "checkpoints" / "best.ckpt"
    result = run_metakd("test", "--config", str(workdir / "student.yaml"), "--ckpt_path", "best", cwd=workdir)
    assert "test/acc" in result.stdout and "test/acc_books" in result.stdout  # the teacher's metric names

    # Export: a plain HF directory that transformers.pipeline loads, with the data's label names.
    out = workdir / "export"
    run_metakd("export", "--ckpt", str(student_ckpt), "--out", str(out), cwd=workdir)
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out))
    predictions = classify(["the books is good great fine", "the books is bad awful poor"])
    assert {p["label"] for p in predictions} <= {"neg", "pos"}


def test_model_and_data_target_domain_must_agree(workdir: Path) -> None:
    result = run_metakd(
        "fit",
        "--config",
        str(workdir / "student.yaml"),
        "--model.init_args.target_domain",
        "dvd",
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert stderr_lines(result)[-1].startswith(
        "error: model.init_args.target_domain is 'dvd' but data.init_args.target_domain is 'books'"
    )


def test_best_without_a_fit_names_the_missing_checkpoint(tmp_path: Path, workdir: Path) -> None:
    config = yaml.safe_load((workdir / "teacher.yaml").read_text())
    config["trainer"]["default_root_dir"] = str(tmp_path / "never_fitted")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_metakd(
        "test", "--config", str(tmp_path / "t.yaml"), "--ckpt_path", "best", cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = stderr_lines(result)[-1]
    assert last.startswith('error: ckpt_path "best": no ') and "last.ckpt from an earlier `fit`" in last
