"""Bad CLI / config values through the real command line: each run stops before any training, with a
non-zero exit and a message that names the key or file and what was expected.

Most cases run ``metakd.cli.main([...])`` in-process (parse errors: ``SystemExit(2)`` and the message on
stderr; errors raised while the classes are built propagate as exceptions, which ``python -m metakd``
turns into exit status 1 and a traceback ending in the message); one subprocess checks the exit status
and stderr of the real ``python -m metakd`` for both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_metakd, tiny_encoder_config

from metakd.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-domain corpus, a MetaTeacher config on it, and a truncated checkpoint file."""
    directory = tmp_path_factory.mktemp("faults")
    lines = []
    for domain in ("books", "dvd"):
        for i in range(20):
            label = "pos" if i % 2 else "neg"
            text = f"the {domain} is {'good' if label == 'pos' else 'bad'} {i}"
            lines.append(json.dumps({"text": text, "label": label, "domain": domain}))
    (directory / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            # one real step (not fast_dev_run, which never writes checkpoints): a fit that got as far as
            # training would leave run/checkpoints/, which the fault tests check is absent
            "max_steps": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(directory / "run"),
        },
        "model": {
            "class_path": "metakd.MetaTeacher",
            "init_args": {
                "backbone": "minilm-l6",
                "encoder_config": tiny_encoder_config(),
                "transferability_cache": False,
            },
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {
                "train_file": str(directory / "corpus.jsonl"),
                "backbone": "minilm-l6",
                "max_length": 16,
                "batch_size": 8,
                "cache_dir": str(directory / "cache"),
            },
        },
    }
    (directory / "tiny.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    # the first bytes of a zip (torch's format), then nothing: a checkpoint cut off while written
    (directory / "truncated.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    return directory


def parse_error(workdir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``fit --config tiny.yaml *args``, expect a parse error (exit 2); return the stderr message."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(workdir / "tiny.yaml"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    return " ".join(err[err.index("error:") :].split())  # one line: the wrapping varies


def build_error(workdir: Path, *args: str) -> BaseException:
    """Run ``fit --config tiny.yaml *args``, expect an error before training; return it."""
    with pytest.raises(Exception) as info:
        main(["fit", "--config", str(workdir / "tiny.yaml"), *args])
    assert not (workdir / "run" / "checkpoints").exists()  # nothing was trained
    return info.value


def chain(error: BaseException) -> str:
    """The messages of an exception and its causes (jsonargparse wraps an __init__ error in a ValueError)."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def test_unknown_config_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = parse_error(workdir, capsys, "--model.init_args.learning_rat", "0.1")
    assert "Problem with given class_path 'metakd.MetaTeacher'" in message
    assert "NestedArg(key='learning_rat'" in message
    message = parse_error(workdir, capsys, "--bogus", "1")
    assert "error: unrecognized arguments: --bogus 1" in message


def test_unknown_key_in_config_file(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((workdir / "tiny.yaml").read_text(encoding="utf-8"))
    config["model"]["init_args"]["learning_rat"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert (
        "Problem with given class_path 'metakd.MetaTeacher': Option 'learning_rat' is not accepted" in message
    )


def test_wrong_type(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = parse_error(workdir, capsys, "--data.init_args.batch_size", "abc")
    assert 'error: Parser key "data"' in message
    assert "Problem with given class_path 'datamodules.JsonlDataModule'" in message
    assert "Parser key \"batch_size\": Expected a <class 'int'>. Got value: abc" in message


def test_bad_enum_value(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = parse_error(workdir, capsys, "--model.init_args.weighting", "sometimes")
    assert 'Parser key "weighting": Expected a typing.Literal[' in message
    assert "'prototype', 'meta', 'prototype+meta', 'none'" in message and "Got value: sometimes" in message


def test_unknown_target_domain(workdir: Path) -> None:
    message = chain(build_error(workdir, "--data.init_args.target_domain", "toys"))
    assert "DataError: jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']" in message


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.5"])
def test_train_fraction_outside_unit_interval(workdir: Path, fraction: str) -> None:
    message = chain(build_error(workdir, "--data.init_args.train_fraction", fraction))
    assert f"DataError: train_fraction must be in (0, 1], got {float(fraction)!r}" in message


def test_truncated_ckpt_path_for_fit(workdir: Path) -> None:
    from metakd.checkpointing import CheckpointFileError

    path = workdir / "truncated.ckpt"
    error = build_error(workdir, "--ckpt_path", str(path))
    assert isinstance(error, CheckpointFileError)
    assert str(error).startswith(
        f"'{path}' is not a torch checkpoint (truncated, or another kind of file); expected a MetaTeacher "
        "checkpoint"
    )


def student_args(teacher_ckpt: str) -> list[str]:
    return [
        "--model.class_path", "metakd.Student",
        "--model.init_args.teacher_ckpt", teacher_ckpt,
        "--model.init_args.student_config", json.dumps({"hidden_size": 16, "num_hidden_layers": 1,
                                                        "num_attention_heads": 2, "intermediate_size": 20}),
    ]  # fmt: skip


def test_missing_teacher_ckpt_for_student(workdir: Path) -> None:
    missing = str(workdir / "no_such_teacher.ckpt")
    message = chain(build_error(workdir, *student_args(missing)))
    assert f"TeacherCheckpointError: teacher checkpoint not found: '{missing}'" in message
    assert "model.teacher_ckpt must name a MetaTeacher .ckpt" in message


def test_truncated_teacher_ckpt_for_student(workdir: Path) -> None:
    path = str(workdir / "truncated.ckpt")
    message = chain(build_error(workdir, *student_args(path)))
    assert f"TeacherCheckpointError: cannot load the teacher checkpoint '{path}' as a MetaTeacher" in message


def run_cli(workdir: Path, *args: str):
    return run_metakd("fit", "--config", workdir / "tiny.yaml", *args, cwd=workdir, check=False, timeout=120)


def test_real_cli_exit_status_and_stderr(workdir: Path) -> None:
    """``python -m metakd``: a parse error exits 2, an error from a class's __init__ exits 1, both with
    the message on stderr."""
    result = run_cli(workdir, "--data.init_args.batch_size", "abc", "--data.init_args.target_domain", "toys")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Expected a <class 'int'>. Got value: abc" in result.stderr
    result = run_cli(workdir, "--data.init_args.target_domain", "toys")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "DataError: jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']" in result.stderr
    assert "Traceback" in result.stderr and not (workdir / "run" / "checkpoints").exists()
