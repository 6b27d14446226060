"""BERT-of-Theseus, compression by progressive module replacing (Xu et al., EMNLP 2020, arXiv 2002.02925).

Two stages on the task loss alone (no distillation loss; the teacher is the *predecessor*, whose frozen
layers run inside the student, ``metakd/students/theseus.py``):

1. ``replacement`` (``replacing_epochs``): every step, each block of k predecessor layers is replaced by
   its successor module with probability p(t) (independent Bernoulli draws, t = optimiser steps so
   far), and the mixed model is trained with cross-entropy; only the successor modules and the
   classifier head train.
2. ``successor`` (the rest of the run): successor fine-tuning, p = 1: the compact model alone.

The replacement rate follows ``scheduler``:

- ``constant``: p(t) = ``replacing_rate`` (default 0.5);
- ``linear``: the curriculum p(t) = min(1, k * t + b) with ``linear_k`` = 6e-4 and ``linear_b`` = 0.3.

Defaults from the authors' code (github.com/JetRunner/BERT-of-Theseus, its README's two commands:
``--replacing_rate 0.5 --steps_for_replacing 2500`` for the constant rate, ``--replacing_rate 0.3
--scheduler_type linear --scheduler_linear_k 0.0006`` for the curriculum). The authors switch from the
constant rate to p = 1 after ``steps_for_replacing`` steps; here the stage boundary is an epoch
(``replacing_epochs``). With k = 6e-4 the curriculum reaches 1 after (1 - 0.3) / 6e-4 = 1167 steps; on a
shorter budget set ``linear_k`` to (1 - b) / (the replacement stage's steps).

The student must be the module-replacing architecture (``model.student_model: {class_path: theseus,
init_args: {num_successors: n}}``); the teacher (``model.teacher_ckpt``) an HF BERT classifier or a
MetaTeacher. Its pipeline row uses the domain's single-domain teacher as predecessor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor

from metakd.distill.base import DistillContext, Distiller, Stage, register_distiller
from metakd.distill.terms import HardCE
from metakd.errors import StudentConfigError

SCHEDULERS = ("constant", "linear")


def replacement_rate(
    step: int, scheduler: str, replacing_rate: float, linear_k: float, linear_b: float
) -> float:
    """p(t) at optimiser step ``step`` (t = 0 for the first step): ``replacing_rate`` (constant) or
    ``min(1, linear_k * t + linear_b)`` (linear curriculum)."""
    if scheduler == "constant":
        return replacing_rate
    return min(1.0, linear_k * step + linear_b)


@register_distiller("theseus")
class BertOfTheseus(Distiller):
    """BERT-of-Theseus (see the module docstring)."""

    label = "BERT-of-Theseus"
    teacher_role = "single"

    def __init__(
        self,
        scheduler: Literal["constant", "linear"] = "constant",
        replacing_rate: float = 0.5,
        linear_k: float = 6e-4,
        linear_b: float = 0.3,
        replacing_epochs: int = 2,
        prediction_lr: float = 3e-5,
    ) -> None:
        key = "model.init_args.distillation_options"
        if scheduler not in SCHEDULERS:
            raise StudentConfigError(f"{key}.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
        if not 0.0 < replacing_rate <= 1.0:
            raise StudentConfigError(f"{key}.replacing_rate must be in (0, 1], got {replacing_rate!r}")
        if linear_k < 0.0:
            raise StudentConfigError(f"{key}.linear_k must be >= 0, got {linear_k!r}")
        if not 0.0 < linear_b <= 1.0:
            raise StudentConfigError(f"{key}.linear_b must be in (0, 1], got {linear_b!r}")
        if not isinstance(replacing_epochs, int) or replacing_epochs < 1:
            raise StudentConfigError(
                f"{key}.replacing_epochs must be an integer >= 1, got {replacing_epochs!r}"
            )
        self.scheduler, self.replacing_rate = scheduler, float(replacing_rate)
        self.linear_k, self.linear_b = float(linear_k), float(linear_b)
        self.replacing_epochs, self.prediction_lr = replacing_epochs, prediction_lr

    def stages(self) -> list[Stage]:
        return [
            Stage("replacement", [HardCE()], epochs=self.replacing_epochs, lr=self.prediction_lr),
            Stage("successor", [HardCE()], lr=self.prediction_lr),
        ]

    def rate(self, step: int) -> float:
        """p(t) of the replacement stage."""
        return replacement_rate(step, self.scheduler, self.replacing_rate, self.linear_k, self.linear_b)

    def check(self, context: DistillContext) -> None:
        if not callable(getattr(context.student, "set_replacing_rate", None)):
            raise StudentConfigError(
                "distillation='theseus' trains a module-replacing student: set model.student_model to "
                "{class_path: theseus, init_args: {num_successors: n}} (and student_layers / student_config "
                f"to null); got {type(context.student).__name__}"
            )

    def on_train_batch_start(self, module: Any, batch: Mapping[str, Tensor], stage: Stage) -> None:
        rate = self.rate(int(module.global_step)) if stage.name == "replacement" else 1.0
        module.model.set_replacing_rate(rate)
        module.log("train/replacing_rate", rate, batch_size=int(batch["labels"].shape[0]))
