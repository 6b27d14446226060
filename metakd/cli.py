"""Command line: ``python -m metakd {fit,validate,test,predict} --config ...`` (LightningCLI) and
``python -m metakd {export,sweep,pipeline} ...``.

Every command runs inside :func:`metakd.errors.run_with_error_boundary`: bad input (a data file, an
option value, a checkpoint) ends it with ``error: <message>`` on stderr and exit status 2;
``--traceback`` or ``METAKD_TRACEBACK=1`` adds the full traceback. SIGINT (Ctrl-C) and SIGTERM stop it
within seconds with one ``interrupted by ...`` line and exit status 130 / 143 (:mod:`metakd.interrupt`).

Configs name the classes, e.g. ``model.class_path: metakd.MetaTeacher`` and
``data.class_path: datamodules.AmazonReviewsDataModule``. The datamodule's label and domain sets are
linked into the model (``link_arguments(..., apply_on="instantiate")``), so a config never repeats them.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from metakd.config_overrides import expand_mapping_overrides, model_options, registered_name_error
from metakd.errors import (
    TRACEBACK_FLAG,
    ConfigError,
    accepted_options,
    annotate,
    run_with_error_boundary,
    suggest,
    traceback_requested,
    unwrap,
)
from metakd.interrupt import Interrupted, describe_stopped_trainer, run_stoppable

# Attributes every datamodule exposes after __init__, and the model init arg each one fills.
DATA_TO_MODEL_LINKS = {
    "num_labels": "num_labels",
    "num_domains": "num_domains",
    "domain_names": "domain_names",
    "label_names": "label_names",
}


# Datamodule init args copied into the model's init args when the model class takes them (the Student
# does, the MetaTeacher does not). LightningCLI links cannot be conditional on the chosen subclass, so
# the copy happens on the parsed config: an explicit, different model value is an error.
DATA_TO_MODEL_OPTIONAL = {
    "target_domain": "target_domain",
    "backbone": "tokenizer_name",
}


class MetaKDCLI(LightningCLI):
    """LightningCLI with metakd's checkpointing and datamodule -> model links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from metakd.checkpointing import LastModelCheckpoint

        # LastModelCheckpoint: a ModelCheckpoint whose last.ckpt follows every epoch (see its docstring).
        parser.add_lightning_class_args(LastModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        for source, target in DATA_TO_MODEL_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A key inside a mapping-valued option (`--model.init_args.student_model.init_args.speed 0.4`)
        # is merged into that mapping here: jsonargparse alone would misplace it (metakd/config_overrides.py).
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        self.command_line = sys.argv[1:] if args is None else list(args)
        try:
            self.config = parser.parse_args(expand_mapping_overrides(parser.parse_args, self.command_line))
        except ArgumentError as err:
            clearer = registered_name_error(err)
            if clearer is None:
                raise
            raise clearer from err

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        copy_optional_links(config)
        # Checkpoints go to a fixed folder under default_root_dir (not a versioned log folder) so that
        # a later process finds them: `fit --ckpt_path last` resumes, `test --ckpt_path best` evaluates.
        if config.get("checkpoint") is not None and not config.checkpoint.get("dirpath"):
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        # A logger's relative save_dir (configs/loggers/*.yaml use ".") lies under default_root_dir, so
        # each run (e.g. each sweep trial) keeps its logs, W&B files and config.yaml in its own folder.
        root = config.trainer.get("default_root_dir")
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            save_dir = init_args.get("save_dir") if init_args is not None else None
            if (
                root
                and save_dir is not None
                and not os.path.isabs(str(save_dir))
                and "://" not in str(save_dir)
            ):
                init_args.save_dir = os.path.normpath(os.path.join(root, str(save_dir)))

    def instantiate_classes(self) -> None:
        from metakd.validation import check_data_fits_model

        try:
            super().instantiate_classes()
        except Exception as err:
            found = unwrap(err)
            if found is not None:
                config = self.config[self.subcommand] if self.subcommand else self.config
                where = where_built(found, config)
                if where:
                    annotate(found, where)
            raise
        # An input longer than an encoder's position embeddings would fail in the first batch.
        check_data_fits_model(self.datamodule, self.model)

    def after_fit(self) -> None:
        link_best_checkpoint(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Interrupted as stop:  # say where the run stopped and how to resume it
            ckpt_path = self.config[subcommand].get("ckpt_path")
            stop.detail, stop.resume = describe_stopped_trainer(self.trainer, subcommand, ckpt_path)
            raise

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand != "fit" and kwargs.get("ckpt_path") == "best":
            from metakd.checkpointing import check_checkpoint_file

            kwargs["ckpt_path"] = resolve_best_checkpoint(self.trainer)
            # (an explicit path was checked in _parse_ckpt_path; this is the one "best" resolved to)
            check_checkpoint_file(kwargs["ckpt_path"], expected=type(self.model).__name__)
        return kwargs

    def _parse_ckpt_path(self) -> None:
        # LightningCLI unpickles --ckpt_path here (for its hparams): check the file first for a clear error.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in ("last", "best", "hpc", "registry"):
            from metakd.checkpointing import check_checkpoint_file

            model = self.config[subcommand].get("model")
            class_path = model.get("class_path") if hasattr(model, "get") else None
            check_checkpoint_file(ckpt_path, expected=str(class_path or "Lightning").rpartition(".")[2])
        parsed = self.config
        try:
            super()._parse_ckpt_path()
        except ArgumentError as err:  # the checkpoint's stored hyperparameters do not fit this config
            annotate(err, f"in the hyperparameters stored in --ckpt_path {ckpt_path}")
            raise
        # Lightning lays the checkpoint's hyperparameters over the parsed config; a model option given on
        # the command line (`test --ckpt_path X --model.init_args.student_model.init_args.speed 0.4`) still
        # wins over them, as it would over a config file (a key inside a mapping: over the checkpoint's).
        overrides = model_options(getattr(self, "command_line", []))
        if self.config is not parsed and overrides:
            stored = self.config

            def parse(words: list[str]) -> Any:
                return self.parser.parse_args(words, namespace=stored)

            self.config = parse(expand_mapping_overrides(parse, [subcommand, *overrides]))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning_fabric.utilities.exceptions import MisconfigurationException
        from pytorch_lightning.callbacks import ProgressBar
        from pytorch_lightning.plugins.io import CheckpointIO

        from metakd.checkpointing import AtomicCheckpointIO, RNGStateCallback
        from metakd.progress import progress_bar_from_environment

        # Checkpoints are written atomically (metakd/checkpointing.py) unless the user picks a CheckpointIO.
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        # Random generator states travel with the checkpoints, so a resumed run draws the same numbers.
        callbacks = [*callbacks, RNGStateCallback()]
        # The progress bar: metakd's (a plain line now and then off a terminal; metakd/progress.py).
        given = config.get("callbacks")
        given = [] if given is None else given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(callback, ProgressBar) for callback in [*given, *callbacks]
        ):
            callbacks.append(progress_bar_from_environment())
        try:
            return super()._instantiate_trainer(config, callbacks)
        except MisconfigurationException as err:  # a bad trainer.* value, named by Lightning's message
            trainer_options = accepted_options("pytorch_lightning.Trainer")
            raise annotate(
                ConfigError(str(err)), _config_key("trainer", None, str(err), trainer_options)
            ) from err


def copy_optional_links(config: Any) -> None:
    """Copy ``DATA_TO_MODEL_OPTIONAL`` values from the data's init args into the model's, where accepted."""
    import importlib
    import inspect

    model, data = config.get("model"), config.get("data")
    if model is None or data is None or not model.get("class_path") or data.get("init_args") is None:
        return
    module_name, _, class_name = model.class_path.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module_name), class_name)).parameters
    for source, target in DATA_TO_MODEL_OPTIONAL.items():
        if target not in parameters or source not in data.init_args:
            continue
        value, current = data.init_args[source], model.init_args.get(target)
        if current is not None and value is not None and current != value:
            raise ConfigError(
                f"model.init_args.{target} is {current!r} but data.init_args.{source} is {value!r}; they "
                f"must agree (leave model.init_args.{target} unset: it is taken from the data)"
            )
        if current is None:
            model.init_args[target] = value


def link_best_checkpoint(trainer: Any) -> Path | None:
    """Give the best checkpoint a stable name, ``<dirpath>/best.ckpt`` (a hard link, else a copy).

    A student config then names its teacher as ``runs/<corpus>/meta_teacher/checkpoints/best.ckpt``.
    """
    import shutil

    callback = trainer.checkpoint_callback
    if callback is None or not callback.best_model_path or not trainer.is_global_zero:
        return None
    best = Path(callback.best_model_path)
    target = best.parent / "best.ckpt"
    if best.resolve() == target.resolve():
        return target
    partial = target.with_name(".best.ckpt.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(best, partial)
    except OSError:
        shutil.copyfile(best, partial)
    os.replace(partial, target)  # atomic: a reader never sees a half-written best.ckpt
    return target


def resolve_best_checkpoint(trainer: Any) -> str:
    """Path of the best checkpoint of an earlier `fit`, read from the run's ``last.ckpt``.

    Lightning only knows "best" within the process that fitted; a separate ``test`` process reads the
    ModelCheckpoint state saved in the last checkpoint.
    """
    import torch

    callback = trainer.checkpoint_callback
    if callback is None:
        raise ConfigError('ckpt_path "best" needs a ModelCheckpoint callback (the `checkpoint` section)')
    if callback.best_model_path:
        return callback.best_model_path
    dirpath = Path(callback.dirpath or ".")
    last = dirpath / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f'ckpt_path "best": no {last} from an earlier `fit` with this config; run fit first or pass a '
            "checkpoint path"
        )
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = value["best_model_path"]
            if Path(best).is_file():
                return best
            raise ConfigError(f'ckpt_path "best": {last} names {best}, which does not exist')
    raise ConfigError(f'ckpt_path "best": {last} records no best checkpoint (was val/acc ever logged?)')


class MetaKDSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml to ``trainer.log_dir`` and uploads the resolved config to a W&B run.

    For a ``WandbLogger`` the log_dir is the logger's save_dir (the run folder); W&B keeps its own
    ``config.yaml`` under ``<save_dir>/wandb/<run>/files/``, so neither file overwrites the other.
    """

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in wandb_loggers:
            logger.log_hyperparams(config)


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> MetaKDCLI:
    """Run the LightningCLI subcommands (fit/validate/test/predict); with ``run=False``, only parse ``args``
    (no subcommand) and build the trainer, model and datamodule.

    Parse errors raise ``ArgumentError`` (``exit_on_error=False``) instead of printing the usage and
    exiting: :func:`main`'s error boundary prints them as one ``error:`` line.
    """
    return MetaKDCLI(
        run=run,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MetaKDSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


def where_built(err: BaseException, config: Any) -> str | None:
    """``config key: data.init_args.target_domain (datamodules.JsonlDataModule)`` for an error raised in
    the ``__init__`` of the datamodule or the model that LightningCLI built (None when neither).

    The key is the init argument that the message names first, else the section (``data``/``model``).
    """
    from pytorch_lightning import LightningDataModule, LightningModule

    section = None
    tb = err.__traceback__
    while tb is not None and section is None:  # the outermost __init__ of a datamodule or a model
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__":
            owner = frame.f_locals.get("self")
            section = (
                "data"
                if isinstance(owner, LightningDataModule)
                else "model"
                if isinstance(owner, LightningModule)
                else None
            )
        tb = tb.tb_next
    if section is None:
        return None
    spec = config.get(section) if hasattr(config, "get") else None
    class_path = spec.get("class_path") if hasattr(spec, "get") else None
    options = accepted_options(str(class_path)) if class_path else []
    return _config_key(section, class_path, str(err), options)


def _config_key(section: str, class_path: str | None, message: str, options: list[str]) -> str:
    """``config key: <section>[.init_args].<the option named first in message> (<class_path>)``."""
    positions = {
        name: found.start()
        for name in options
        if (found := re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message)) is not None
    }
    prefix = f"{section}.init_args" if class_path else section
    key = f"{prefix}.{min(positions, key=positions.__getitem__)}" if positions else section
    return f"config key: {key}" + (f" ({class_path})" if class_path else "")


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EXTRA_COMMANDS = {
    "export": "metakd.export",
    "sweep": "metakd.sweep",
    "pipeline": "metakd.pipeline",
    "classify": "metakd.classify",
    "search": "metakd.search.command",
    "robustness": "metakd.robustness.command",
}
COMMANDS = (*LIGHTNING_COMMANDS, *EXTRA_COMMANDS)


def run_command(words: list[str], argv_given: bool = True) -> int:
    """Dispatch ``python -m metakd WORDS`` (without the error boundary: errors propagate)."""
    if words and words[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[words[0]])
        return int(module.main(words[1:]) or 0)
    usage = f"usage: python -m metakd {{{','.join(COMMANDS)}}} ... (a command's --help lists its options)"
    if not words:
        raise annotate(ConfigError("no command given"), usage)
    if not words[0].startswith("-") and words[0] not in LIGHTNING_COMMANDS:
        raise annotate(ConfigError(f"unknown command {words[0]!r}{suggest(words[0], list(COMMANDS))}"), usage)
    run_lightning_cli(words if argv_given else None)  # None: LightningCLI reads sys.argv itself
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m metakd`` and the ``metakd`` script; returns the exit status.

    ``--traceback`` (anywhere) is taken out of the arguments and shows the traceback of a bad-input error.
    A SIGINT or SIGTERM ends the command with one line and exit status 130 / 143.
    """
    return run_stoppable(lambda: run_main(argv))


def run_main(argv: list[str] | None = None) -> int:
    """:func:`main` without the stop handling (``python -m metakd`` installs it before importing this)."""
    words = list(sys.argv[1:] if argv is None else argv)
    show_traceback = traceback_requested(words)
    if TRACEBACK_FLAG in words:
        words = [word for word in words if word != TRACEBACK_FLAG]
        if argv is None:
            sys.argv[1:] = words  # LightningCLI reads sys.argv when given no args
    return run_with_error_boundary(
        lambda: run_command(words, argv_given=argv is not None), show_traceback=show_traceback
    )
