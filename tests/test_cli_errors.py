"""What a CLI user sees for bad input: ``python -m metakd ...`` as a subprocess, for every row of
docs/FAULTS.md that a command line can reach. Each run must exit with status 2, and the last line of its
stderr must be ``error: <the message>``; the line before it names the config key when the message does
not (metakd/errors.py). ``--traceback`` / ``METAKD_TRACEBACK=1`` add the traceback; an unexpected
exception keeps its traceback and exits 1.

One case per row (one file of the "empty, missing or unknown-extension file" row, the command-line form
of an unknown key: the config-file form takes the same path, tests/test_config_faults.py runs it
in-process). One case of each family (data files, data options, option values, checkpoints, export,
pipeline) runs as its own ``python -m metakd`` subprocess; the others run the same ``python -m metakd``
code path one after another in a single subprocess (tests/metakd_batch.py), which saves an interpreter
start-up and the imports of torch and Lightning per case.

Rows checked as subprocesses elsewhere: a truncated ``--ckpt_path`` (tests/test_reliability.py),
``test --ckpt_path best`` without a fit and a model/data ``target_domain`` clash (tests/test_cli.py).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    REPO,
    run_metakd,
    run_metakd_batch,
    run_python,
    stderr_lines,
    tiny_corpus_records,
    tiny_student_config,
    train_tiny_teacher,
    write_jsonl,
    write_tiny_corpus,
    write_tiny_fit_setup,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_ckpt: str) -> Path:
    """A tiny corpus and MetaTeacher config, broken data files, and three tiny teacher checkpoints (the one
    of other labels is the session's ``tiny_teacher_ckpt``: the toy datamodule's labels)."""
    from datamodules import JsonlDataModule

    w = write_tiny_fit_setup(tmp_path_factory.mktemp("cli_errors"))
    corpus = w / "corpus.jsonl"
    good = tiny_corpus_records(per_domain=3)
    write_jsonl(w / "malformed.jsonl", [*good[:2], '{"text": "broken", "label": "neg",', *good[2:]])
    write_jsonl(w / "list.jsonl", [*good[:1], "[1, 2]"])
    write_jsonl(w / "no_label.jsonl", [good[0], {"text": "no label", "domain": "books"}])
    write_jsonl(w / "test_labels.jsonl", [{"text": "the books is so so", "label": "meh", "domain": "books"}])
    write_jsonl(w / "mixed_labels.jsonl", [good[0], {**good[1], "label": 1}])
    write_jsonl(w / "empty_text.jsonl", [good[0], {**good[1], "text": "   "}])
    write_jsonl(w / "too_few.jsonl", tiny_corpus_records(per_domain=2))
    (w / "empty.jsonl").write_text("\n", encoding="utf-8")
    (w / "served").mkdir()
    (w / "served" / "keep.txt").write_text("an earlier export", encoding="utf-8")

    # teachers: on this corpus; on other domains (same labels); on other labels (the toy datamodule)
    def data(path: Path) -> JsonlDataModule:
        cache = str(w / "cache")
        return JsonlDataModule(train_file=str(path), backbone="minilm-l6", max_length=16, cache_dir=cache)

    train_tiny_teacher(str(w / "teacher.ckpt"), data(corpus))
    other = write_tiny_corpus(w / "toys_games.jsonl", domains=("toys", "games"))
    train_tiny_teacher(str(w / "toys_teacher.ckpt"), data(other))
    shutil.copyfile(tiny_teacher_ckpt, w / "toy_labels_teacher.ckpt")
    return w


def fit(w: Path, *args: str) -> list[str]:
    return ["fit", "--config", str(w / "tiny.yaml"), *args]


def student(w: Path, teacher: str | None, *args: str) -> list[str]:
    """``fit`` of a tiny Student of the books domain, distilled from ``w/teacher`` (None: no teacher)."""
    ckpt = [] if teacher is None else ["--model.init_args.teacher_ckpt", str(w / teacher)]
    config = json.dumps(tiny_student_config())
    return fit(
        w,
        "--model.class_path", "metakd.Student", *ckpt,
        "--model.init_args.student_config", config,
        "--model.init_args.cache_dir", str(w / "cache"),
        "--data.init_args.target_domain", "books",
        *args,
    )  # fmt: skip


def data_file(name: str, *args: str) -> Callable[[Path], list[str]]:
    return lambda w: fit(w, "--data.init_args.train_file", str(w / name), *args)


@dataclass
class Case:
    """A command line (given the work folder), the message after ``error: `` (a regular expression when
    ``regex``, else the exact text; ``{w}`` is the work folder), and the line before it (None: no
    ``config key:``/``usage:`` line)."""

    name: str
    argv: Callable[[Path], list[str]]
    message: str
    where: str | None = None
    regex: bool = False
    where_optional: bool = False  # the where line may be absent (the message may come to name the key)
    subprocess: bool = False  # its own `python -m metakd` (one case per family), else in the batch

    def matches(self, line: str, w: Path) -> bool:
        if self.regex:
            pattern = "error: " + self.message.replace(r"\{w\}", re.escape(str(w)))
            return re.fullmatch(pattern, line) is not None
        return line == "error: " + self.message.replace("{w}", str(w))


CASES = [
    # --- data files (datamodules/)
    Case(
        "malformed_json_line",
        data_file("malformed.jsonl"),
        r"\{w\}/malformed\.jsonl:3: malformed JSON line \(.+\)",
        regex=True,
        subprocess=True,
    ),
    Case(
        "json_line_not_an_object",
        data_file("list.jsonl"),
        "{w}/list.jsonl:2: expected a JSON object, got list",
    ),
    Case(
        "missing_field",
        data_file("no_label.jsonl"),
        "{w}/no_label.jsonl:2: missing field 'label'; fields present: ['domain', 'text']",
    ),
    Case(
        "test_label_not_in_label_set",
        lambda w: fit(w, "--data.init_args.test_file", str(w / "test_labels.jsonl")),
        "{w}/test_labels.jsonl:1: label ('label') 'meh' is not in the label set; "
        "allowed labels (index=name): 0='neg', 1='pos'",
    ),
    Case(
        "index_label_among_names",
        data_file("mixed_labels.jsonl"),
        "{w}/mixed_labels.jsonl:2: label 1 is an index but other labels are names; give label_names to say "
        "which name each index stands for",
    ),
    Case("empty_file", data_file("empty.jsonl"), "{w}/empty.jsonl: the file is empty (no records)"),
    Case(
        "too_few_examples_to_split",
        data_file("too_few.jsonl"),
        r"\{w\}/too_few.jsonl: cannot split off a stratified 10%: it has 4 examples .*",  # raised in setup()
        regex=True,
    ),
    # --- data options
    Case(
        "train_fraction_zero",
        lambda w: fit(w, "--data.init_args.train_fraction", "0"),
        "train_fraction must be in (0, 1], got 0.0",
        where="config key: data.init_args.train_fraction (datamodules.JsonlDataModule)",
    ),
    Case(
        "unknown_target_domain",
        lambda w: fit(w, "--data.init_args.target_domain", "toys"),
        "jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']",
        where="config key: data.init_args.target_domain (datamodules.JsonlDataModule)",
        subprocess=True,
    ),
    Case(
        "unknown_domain_in_domains",
        lambda w: fit(w, "--data.init_args.domains", "[books, toys]"),
        "jsonl: no examples for domain(s) ['toys']; the corpus's domains are ['books', 'dvd']",
        where="config key: data.init_args.domains (datamodules.JsonlDataModule)",
    ),
    Case(
        "max_length_beyond_the_backbone",
        lambda w: fit(w, "--data.init_args.max_length=100000"),
        "max_length is 100000, more than the 512 positions backbone 'minilm-l6' reads (its "
        "max_position_embeddings); use at most 512",
        where="config key: data.init_args.max_length (datamodules.JsonlDataModule)",
    ),
    Case(  # the tiny MetaTeacher's encoder_config has 64 positions, the MiniLM tokenizer data 512
        "max_length_beyond_the_model_encoder",
        lambda w: fit(w, "--data.init_args.max_length=100"),
        "data.init_args.max_length is 100, more than the 64 positions the model's encoder `network.encoder` "
        "reads (its max_position_embeddings); use at most 64",
    ),
    Case(
        "unloadable_backbone",
        lambda w: fit(w, "--data.init_args.backbone", str(w / "no_such_backbone")),
        r"cannot load backbone '\{w\}/no_such_backbone' offline: it is neither a local model directory .*",
        regex=True,
    ),
    # --- option values (numeric checks, choices, keys, types)
    Case(
        "negative_learning_rate",
        lambda w: fit(w, "--model.init_args.learning_rate", "-1"),
        "model.init_args.learning_rate must be >= 0, got -1.0",
    ),
    Case(
        "unknown_choice",
        lambda w: fit(w, "--model.init_args.weighting", "protoype"),
        "model.init_args.weighting: 'protoype' is not one of "
        "['prototype', 'meta', 'prototype+meta', 'none']; did you mean 'prototype'?",
    ),
    Case(
        "unknown_key",
        lambda w: fit(w, "--model.init_args.learning_rat", "0.1"),
        "model.init_args.learning_rat: no such option of metakd.MetaTeacher; did you mean 'learning_rate'?",
    ),
    Case(
        "bad_trainer_value",
        lambda w: fit(w, "--trainer.max_epochs", "-5"),
        "`max_epochs` must be a non-negative integer or -1. You passed in -5.",
        where="config key: trainer.max_epochs",
    ),
    Case(
        "unknown_command",
        lambda w: ["fitt", "--config", str(w / "tiny.yaml")],
        "unknown command 'fitt'; did you mean 'fit'?",
        where="usage: python -m metakd {fit,validate,test,predict,export,sweep,pipeline,classify,search,"
        "robustness} ... (a command's --help lists its options)",
        subprocess=True,
    ),
    # --- student and teacher checkpoints
    Case(
        "missing_teacher_ckpt",
        lambda w: student(w, "no_such_teacher.ckpt"),
        "teacher checkpoint not found: '{w}/no_such_teacher.ckpt' (model.teacher_ckpt must name a "
        "MetaTeacher .ckpt written by `python -m metakd fit` with a MetaTeacher config, or a HuggingFace "
        "sequence-classification model directory)",
        subprocess=True,
    ),
    Case(
        "truncated_teacher_ckpt",
        lambda w: student(w, "truncated.ckpt"),
        r"cannot load the teacher checkpoint '\{w\}/truncated.ckpt' as a MetaTeacher \(.*\)",
        regex=True,
    ),
    Case(
        "distillation_without_teacher",
        lambda w: student(w, None),
        "distillation='meta' needs model.teacher_ckpt (a MetaTeacher checkpoint or an HF classifier); only "
        "distillation='none' trains without a teacher",
    ),
    Case(
        "teacher_of_other_labels",
        lambda w: student(w, "toy_labels_teacher.ckpt"),
        r"label mismatch: the teacher '\{w\}/toy_labels_teacher.ckpt' predicts \['label0', 'label1'\] "
        r"but the student's data has labels \['neg', 'pos'\]; .*",
        regex=True,
    ),
    Case(
        "teacher_of_other_domains",
        lambda w: student(w, "toys_teacher.ckpt"),
        r"target domain 'books' is unknown to the teacher '\{w\}/toys_teacher.ckpt', whose domains are "
        r"\['games', 'toys'\]; .*",
        regex=True,
    ),
    Case(
        "layer_map_out_of_range",
        lambda w: student(
            w, "teacher.ckpt", "--model.init_args.matches", '[{"teacher_layer": 7, "student_layer": 1}]'
        ),
        r"matches\[0\] = \{.*\}: teacher_layer=7 is out of range for feature 'hidden'; the teacher has 2 "
        r"layers, valid teacher_layer is 0\.\.2 \(0 = embedding output\)",
        regex=True,
        where="config key: model.init_args.matches (metakd.Student)",
    ),
    Case(
        "student_temperature_zero",
        lambda w: student(w, "teacher.ckpt", "--model.init_args.temperature", "0"),
        "model.init_args.temperature must be > 0, got 0.0",
    ),
    Case(
        "student_negative_learning_rate",
        lambda w: student(w, "teacher.ckpt", "--model.init_args.intermediate_lr", "-1"),
        "model.init_args.intermediate_lr must be >= 0, got -1.0",
    ),
    # --- export
    Case(
        "export_teacher_ckpt",
        lambda w: ["export", "--ckpt", str(w / "teacher.ckpt"), "--out", str(w / "out")],
        r"'\{w\}/teacher.ckpt' is not a metakd Student checkpoint.*",
        regex=True,
    ),
    Case(
        "export_out_not_empty",
        lambda w: ["export", "--ckpt", str(w / "teacher.ckpt"), "--out", str(w / "served")],
        "{w}/served exists and is not empty; pass --overwrite to replace it (nothing was written)",
        subprocess=True,
    ),
    # --- pipeline
    Case(
        "pipeline_config_missing",
        lambda w: ["pipeline", "--config", str(w / "no_such_pipeline.yaml")],
        r"cannot read the pipeline config \{w\}/no_such_pipeline.yaml: .*No such file or directory.*",
        regex=True,
        subprocess=True,
    ),
]


@pytest.fixture(scope="module")
def batch(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The cases that do not run as their own subprocess, and ``METAKD_TRACEBACK=1``, in one subprocess:
    ``{name: (result, whether run/checkpoints existed after it)}``."""
    watch = workdir / "run" / "checkpoints"
    cases = {case.name: {"argv": case.argv(workdir), "watch": watch} for case in CASES if not case.subprocess}
    cases["traceback_environment_variable"] = {
        "argv": fit(workdir, "--model.init_args.weighting", "protoype"),
        "env": {"METAKD_TRACEBACK": "1"},
    }
    return run_metakd_batch(cases, tmp_path_factory.mktemp("cli_errors_batch"), cwd=workdir)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_cli_prints_one_clear_error_line(workdir: Path, batch: dict, case: Case) -> None:
    if case.subprocess:
        result = run_metakd(*case.argv(workdir), cwd=workdir, check=False, timeout=180)
        trained = (workdir / "run" / "checkpoints").exists()
    else:
        result, trained = batch[case.name]
    lines = stderr_lines(result)
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines, "nothing on stderr"
    assert case.matches(lines[-1], workdir), (case.message, lines[-1])
    before = lines[-2] if len(lines) > 1 else ""
    if case.where is None or (case.where_optional and not before.startswith("config key:")):
        assert not before.startswith(("config key:", "usage:")), before
    else:
        assert before == case.where
    assert "Traceback" not in result.stderr
    assert not trained  # nothing was trained


def test_traceback_flag_and_environment_variable_show_the_traceback(workdir: Path, batch: dict) -> None:
    result = run_metakd(*fit(workdir, "--data.init_args.target_domain", "toys", "--traceback"), cwd=workdir,
                        check=False)  # fmt: skip
    lines = stderr_lines(result)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "datamodules/base.py" in result.stderr
    assert lines[-1] == "error: jsonl: unknown target_domain 'toys'; known domains: ['books', 'dvd']"
    result, _ = batch["traceback_environment_variable"]  # fit --model.init_args.weighting protoype
    assert result.returncode == 2 and "Traceback (most recent call last)" in result.stderr
    assert stderr_lines(result)[-1].startswith("error: model.init_args.weighting: 'protoype' is not one of")


def test_unexpected_exception_keeps_its_traceback(workdir: Path, tmp_path: Path) -> None:
    """A bug (here: a datamodule whose __init__ raises RuntimeError) is not dressed up as bad input."""
    (tmp_path / "boom.py").write_text(
        "from pytorch_lightning import LightningDataModule\n\n\n"
        "class BoomDataModule(LightningDataModule):\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('boom: a bug, not bad input')\n",
        encoding="utf-8",
    )
    result = run_metakd(*fit(workdir, "--data", "boom.BoomDataModule"), cwd=workdir, check=False,
                        extra_env={"PYTHONPATH": f"{tmp_path}:{REPO}"})  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: boom: a bug, not bad input" in result.stderr
    assert not any(line.startswith("error:") for line in stderr_lines(result))


def test_sweep_without_the_engine_gives_the_install_hint() -> None:
    """From the repo root, ``import sweeps`` without W&B's engine finds the repo's ``sweeps/`` folder (a
    namespace package); the sweep command must still say what to install. The engine is hidden by a
    meta-path finder that looks for ``sweeps`` outside site-packages only."""
    hide_engine = (
        "import importlib.machinery, runpy, sys\n"
        "class HideSweepEngine:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] != 'sweeps':\n"
        "            return None\n"
        "        outside = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, outside)\n"
        "        if spec is None:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, HideSweepEngine())\n"
        "sys.argv[0] = 'metakd'\n"
        "runpy.run_module('metakd', run_name='__main__', alter_sys=True)\n"
    )
    # --dry-run: were the engine found after all, nothing would be trained
    result = run_python("-c", hide_engine, "sweep", "sweeps/meta_teacher.yaml", "--count", "1", "--dry-run",
                        cwd=REPO, check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    last = stderr_lines(result)[-1]
    assert last.startswith(
        "error: local sweeps need W&B's sweep engine: pip install 'metakd[sweep]' (the `sweeps` package); "
        f"the `sweeps` module found ({REPO / 'sweeps'}) is not the engine: it has no next_run"
    ), last
