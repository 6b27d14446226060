"""What a cell records while it runs: Lightning callbacks that the pipeline puts into every cell's config.

:class:`TestMetricsWriter` (the test metrics), :class:`DevCurveWriter` (every dev check and how the fit
ended) and :class:`PredictionsWriter` (the per-example test predictions) write files into the cell's store
folder, atomically; the runner (:mod:`metakd.pipeline.runner`) reads them into the cell's result file. No
log is parsed. Their class paths in a cell's config are ``metakd.pipeline.<Writer>`` (the package's public
names): a cell's store key leaves out every callback under ``metakd.pipeline.`` (:mod:`.cellstore`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metakd.utils import write_json

try:  # the callbacks need Lightning; the rest of the pipeline does not
    from pytorch_lightning import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


TEST_METRICS_FILE = "test_metrics.json"
DEV_CURVE_FILE = "dev_curve.json"
PREDICTIONS_FILE = "predictions.jsonl"


def test_set_path(path: str | Path, test_set: str | None) -> Path:
    """``path`` for the test set ``test_set``: unchanged for ``test`` (the corpus's test split), else with
    ``_<test_set>`` before the suffix (``predictions.jsonl`` -> ``predictions_test_large.jsonl``)."""
    path = Path(path)
    if test_set in (None, "test"):
        return path
    return path.with_name(f"{path.stem}_{test_set}{path.suffix}")


def _test_set_of(trainer: Any) -> str | None:
    return getattr(getattr(trainer, "datamodule", None), "test_set", None)


class TestMetricsWriter(_Callback):  # type: ignore[misc,valid-type]
    """Writes ``trainer.callback_metrics`` of a test run (``test/*``) to ``path`` as JSON, atomically (for a
    datamodule's other ``test_set``, to :func:`test_set_path`)."""

    __test__ = False  # not a pytest class

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from metakd.sweep import scalar_metrics

        metrics = scalar_metrics(trainer.callback_metrics, prefix="test/")
        payload = {"metrics": metrics, "ckpt_path": str(getattr(trainer, "ckpt_path", None) or "")}
        write_json(test_set_path(self.path, _test_set_of(trainer)), payload)


class DevCurveWriter(_Callback):  # type: ignore[misc,valid-type]
    """Records the dev curve of a fit: ``val/*`` after every validation run, then how the fit ended.

    ``path`` (JSON) holds ``{"checks": [{"step", "epoch", "val/acc", ...}, ...], "end": {...}}``, rewritten
    atomically after each check. A resumed fit keeps the earlier checks (a check at the same step is
    replaced). ``end``: the last global step, the trainer's ``max_steps``/``max_epochs``, the best
    checkpoint and its score, whether early stopping stopped the fit, and the size of the training set
    (``train_examples``, when the datamodule has a ``train_dataset``: what the CPU plan's cost model reads).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.checks: dict[int, dict[str, Any]] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        path = Path(self.path)
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.checks = {int(c["step"]): c for c in stored.get("checks", [])}

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        from metakd.sweep import scalar_metrics

        entry = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
        entry.update(scalar_metrics(trainer.callback_metrics, prefix="val/"))
        self.checks[entry["step"]] = entry
        self._write(None)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from pytorch_lightning.callbacks import EarlyStopping

        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
        end = {
            "global_step": int(trainer.global_step),
            "max_steps": int(trainer.max_steps),
            "max_epochs": trainer.max_epochs,
            "best_model_path": str(getattr(checkpoint, "best_model_path", "") or ""),
            "best_score": float(score) if score is not None else None,
            "early_stopped": any(int(c.wait_count) >= int(c.patience) for c in stoppers),
            "early_stopping": [{"monitor": c.monitor, "patience": c.patience} for c in stoppers],
        }
        train = getattr(getattr(trainer, "datamodule", None), "train_dataset", None)
        if train is not None:
            end["train_examples"] = len(train)
        self._write(end)

    def _write(self, end: dict[str, Any] | None) -> None:
        path = Path(self.path)
        payload: dict[str, Any] = {"checks": [self.checks[s] for s in sorted(self.checks)]}
        if end is not None:
            payload["end"] = end
        write_json(path, payload)


class PredictionsWriter(_Callback):  # type: ignore[misc,valid-type]
    """Saves the per-example predictions of a test run to ``path`` (JSON Lines, one row per example).

    Reads what ``test_step`` returns: a dict with ``example_ids``, ``domain_ids``, ``labels`` and
    ``logits`` for the rows it evaluated. Row: ``{"example_id", "domain", "label", "pred", "logits"}``
    (``domain`` by name when the module has ``domain_names``). A ``test_step`` that returns nothing
    gives no file (the report then says that the cell's predictions are missing). On several devices each
    rank writes its own rows to ``<path>.rank<k>``.
    """

    KEYS = ("example_ids", "domain_ids", "labels", "logits")

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.rows = []

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, dict) or any(key not in outputs for key in self.KEYS):
            return
        names = list(getattr(pl_module, "domain_names", None) or [])
        logits = outputs["logits"].detach().float().cpu()
        for example, domain, label, row in zip(
            outputs["example_ids"].tolist(),
            outputs["domain_ids"].tolist(),
            outputs["labels"].tolist(),
            logits,
        ):
            self.rows.append(
                {
                    "example_id": int(example),
                    "domain": names[domain] if domain < len(names) else int(domain),
                    "label": int(label),
                    "pred": int(row.argmax()),
                    "logits": [round(float(v), 5) for v in row],
                }
            )

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        path = test_set_path(self.path, _test_set_of(trainer))
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        if not self.rows:
            path.unlink(missing_ok=True)  # no stale file from an earlier run
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        os.replace(partial, path)


def read_predictions(path: Path) -> list[dict[str, Any]] | None:
    """The rows a :class:`PredictionsWriter` wrote, or None when there is no file."""
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
