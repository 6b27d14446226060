"""The error boundary (metakd/errors.py) and the numeric option checks (metakd/validation.py), in-process.

The real command line is tested in tests/test_cli_errors.py.
"""

from __future__ import annotations

import math

import pytest

from metakd import validation as V
from metakd.errors import (
    ConfigError,
    MetakdError,
    is_metakd_error,
    names_a_place,
    report_for,
    run_with_error_boundary,
    suggest,
    unwrap,
)


def test_every_metakd_error_class_is_recognised() -> None:
    from datamodules import DataError
    from metakd.backbones import BackboneError
    from metakd.checkpointing import CheckpointFileError
    from metakd.distill.layer_maps import RecipeError
    from metakd.export import ExportError
    from metakd.pipeline import PipelineError
    from metakd.student import StudentConfigError, TeacherCheckpointError
    from metakd.sweep import SweepError
    from metakd.teacher import CheckpointMismatchError, NonFiniteLossError

    for cls in (DataError, BackboneError, CheckpointFileError, ExportError, PipelineError, SweepError,
                CheckpointMismatchError, NonFiniteLossError, ConfigError, RecipeError, StudentConfigError,
                TeacherCheckpointError):  # fmt: skip
        assert issubclass(cls, MetakdError) and is_metakd_error(cls("x")), cls
    # the builtin bases they always had are kept: `except ValueError` still catches them
    assert issubclass(DataError, ValueError) and issubclass(ExportError, RuntimeError)
    assert issubclass(NonFiniteLossError, FloatingPointError) and issubclass(ConfigError, ValueError)
    assert not is_metakd_error(ValueError("x"))


def test_unwrap_looks_through_jsonargparse_only() -> None:
    from jsonargparse._typehints import raise_union_unexpected_value

    from datamodules import DataError

    inner = DataError("f.jsonl:3: missing field 'label'")
    try:
        raise_union_unexpected_value([int, type(None)], "x", [inner, ValueError("Expected None")])
    except ValueError as wrapped:
        assert unwrap(wrapped) is inner
        assert report_for(wrapped).lines() == ["error: f.jsonl:3: missing field 'label'"]
    try:  # a bug while handling a metakd error is not dressed up as bad input
        try:
            raise inner
        except DataError:
            raise AttributeError("a bug") from None
    except AttributeError as bug:
        assert unwrap(bug) is None and report_for(bug) is None
    # of metakd errors wrapping each other, the outermost (most context) is reported
    outer = ConfigError("model.teacher_ckpt: cannot load it")
    outer.__cause__ = inner
    assert unwrap(outer) is outer


def test_boundary_exit_status_and_lines(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> int:
        error = ConfigError("train_fraction must be in (0, 1], got 0.0")
        error.metakd_where = "config key: data.init_args.train_fraction (datamodules.JsonlDataModule)"
        raise error

    assert run_with_error_boundary(bad, show_traceback=False) == 2
    assert capsys.readouterr().err.splitlines() == [
        "config key: data.init_args.train_fraction (datamodules.JsonlDataModule)",
        "error: train_fraction must be in (0, 1], got 0.0",
    ]
    assert run_with_error_boundary(bad, show_traceback=True) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.endswith("got 0.0\n")
    assert run_with_error_boundary(lambda: 0) == 0 and run_with_error_boundary(lambda: None) == 0
    with pytest.raises(KeyError):  # unexpected: propagates with its traceback
        run_with_error_boundary(lambda: {}["missing"])


def test_where_line_only_when_the_message_names_no_key_or_file() -> None:
    assert names_a_place("teacher checkpoint not found: '/x/t.ckpt' (model.teacher_ckpt must ...)")
    assert names_a_place("/data/train.jsonl:3: missing field 'label'")
    assert names_a_place("corpus.csv: the file is empty (no records)")
    assert not names_a_place("jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']")
    assert not names_a_place("train_fraction must be in (0, 1], got 0.0")


def test_suggestions() -> None:
    assert suggest("protoype", ["prototype", "meta", "none"]) == "; did you mean 'prototype'?"
    assert suggest("sometimes", ["prototype", "meta", "none"]) == ""


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (V.check_non_negative, -1.0, "k must be >= 0, got -1.0"),
        (V.check_non_negative, math.nan, "k must be a finite number, got nan"),
        (V.check_non_negative, math.inf, "k must be a finite number, got inf"),
        (V.check_non_negative, "0.1", "k must be a number, got '0.1'"),
        (V.check_non_negative, True, "k must be a number, got True"),
        (V.check_positive, 0, "k must be > 0, got 0"),
        (V.check_fraction, 0.0, "k must be in (0, 1], got 0.0"),
        (V.check_fraction, 1.5, "k must be in (0, 1], got 1.5"),
        (
            lambda k, v: V.check_interval(k, v, 0.0, 1.0, high_closed=False),
            1.0,
            "k must be in [0, 1), got 1.0",
        ),
        (lambda k, v: V.check_int_at_least(k, v, 1), 0, "k must be an integer >= 1, got 0"),
        (lambda k, v: V.check_int_at_least(k, v, 1), 2.0, "k must be an integer >= 1, got 2.0"),
    ],
)
def test_checks_name_the_key(check, value, message) -> None:
    with pytest.raises(ConfigError) as info:
        check("k", value)
    assert str(info.value) == message


def test_checks_accept_the_edges() -> None:
    assert V.check_non_negative("k", 0) == 0 and V.check_positive("k", 1e-12) == 1e-12
    assert V.check_fraction("k", 1.0) == 1.0 and V.check_int_at_least("k", 0, 0) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"intermediate_lr": -1.0}, "model.init_args.intermediate_lr must be >= 0, got -1.0"),
        ({"prediction_lr": -1e-5}, "model.init_args.prediction_lr must be >= 0, got -1e-05"),
        ({"weight_decay": -0.1}, "model.init_args.weight_decay must be >= 0, got -0.1"),
        ({"temperature": 0.0}, "model.init_args.temperature must be > 0, got 0.0"),
        ({"lambda_tk": -0.5}, "model.init_args.lambda_tk must be >= 0, got -0.5"),
        ({"hard_label_weight": -1.0}, "model.init_args.hard_label_weight must be >= 0, got -1.0"),
        ({"intermediate_epochs": -1}, "model.init_args.intermediate_epochs must be an integer >= 0, got -1"),
    ],
)
def test_check_student_options(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        V.check_student_options(**options)
    assert str(info.value) == message


def test_check_student_options_accepts_the_defaults_and_ignores_other_arguments() -> None:
    import inspect

    from metakd.student import Student

    defaults = {
        name: p.default
        for name, p in inspect.signature(Student.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    V.check_student_options(**defaults)  # no error
    V.check_student_options(teacher_ckpt="t.ckpt", intermediate_epochs=0, temperature=2.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": -1.0}, "model.init_args.learning_rate must be >= 0, got -1.0"),
        ({"weight_decay": -0.01}, "model.init_args.weight_decay must be >= 0, got -0.01"),
        ({"warmup_ratio": 1.1}, "model.init_args.warmup_ratio must be in [0, 1], got 1.1"),
        ({"dropout": 1.0}, "model.init_args.dropout must be in [0, 1), got 1.0"),
        ({"domain_loss_weight": -0.5}, "model.init_args.domain_loss_weight must be >= 0, got -0.5"),
        ({"gradient_clip_norm": 0.0}, "model.init_args.gradient_clip_norm must be > 0, got 0.0"),
        ({"meta_inner_lr": 0.0}, "model.init_args.meta_inner_lr must be > 0, got 0.0"),
        ({"meta_every_n_steps": 0}, "model.init_args.meta_every_n_steps must be an integer >= 1, got 0"),
    ],
)
def test_meta_teacher_checks_its_numeric_options(options: dict, message: str) -> None:
    from helpers import tiny_encoder_config

    from metakd.teacher import MetaTeacher

    with pytest.raises(ConfigError) as info:
        MetaTeacher(encoder_config=tiny_encoder_config(), transferability_cache=False, **options)
    assert str(info.value) == message
    MetaTeacher(encoder_config=tiny_encoder_config(), gradient_clip_norm=None, learning_rate=0.0)  # accepted
