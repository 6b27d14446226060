"""Command-line overrides of keys inside mapping-valued options (metakd/config_overrides.py): the student
architecture's ``init_args``, ``distillation_options``, a datamodule's ``augment``. Through the real CLI:
``--print_config`` of a shipped config in a subprocess, and the CLI's parse-and-build in this process
(the objects it builds carry the values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_metakd, tiny_student_config, write_tiny_corpus

from metakd.cli import run_lightning_cli
from metakd.config_overrides import expand_mapping_overrides, read_value, set_path

EDA = "datamodules.eda.EDA"


def test_nested_overrides_of_a_shipped_config_through_the_command_line() -> None:
    result = run_metakd(
        "fit", "--config", "configs/amazon/fastbert.yaml",
        "--model.init_args.student_model.init_args.speed", "0.4",  # what the config's comment documents
        "--model.student_model.init_args.branch_width=64",  # jsonargparse's shorthand for model.init_args
        "--model.init_args.student_model.init_args.config.hidden_dropout_prob", "0",  # two levels down
        "--model.init_args.distillation_options.finetune_epochs", "1",
        "--data.init_args.augment.class_path", "eda",  # augment is unset in the config
        "--data.init_args.augment.init_args.alpha", "1e-1",
        "--data.init_args.augment.per_example=2",
        "--print_config",
        cwd=REPO,
    )  # fmt: skip
    printed = yaml.safe_load(result.stdout)
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]
    assert model["student_model"] == {
        "class_path": "metakd.students.early_exit.EarlyExitStudent",
        "init_args": {
            "backbone": "minilm-l6",
            "speed": 0.4,
            "branch_width": 64,
            "config": {"hidden_dropout_prob": 0},
        },
    }
    assert model["distillation_options"] == {"finetune_epochs": 1}
    assert data["augment"] == {"class_path": "eda", "init_args": {"alpha": 0.1}, "per_example": 2}
    assert (model["prediction_lr"], data["max_length"]) == (5e-5, 128)  # the rest of the config stays


@pytest.fixture(scope="module")
def fastbert_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FastBERT student (early-exit architecture, random 2-layer encoder) on a tiny corpus."""
    directory = tmp_path_factory.mktemp("overrides")
    corpus = write_tiny_corpus(directory / "corpus.jsonl")
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 3,
            "logger": False,
            "default_root_dir": str(directory / "run"),
        },  # fmt: skip
        "model": {
            "class_path": "metakd.Student",
            "init_args": {
                "student_model": {
                    "class_path": "metakd.students.early_exit.EarlyExitStudent",
                    "init_args": {"config": tiny_student_config(num_hidden_layers=2), "speed": 0.2},
                },
                "distillation": "fastbert",
                "distillation_options": {"finetune_epochs": 2},
            },
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {
                "train_file": str(corpus),
                "backbone": "minilm-l6",
                "max_length": 16,
                "cache_dir": str(directory / "cache"),
                "target_domain": "books",
            },  # fmt: skip
        },
    }
    path = directory / "fastbert.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_built_objects_carry_the_overridden_values(fastbert_config: Path) -> None:
    cli = run_lightning_cli(
        [
            "--config", str(fastbert_config),
            "--model.init_args.student_model.init_args.speed", "0.4",
            "--model.init_args.distillation_options.finetune_epochs=1",
            "--data.init_args.augment", json.dumps({"class_path": EDA, "init_args": {"alpha": 0.3}}),
            "--data.init_args.augment.init_args.without_wordnet", "swap_delete",
        ],
        run=False,
    )  # fmt: skip
    assert cli.model.model.speed == 0.4
    assert cli.model.model.config.num_hidden_layers == 2  # the rest of init_args stays
    assert cli.model.distiller.finetune_epochs == 1
    assert cli.datamodule.augment.init_args == {"alpha": 0.3, "without_wordnet": "swap_delete"}
    assert cli.datamodule.augment.per_example == 1


def test_a_later_config_still_wins(fastbert_config: Path, tmp_path: Path) -> None:
    later = tmp_path / "later.yaml"
    later.write_text(
        yaml.safe_dump({"model": {"init_args": {"distillation_options": {"finetune_epochs": 2}}}})
    )
    cli = run_lightning_cli(
        [
            "--config", str(fastbert_config),
            "--model.init_args.distillation_options.finetune_epochs", "1",
            "--config", str(later),
            "--model.init_args.student_model.init_args.speed", "0.6",
        ],
        run=False,
    )  # fmt: skip
    assert (cli.model.distiller.finetune_epochs, cli.model.model.speed) == (2, 0.6)


def test_an_argument_of_the_architecture_outside_init_args_is_named() -> None:
    from metakd.errors import StudentConfigError
    from metakd.students.base import StudentContext, build_student

    context = StudentContext(num_labels=2, label_names=("neg", "pos"), tokenizer_name="minilm-l6",
                             vocab_size=30522, pad_token_id=0)  # fmt: skip
    spec = {"class_path": "metakd.students.textcnn.TextCNNStudent", "speed": 0.4}
    with pytest.raises(StudentConfigError) as err:
        build_student(spec, context)
    assert str(err.value) == (
        "model.student_model has unknown keys ['speed']; expected class_path, init_args (an argument of the "
        "architecture goes below init_args: model.init_args.student_model.init_args.speed)"
    )


def test_options_that_are_not_inside_a_mapping_are_left_to_jsonargparse() -> None:
    """Only an option below a mapping is rewritten; the command line is parsed once to find them, and a
    prefix once more for each."""
    from jsonargparse import Namespace

    parsed: list[list[str]] = []

    def parse(words: list[str]) -> Namespace:
        parsed.append(words)
        init_args = Namespace(lr=1.0, options={"a": {"b": 1}, "c": 2})
        model = Namespace(class_path="x.Y", init_args=init_args)
        return Namespace(trainer=Namespace(max_epochs=3), model=model)

    assert expand_mapping_overrides(parse, ["fit", "--config", "a.yaml", "--print_config"]) == [
        "fit", "--config", "a.yaml", "--print_config",
    ]  # fmt: skip
    assert parsed == []  # nothing dotted: nothing to parse
    words = ["--trainer.max_epochs", "4", "--model.init_args.lr=2", "--model.init_args.options", "{}"]
    assert expand_mapping_overrides(parse, words) == words
    assert parsed == [words]
    parsed.clear()
    words = ["--model.options.a.d", "[1, 2]", "--trainer.callbacks+=X", "--print_config"]
    assert expand_mapping_overrides(parse, words) == [
        "--model.options=" + json.dumps({"a": {"b": 1, "d": [1, 2]}, "c": 2}),
        "--trainer.callbacks+=X",
        "--print_config",
    ]
    assert parsed == [words[:3], []]  # the whole line (without --print_config), the prefix before it


def test_values_are_read_as_yaml() -> None:
    assert [read_value(v) for v in ("0.4", "1e-4", "true", "null", "[1, 2]", "x", "3")] == [
        0.4, 1e-4, True, None, [1, 2], "x", 3,
    ]  # fmt: skip
    assert set_path({"a": 1, "b": {"c": 2}}, ["b", "d", "e"], 5) == {"a": 1, "b": {"c": 2, "d": {"e": 5}}}


def test_a_registered_name_with_init_args_gets_a_clear_error(fastbert_config: Path) -> None:
    """jsonargparse imports the class_path of a ``{class_path, init_args}`` mapping: a registered name fails
    there (without init_args it works); the error says what to write instead."""
    from metakd.errors import ConfigError

    spec = {"class_path": "early_exit", "init_args": {"config": tiny_student_config(num_hidden_layers=2)}}
    with pytest.raises(ConfigError) as err:
        run_lightning_cli(
            ["--config", str(fastbert_config), "--model.init_args.student_model", json.dumps(spec)], run=False
        )
    assert str(err.value) == (
        "class_path 'early_exit' with init_args: the config parser (jsonargparse) needs the class's dotted "
        "path there (here: metakd.students.early_exit.EarlyExitStudent); a registered name works only "
        "without init_args"
    )


def test_a_command_line_option_wins_over_the_checkpoint_hyperparameters(fastbert_config: Path) -> None:
    """Lightning lays the hyperparameters of ``--ckpt_path <file>`` over the config; an option given on the
    command line (the speed FastBERT's config documents for test time) still applies, merged into the
    checkpoint's architecture (trained with branch width 64, not the config's default 128)."""
    tiny = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]  # fmt: skip
    width = "--model.init_args.student_model.init_args.branch_width=64"
    fitted = run_lightning_cli(["fit", "--config", str(fastbert_config), *tiny, width])
    ckpt = fitted.trainer.checkpoint_callback.last_model_path
    speed = ["--model.init_args.student_model.init_args.speed", "0.9"]
    tested = run_lightning_cli(["test", "--config", str(fastbert_config), *tiny, "--ckpt_path", ckpt, *speed])
    assert tested.model.model.speed == 0.9
    assert tested.model.model.branches[0].reduce.out_features == 64
    untouched = run_lightning_cli(["test", "--config", str(fastbert_config), *tiny, "--ckpt_path", ckpt])
    assert untouched.model.model.speed == 0.2
