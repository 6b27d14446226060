"""Golden (characterization) runs of the MetaTeacher: one per weighting, meta engine, parameter scope,
domain loss and t_i scaling.

Each run builds a tiny seeded teacher on the toy corpus, trains a few real steps and records what a
refactor must not change: every step's logged losses and instance weights w_i, the t_i buffer and the
prototypes, the logged metric keys, the state_dict keys and shapes, the checkpoint's entries and a
checksum of the weights after training. Two tiny teacher checkpoints (``teacher_v1.ckpt``, a MetaTeacher,
and ``mtl_v1.ckpt``, a MultiTaskTeacher) and their logits on a fixed batch pin the checkpoint format:
a later version must load them and compute the same logits.

``python tests/golden/teacher_golden.py`` rewrites ``teacher_golden.json`` and the checkpoints from the
current code; ``tests/test_teacher_golden.py`` compares a fresh run with the committed files. They were
generated from commit 3ff1a9f (before the MetaTeacher was split into parts) and must not be regenerated
to make a refactor pass.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GOLDEN_FILE = HERE / "teacher_golden.json"
CHECKPOINTS = {"teacher": HERE / "teacher_v1.ckpt", "mtl": HERE / "mtl_v1.ckpt"}

STEPS = 3
# (run name, MetaTeacher overrides, datamodule overrides); "teacher_class": "mtl" builds a MultiTaskTeacher
RUNS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("prototype/corruption", {}, {}),
    ("prototype/reversal/domain_class", {"domain_loss": "reversal", "prototype_granularity": "domain_class"}, {}),
    ("prototype/padded_mean_skip_cls", {"prototype_pooling": "padded_mean_skip_cls"}, {}),
    ("prototype/scale_mean1", {"transferability_scale": "mean1"}, {}),
    ("prototype/scale_temperature", {"transferability_scale": "temperature:0.5"}, {}),
    ("prototype/one_domain", {}, {"target_domain": "dom2"}),
    ("none/none", {"weighting": "none", "domain_loss": "none"}, {}),
    ("none/corruption", {"weighting": "none"}, {}),
    ("meta/jvp/all", {"weighting": "meta"}, {}),
    ("meta/higher/all", {"weighting": "meta", "meta_engine": "higher"}, {}),
    ("meta/jvp/head", {"weighting": "meta", "meta_params": "head"}, {}),
    ("meta/higher/head", {"weighting": "meta", "meta_engine": "higher", "meta_params": "head"}, {}),
    ("meta/jvp/last_k", {"weighting": "meta", "meta_params": "last_k", "meta_last_k": 1}, {}),
    ("meta/higher/last_k", {"weighting": "meta", "meta_engine": "higher", "meta_params": "last_k"}, {}),
    ("meta/jvp/heldout_all/reversal", {"weighting": "meta", "meta_heldout": "all", "domain_loss": "reversal"}, {}),
    ("meta/jvp/every_2/none", {"weighting": "meta", "meta_every_n_steps": 2, "domain_loss": "none"}, {}),
    ("prototype+meta/jvp", {"weighting": "prototype+meta"}, {}),
    ("prototype+meta/higher/reversal", {"weighting": "prototype+meta", "meta_engine": "higher", "domain_loss": "reversal"}, {}),
    ("prototype+meta/jvp/mean1", {"weighting": "prototype+meta", "transferability_scale": "mean1"}, {}),
    ("mtl", {"teacher_class": "mtl", "weighting": "none", "domain_loss": "none"}, {}),
]  # fmt: skip

STEP_KEYS = ("train/loss", "train/loss_cls", "train/loss_domain", "train/weight_mean", "train/lr")


def _floats(tensor: Any) -> list[float | None]:
    """A tensor as a list of floats (NaN as None, so the JSON stays standard)."""
    return [
        None if value != value else float(value) for value in tensor.detach().double().reshape(-1).tolist()
    ]


def _teacher_class(name: str | None) -> Any:
    from metakd.teacher import MetaTeacher
    from metakd.teacher_mtl import MultiTaskTeacher

    return MultiTaskTeacher if name == "mtl" else MetaTeacher


def run_one(overrides: dict[str, Any], data_overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one teacher a few steps; return per-step losses and weights, t_i and the layout."""
    import pytorch_lightning as pl
    import torch
    from helpers import ToyMultiDomainDataModule, tiny_teacher, tiny_trainer

    overrides = dict(overrides)
    cls = _teacher_class(overrides.pop("teacher_class", None))
    pl.seed_everything(0, verbose=False)
    data = ToyMultiDomainDataModule(**data_overrides)
    model = tiny_teacher(data, teacher_class=cls, backbone="tiny-test-bert", learning_rate=1e-3, **overrides)
    steps: list[dict[str, Any]] = []
    instance_weights = model.instance_weights

    def recording(batch: Any, domain_targets: Any) -> Any:
        weights = instance_weights(batch, domain_targets)
        steps.append({"example_ids": batch["example_ids"].tolist(), "weights": _floats(weights)})
        return weights

    model.instance_weights = recording
    recorder = _StepRecorder.make(steps)
    trainer = tiny_trainer(max_steps=STEPS, callbacks=[recorder])
    trainer.fit(model, datamodule=data)
    fit_keys = sorted(trainer.callback_metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.ckpt"
        trainer.save_checkpoint(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = model.state_dict()
    return {
        "steps": steps,
        "fit_metric_keys": fit_keys,
        "transferability": _floats(model.transferability),
        "prototypes": _floats(model.prototypes),
        "state_dict": {k: list(v.shape) for k, v in state.items()},
        "final_abs_sum": float(sum(v.detach().double().nan_to_num().abs().sum() for v in state.values())),
        "checkpoint_keys": sorted(checkpoint),
        "hyper_parameters": {k: repr(v) for k, v in sorted(checkpoint["hyper_parameters"].items())},
        "checkpoint_entries": {
            key: repr(checkpoint[key])
            for key in ("metakd_teacher_class", "metakd_teacher_identity", "transferability_options")
        },
    }


class _StepRecorder:
    """Appends each training step's logged losses to the step's record (a Lightning callback)."""

    @staticmethod
    def make(steps: list[dict[str, Any]]) -> Any:
        import pytorch_lightning as pl

        class Recorder(pl.Callback):
            def on_train_batch_end(
                self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int
            ) -> None:
                metrics = trainer.callback_metrics
                steps[-1].update({key: float(metrics[key]) for key in STEP_KEYS if key in metrics})
                for key in ("train/meta_zero_frac", "train/meta_fallback"):
                    if key in metrics:
                        steps[-1][key] = float(metrics[key])

        return Recorder()


def checkpoint_batch() -> dict[str, Any]:
    """A fixed batch of the toy corpus (every domain) for the checkpoints' logits."""
    from helpers import ToyMultiDomainDataModule, pad_collate

    data = ToyMultiDomainDataModule()
    data.setup("fit")
    return pad_collate(data.train_dataset.rows[::4])


def checkpoint_config() -> dict[str, Any]:
    """A very small encoder (the toy corpus's token ids stay below 5000), so the files stay small."""
    from helpers import tiny_encoder_config

    return tiny_encoder_config(
        vocab_size=5000, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        max_position_embeddings=16,
    )  # fmt: skip


def checkpoint_outputs(model: Any) -> dict[str, Any]:
    """What a loaded checkpoint computes on :func:`checkpoint_batch` (eval mode)."""
    import torch

    batch = checkpoint_batch()
    model.eval()
    with torch.no_grad():
        out = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["domain_ids"],
            output_hidden_states=True,
        )  # fmt: skip
    return {
        "logits": _floats(out.logits),
        "transferable": None if out.transferable is None else _floats(out.transferable),
        "last_hidden_abs_sum": float(out.hidden_states[-1].double().abs().sum()),
        "transferability": _floats(model.transferability),
        "prototypes": _floats(model.prototypes),
    }


def write_checkpoints() -> dict[str, Any]:
    """Train the two tiny teachers 2 steps, save their weights-only checkpoints, return their outputs."""
    import pytorch_lightning as pl
    from helpers import ToyMultiDomainDataModule, tiny_teacher, tiny_trainer

    outputs = {}
    for name, path in CHECKPOINTS.items():
        pl.seed_everything(0, verbose=False)
        data = ToyMultiDomainDataModule(backbone="minilm-l6")
        overrides = {"weighting": "none", "domain_loss": "none"} if name == "mtl" else {}
        cls = _teacher_class(name)
        model = tiny_teacher(data, teacher_class=cls, encoder_config=checkpoint_config(), **overrides)
        trainer = tiny_trainer(max_steps=2)
        trainer.fit(model, datamodule=data)
        trainer.save_checkpoint(path, weights_only=True)
        outputs[name] = checkpoint_outputs(cls.load_from_checkpoint(path, map_location="cpu"))
    return outputs


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread while the runs train: their results depend on the thread count at 1e-6."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_all(names: list[str] | None = None) -> dict[str, Any]:
    with one_thread():
        return {run[0]: run_one(run[1], run[2]) for run in RUNS if names is None or run[0] in names}


def main() -> None:
    """Rewrite the golden file and checkpoints (only from the code they are meant to pin)."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with one_thread():
        checkpoints = write_checkpoints()
    results = {"runs": run_all(), "checkpoints": checkpoints}
    GOLDEN_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_FILE} ({len(results['runs'])} runs) and {len(CHECKPOINTS)} checkpoints")


if __name__ == "__main__":
    main()
