"""Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", arXiv
1903.12136): a small network learns the teacher's logits.

One prediction stage, per instance:

    mse:      L = alpha * CE(z_S, y) + (1 - alpha) * mean_c (z_S,c - z_T,c)^2
    soft_ce:  L = alpha * CE(z_S, y) + (1 - alpha) * sum_c -softmax(z_T/T)_c log softmax(z_S/T)_c [* T^2]

``mse`` is Tang et al.'s choice (the paper's ``||z_T - z_S||_2^2`` divided by the number of classes C,
the ``LogitMSE`` term: with ``alpha`` > 0 the CE term weighs C times more than in the paper's sum);
``soft_ce`` is Hinton et al.'s (2015), so the two can be compared on the same students. ``alpha`` is
``hard_label_weight`` (default 0: distillation only, Tang et al.'s setting for transfer sets whose
augmented examples carry no gold label). The hard-label CE is always logged as ``train/loss_ce``.
"""

from __future__ import annotations

from typing import Literal

from metakd.distill.base import Distiller, Stage, register_distiller
from metakd.distill.terms import HardCE, LogitKD, LogitMSE
from metakd.errors import StudentConfigError

OBJECTIVES = ("mse", "soft_ce")


@register_distiller("tang")
class TangKD(Distiller):
    """Logit distillation into a small student (see the module docstring): ``objective`` ``mse`` or
    ``soft_ce``, ``hard_label_weight`` alpha, ``temperature`` / ``t2_scaling`` for ``soft_ce``."""

    label = "Tang et al. logit KD"
    teacher_role = "mixed"

    def __init__(
        self,
        objective: Literal["mse", "soft_ce"] = "mse",
        hard_label_weight: float = 0.0,
        temperature: float = 2.0,
        t2_scaling: bool = True,
        prediction_lr: float = 3e-5,
    ) -> None:
        if objective not in OBJECTIVES:
            raise StudentConfigError(f"tang objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if not 0.0 <= hard_label_weight <= 1.0:
            raise StudentConfigError(
                f"tang hard_label_weight (alpha) must be in [0, 1], got {hard_label_weight}"
            )
        if temperature <= 0:
            raise StudentConfigError(f"tang temperature must be > 0, got {temperature}")
        self.objective, self.alpha = objective, hard_label_weight
        self.temperature, self.t2_scaling, self.prediction_lr = temperature, t2_scaling, prediction_lr

    def stages(self) -> list[Stage]:
        if self.objective == "mse":
            distill = LogitMSE(1.0 - self.alpha)
        else:
            distill = LogitKD(1.0 - self.alpha, self.temperature, self.t2_scaling)
        return [Stage("prediction", [distill, HardCE(self.alpha, monitor=True)], lr=self.prediction_lr)]
