"""Bad CLI / config values through the command line, in-process: each run stops before any training with
exit status 2 and ``error: <message>`` as the last line of stderr, the message naming the key or file and
what was expected.

``metakd.cli.main([...])`` runs the same error boundary as ``python -m metakd``; tests/test_cli_errors.py
runs the real command as a subprocess for every row of docs/FAULTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import write_tiny_fit_setup

from metakd.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-domain corpus, a MetaTeacher config on it, and a truncated checkpoint file."""
    return write_tiny_fit_setup(tmp_path_factory.mktemp("faults"))


def cli_error(
    workdir: Path, capsys: pytest.CaptureFixture[str], *args: str, config: str = "tiny.yaml"
) -> list[str]:
    """Run ``fit --config CONFIG *args``; expect exit status 2 before any training; return the last two
    lines of stderr (the line before ``error: ...``, or "", and the ``error:`` line)."""
    assert main(["fit", "--config", str(workdir / config), *args]) == 2
    assert not (workdir / "run" / "checkpoints").exists()  # nothing was trained
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines[-5:]
    return ["", *lines][-2:]


def test_unknown_config_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = cli_error(workdir, capsys, "--model.init_args.learning_rat", "0.1")
    assert error == (
        "error: model.init_args.learning_rat: no such option of metakd.MetaTeacher; "
        "did you mean 'learning_rate'?"
    )
    _, error = cli_error(workdir, capsys, "--bogus", "1")
    assert error == "error: unrecognized arguments: --bogus 1"


def test_unknown_key_in_config_file(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((workdir / "tiny.yaml").read_text(encoding="utf-8"))
    config["model"]["init_args"]["learning_rat"] = 0.1
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _, error = cli_error(workdir, capsys, config="bad.yaml")
    assert error.startswith("error: model.init_args.learning_rat: no such option of metakd.MetaTeacher")


def test_wrong_type(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = cli_error(workdir, capsys, "--data.init_args.batch_size", "abc")
    assert error == "error: data.init_args.batch_size: expected int, got 'abc'"


def test_bad_enum_value(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = cli_error(workdir, capsys, "--model.init_args.weighting", "sometimes")
    assert error == (
        "error: model.init_args.weighting: 'sometimes' is not one of ['prototype', 'meta', 'prototype+meta', "
        "'none']"  # nothing close enough to suggest
    )
    _, error = cli_error(workdir, capsys, "--model.init_args.domain_loss", "revrsal")
    assert error.endswith("is not one of ['corruption', 'reversal', 'none']; did you mean 'reversal'?")


def test_misspelt_class_path(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = cli_error(workdir, capsys, "--model.class_path", "metakd.MetaTeachr")
    assert error == (
        "error: model.class_path 'metakd.MetaTeachr': module 'metakd' has no attribute 'MetaTeachr'; "
        "did you mean 'metakd.MetaTeacher'?"
    )


def test_loader_option_names_its_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where, error = cli_error(workdir, capsys, "--data.init_args.batch_size", "0")
    assert error == "error: batch_size must be a positive integer, got 0"
    assert where == "config key: data.init_args.batch_size (datamodules.JsonlDataModule)"


def test_unknown_target_domain(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where, error = cli_error(workdir, capsys, "--data.init_args.target_domain", "toys")
    assert error == "error: jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']"
    assert where == "config key: data.init_args.target_domain (datamodules.JsonlDataModule)"


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.5"])
def test_train_fraction_outside_unit_interval(
    workdir: Path, capsys: pytest.CaptureFixture[str], fraction: str
) -> None:
    where, error = cli_error(workdir, capsys, "--data.init_args.train_fraction", fraction)
    assert error == f"error: train_fraction must be in (0, 1], got {float(fraction)!r}"
    assert where == "config key: data.init_args.train_fraction (datamodules.JsonlDataModule)"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("learning_rate", "-0.1", "model.init_args.learning_rate must be >= 0, got -0.1"),
        ("domain_loss_weight", "-1", "model.init_args.domain_loss_weight must be >= 0, got -1.0"),
        ("warmup_ratio", "1.5", "model.init_args.warmup_ratio must be in [0, 1], got 1.5"),
        ("meta_every_n_steps", "0", "model.init_args.meta_every_n_steps must be an integer >= 1, got 0"),
        ("gradient_clip_norm", "0", "model.init_args.gradient_clip_norm must be > 0, got 0.0"),
    ],
)
def test_numeric_teacher_options_are_checked_at_construction(
    workdir: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    where, error = cli_error(workdir, capsys, f"--model.init_args.{option}", value)
    assert error == f"error: {message}" and not where.startswith("config key:")


def test_truncated_ckpt_path_for_fit(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "truncated.ckpt"
    _, error = cli_error(workdir, capsys, "--ckpt_path", str(path))
    assert error.startswith(
        f"error: '{path}' is not a torch checkpoint (truncated, or another kind of file); expected a "
        "MetaTeacher checkpoint"
    )


def student_args(teacher_ckpt: str) -> list[str]:
    return [
        "--model.class_path", "metakd.Student",
        "--model.init_args.teacher_ckpt", teacher_ckpt,
        "--model.init_args.student_config", json.dumps({"hidden_size": 16, "num_hidden_layers": 1,
                                                        "num_attention_heads": 2, "intermediate_size": 20}),
    ]  # fmt: skip


def test_missing_teacher_ckpt_for_student(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(workdir / "no_such_teacher.ckpt")
    _, error = cli_error(workdir, capsys, *student_args(missing))
    assert error.startswith(f"error: teacher checkpoint not found: '{missing}'")
    assert "model.teacher_ckpt must name a MetaTeacher .ckpt" in error


def test_truncated_teacher_ckpt_for_student(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(workdir / "truncated.ckpt")
    _, error = cli_error(workdir, capsys, *student_args(path))
    assert error.startswith(f"error: cannot load the teacher checkpoint '{path}' as a MetaTeacher")
