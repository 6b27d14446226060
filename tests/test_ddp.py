"""Multi-process training: ``strategy="ddp"``, 2 CPU processes (gloo) vs one process on the same global batch.

Lightning's ``ddp`` re-runs the launching *script* for rank 1, so the DDP side cannot run inside the
pytest process: this file is also that script. The module fixture runs ``python tests/test_ddp.py OUT
TEACHER_CKPT`` once; rank 0 and rank 1 each fit (a) MetaTeacher ``prototype``, (b) MetaTeacher
``prototype+meta`` and (c) a meta-distilled Student (stage ``both``: 1 intermediate + 1 prediction
epoch) and save parameters, buffers and logged metrics to ``OUT/<case>-rank<r>.pt``. The tests then
fit the same cases in-process on 1 device with batch ``WORLD * b`` and compare.

Why the runs are comparable: dropout 0 everywhere, the same training order (see
:class:`OrderedToyData`: DDP step k covers exactly the examples of single-process batch k),
losses that are means of per-instance terms over the rank's b examples (DDP
averages the ranks' gradients = the gradient of the global mean), deterministic domain targets
(``domain_loss="reversal"``; ``corruption`` draws a permutation per rank's batch) and split sizes
that divide evenly (the DistributedSampler pads with duplicates otherwise).

Meta weighting is per rank under DDP (each rank normalises its own b weights against its own
held-out batch), so ``prototype+meta`` is checked for running, finite and identical-across-ranks
parameters only (docs/MULTI_GPU.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers, also when run as a script
from helpers import (  # noqa: E402
    ToyMultiDomainDataModule,
    metakd_env,
    pad_collate,
    tiny_student,
    tiny_teacher,
    tiny_trainer,
    train_tiny_teacher,
)

WORLD = 2
SEED = 0
TEACHER_BATCH = 4  # per device: 24 training examples -> 3 steps, 12 val examples -> 6 per rank
STUDENT_BATCH = 2  # per device: 8 target-domain examples -> 2 steps per epoch, 4 val -> 2 per rank
TEACHER_CASES = ("prototype", "prototype+meta")
PARAM_ATOL = 2e-5  # float reduction-order noise after 3 AdamW steps; the updates are ~1e-3 and larger


class OrderedToyData(ToyMultiDomainDataModule):
    """The toy data, its single-process training order made the one DDP uses.

    Under DDP Lightning always puts a *shuffling* ``DistributedSampler(seed=PL_GLOBAL_SEED)`` on the
    training loader (whatever its own ``shuffle``): epoch e permutes the examples with
    ``randperm(N, seed + e)`` and rank r takes every WORLD-th one from position r, so DDP step k
    covers positions [k * WORLD * b, (k + 1) * WORLD * b) of that permutation. A one-replica
    ``DistributedSampler`` with the same seed yields the same permutation in order, so one process
    with batch WORLD * b sees exactly the same global batches.
    """

    def train_dataloader(self) -> DataLoader:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return super().train_dataloader()  # Lightning replaces the sampler
        sampler = DistributedSampler(self.train_dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
        return DataLoader(self.train_dataset, self.batch_size, sampler=sampler, collate_fn=pad_collate)


def make_data(batch_size: int, target_domain: str | None = None) -> OrderedToyData:
    return OrderedToyData(
        train_per_domain=8,
        eval_per_domain=4,
        batch_size=batch_size,
        backbone="minilm-l6",
        target_domain=target_domain,
    )


class WrapperProbe(pl.Callback):
    """Records, while training, the module the strategy wrapped (Lightning unwraps it at teardown)."""

    wrapper = ""
    param_ids: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wrapper = type(trainer.strategy.model).__name__
        self.param_ids = {id(p) for p in trainer.strategy.model.parameters()}


def make_trainer(devices: int, max_epochs: int, strategy: str = "ddp") -> pl.Trainer:
    return pl.Trainer(
        callbacks=[WrapperProbe()],
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def probe(trainer: pl.Trainer) -> WrapperProbe:
    return next(c for c in trainer.callbacks if isinstance(c, WrapperProbe))


def val_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def fit_teacher(weighting: str, devices: int, batch_size: int) -> dict[str, Any]:
    pl.seed_everything(SEED, verbose=False)
    data = make_data(batch_size)
    model = tiny_teacher(
        data, weighting=weighting, domain_loss="reversal", dropout=0.0, learning_rate=1e-3, warmup_ratio=0.0
    )
    initial = flat_params(model.network)
    trainer = make_trainer(devices, max_epochs=1)
    trainer.fit(model, datamodule=data)
    return {
        "world_size": trainer.world_size,
        "wrapper": probe(trainer).wrapper,
        "steps": trainer.global_step,
        "initial": initial,
        "params": flat_params(model.network),
        "transferability": model.transferability.detach().cpu(),
        "prototypes": model.prototypes.detach().cpu(),
        "metrics": val_metrics(trainer),
    }


def fit_student(teacher_ckpt: str, devices: int, batch_size: int) -> dict[str, Any]:
    pl.seed_everything(SEED, verbose=False)
    data = make_data(batch_size, target_domain="dom1")
    model = tiny_student(
        teacher_ckpt,
        data,
        distillation="meta",
        intermediate_epochs=1,
        intermediate_lr=1e-3,
        prediction_lr=1e-3,
    )
    teacher = model.teacher
    teacher_before = flat_params(teacher)
    initial = flat_params(model)
    # stage "both": the classifier is unused in the intermediate stage, the projections in the prediction
    # stage
    trainer = make_trainer(devices, max_epochs=2, strategy="ddp_find_unused_parameters_true")
    trainer.fit(model, datamodule=data)
    teacher_ids = {id(p) for p in teacher.parameters()}
    wrapped_ids = probe(trainer).param_ids
    return {
        "world_size": trainer.world_size,
        "wrapper": probe(trainer).wrapper,
        "steps": trainer.global_step,
        "initial": initial,
        "params": flat_params(model),
        "metrics": val_metrics(trainer),
        "wrapped_has_teacher_params": bool(teacher_ids & wrapped_ids),
        "wrapped_equals_student_params": wrapped_ids == {id(p) for p in model.parameters()},
        "teacher_unchanged": torch.equal(teacher_before, flat_params(teacher)),
        "teacher_grads_none": all(p.grad is None for p in teacher.parameters()),
        "teacher_training": teacher.training,
        "transferability": model.distiller.transferability.detach().cpu(),
    }


def ddp_main(out_dir: str, teacher_ckpt: str) -> None:
    """What each DDP process runs (rank 1 is started by Lightning re-running this script)."""
    torch.set_num_threads(1)
    out = Path(out_dir)
    for weighting in TEACHER_CASES:
        result = fit_teacher(weighting, devices=WORLD, batch_size=TEACHER_BATCH)
        rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.save(result, out / f"teacher-{weighting}-rank{rank}.pt")
    result = fit_student(teacher_ckpt, devices=WORLD, batch_size=STUDENT_BATCH)
    torch.save(result, out / f"student-rank{int(os.environ.get('LOCAL_RANK', 0))}.pt")


# ------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    # The same pooled split as the students' data (seed and sizes), so the stored t_i are used.
    path = tmp_path_factory.mktemp("ddp_teacher") / "teacher.ckpt"
    pl.seed_everything(SEED, verbose=False)
    return train_tiny_teacher(str(path), datamodule=make_data(8))


@pytest.fixture(scope="module")
def ddp_results(
    tmp_path_factory: pytest.TempPathFactory, teacher_ckpt: str
) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp_out")
    env = metakd_env(
        extra_env={
            "OMP_NUM_THREADS": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore",
        }
    )
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)  # a fresh launch: Lightning starts rank 1 itself
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out), teacher_ckpt],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    names = [f"teacher-{w}" for w in TEACHER_CASES] + ["student"]
    return {
        name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=False) for r in range(WORLD)]
        for name in names
    }


def assert_ran_ddp(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["world_size"] == WORLD
        assert result["wrapper"] == "DistributedDataParallel"
    # DDP averages the gradients, so every rank takes the same optimiser step.
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert torch.isfinite(ranks[0]["params"]).all()


def assert_same_metrics(ranks: list[dict[str, Any]], single: dict[str, float], keys: list[str]) -> None:
    """Reduced over the ranks: the same number on every rank, and the single-process value."""
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # a rank-local value would differ
    ddp = ranks[0]["metrics"]
    for key in keys:
        assert key in ddp and key in single, (key, sorted(ddp), sorted(single))
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


def test_teacher_prototype_ddp_equals_single_process(ddp_results) -> None:
    ranks = ddp_results["teacher-prototype"]
    single = fit_teacher("prototype", devices=1, batch_size=WORLD * TEACHER_BATCH)
    assert_ran_ddp(ranks)
    assert ranks[0]["steps"] == single["steps"] == 3

    # t_i and prototypes: every rank computes them over the whole (unsharded) train_eval_dataloader.
    t = ranks[0]["transferability"]
    assert t.shape == (24,) and torch.isfinite(t).all()
    assert torch.equal(t, ranks[1]["transferability"])
    assert torch.equal(ranks[0]["prototypes"], ranks[1]["prototypes"])
    assert torch.allclose(t, single["transferability"], atol=1e-6)

    assert torch.equal(ranks[0]["initial"], single["initial"])
    update = (single["params"] - single["initial"]).abs().max()
    assert update > 50 * PARAM_ATOL  # the comparison below is not trivially satisfied
    assert (ranks[0]["params"] - single["params"]).abs().max() < PARAM_ATOL

    # val/acc, val/loss and the per-domain accuracies are reduced over both ranks' halves of the val set.
    keys = ["val/acc", "val/loss"] + [f"val/acc_dom{k}" for k in range(3)]
    assert_same_metrics(ranks, single["metrics"], keys)


def test_teacher_prototype_meta_runs_under_ddp(ddp_results) -> None:
    ranks = ddp_results["teacher-prototype+meta"]
    assert_ran_ddp(ranks)
    assert ranks[0]["steps"] == 3
    assert torch.equal(ranks[0]["transferability"], ranks[1]["transferability"])
    assert (ranks[0]["params"] - ranks[0]["initial"]).abs().max() > 1e-4
    for result in ranks:
        metrics = result["metrics"]
        assert {"val/acc", "val/loss", "val/acc_dom0"} <= set(metrics)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_student_ddp_equals_single_process_and_teacher_is_not_wrapped(ddp_results, teacher_ckpt: str) -> None:
    ranks = ddp_results["student"]
    single = fit_student(teacher_ckpt, devices=1, batch_size=WORLD * STUDENT_BATCH)
    assert_ran_ddp(ranks)
    assert ranks[0]["steps"] == single["steps"] == 4  # 2 intermediate + 2 prediction steps

    for result in ranks:
        assert not result["wrapped_has_teacher_params"]
        assert result["wrapped_equals_student_params"]
        assert result["teacher_unchanged"] and result["teacher_grads_none"]
        assert not result["teacher_training"]
        assert torch.equal(result["transferability"], single["transferability"])

    assert torch.equal(ranks[0]["initial"], single["initial"])
    update = (single["params"] - single["initial"]).abs().max()
    assert update > 50 * PARAM_ATOL
    assert (ranks[0]["params"] - single["params"]).abs().max() < PARAM_ATOL
    assert_same_metrics(ranks, single["metrics"], ["val/acc", "val/stage1_acc", "val/loss"])


if __name__ == "__main__":
    ddp_main(sys.argv[1], sys.argv[2])


def test_meta_look_ahead_runs_in_fp32_under_bf16_mixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--trainer.precision bf16-mixed``: the training forward autocasts, the meta look-ahead does not."""
    import metakd.meta_teacher.meta_weights as meta_module  # where the teacher calls it

    seen: dict[str, list] = {"look_ahead": [], "step": []}
    real = meta_module.meta_instance_weights

    def spy(model, train_losses_fn, heldout_losses_fn, **kwargs):
        def train_losses(fmodel, rows):
            seen["look_ahead"].append(torch.is_autocast_enabled("cpu"))
            return train_losses_fn(fmodel, rows)

        seen["step"].append(torch.is_autocast_enabled("cpu"))
        return real(model, train_losses, heldout_losses_fn, **kwargs)

    monkeypatch.setattr(meta_module, "meta_instance_weights", spy)
    pl.seed_everything(SEED, verbose=False)
    data = make_data(8)
    model = tiny_teacher(data, weighting="prototype+meta", learning_rate=1e-3)
    trainer = tiny_trainer(precision="bf16-mixed")
    trainer.fit(model, datamodule=data)
    assert seen["step"] == [True, True]  # training_step runs under autocast ...
    # ... the look-ahead with autocast off (fp32); the jvp engine evaluates one sub-batch per training domain
    assert seen["look_ahead"] and set(seen["look_ahead"]) == {False}
    assert torch.isfinite(flat_params(model.network)).all()
