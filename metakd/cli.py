"""Command line: ``python -m metakd {fit,validate,test,predict} --config ...`` (LightningCLI) and
``python -m metakd export ...``.

Configs name the classes, e.g. ``model.class_path: metakd.MetaTeacher`` and
``data.class_path: datamodules.AmazonReviewsDataModule``. The datamodule's label and domain sets are
linked into the model (``link_arguments(..., apply_on="instantiate")``), so a config never repeats them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

# Attributes every datamodule exposes after __init__, and the model init arg each one fills.
DATA_TO_MODEL_LINKS = {
    "num_labels": "num_labels",
    "num_domains": "num_domains",
    "domain_names": "domain_names",
    "label_names": "label_names",
}


class MetaKDCLI(LightningCLI):
    """LightningCLI with metakd's checkpointing and datamodule -> model links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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

    def before_instantiate_classes(self) -> None:
        # Checkpoints go to a fixed folder under default_root_dir (not a versioned log folder) so that
        # a later process finds them: `fit --ckpt_path last` resumes, `test --ckpt_path best` evaluates.
        config = self.config[self.subcommand] if self.subcommand else self.config
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

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand != "fit" and kwargs.get("ckpt_path") == "best":
            kwargs["ckpt_path"] = resolve_best_checkpoint(self.trainer)
        return kwargs


def resolve_best_checkpoint(trainer: Any) -> str:
    """Path of the best checkpoint of an earlier `fit`, read from the run's ``last.ckpt``.

    Lightning only knows "best" within the process that fitted; a separate ``test`` process reads the
    ModelCheckpoint state saved in the last checkpoint.
    """
    import torch

    callback = trainer.checkpoint_callback
    if callback is None:
        raise ValueError('ckpt_path "best" needs a ModelCheckpoint callback (the `checkpoint` section)')
    if callback.best_model_path:
        return callback.best_model_path
    dirpath = Path(callback.dirpath or ".")
    last = dirpath / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(
            f'ckpt_path "best": no {last} from an earlier `fit` with this config; run fit first or pass a '
            "checkpoint path"
        )
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = value["best_model_path"]
            if Path(best).is_file():
                return best
            raise FileNotFoundError(f'ckpt_path "best": {last} names {best}, which does not exist')
    raise ValueError(f'ckpt_path "best": {last} records no best checkpoint (was val/acc ever logged?)')


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


def run_lightning_cli(args: list[str] | None = None) -> MetaKDCLI:
    """Run the LightningCLI subcommands (fit/validate/test/predict)."""
    return MetaKDCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MetaKDSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


EXTRA_COMMANDS = {
    "export": "metakd.export",
    "sweep": "metakd.sweep",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m metakd`` and the ``metakd`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[argv[0]])
        return int(module.main(argv[1:]) or 0)
    run_lightning_cli(argv)
    return 0
