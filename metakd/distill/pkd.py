"""BERT-PKD, patient knowledge distillation (Sun et al., EMNLP 2019, arXiv 1908.09355).

One stage, three terms:

    L_PKD = (1 - alpha) * CE(z_S, y) + alpha * softCE_T(z_S, z_T) [* T^2]
            + beta * sum_{(m, n) in map} || h_S,m / ||h_S,m||_2 - h_T,n / ||h_T,n||_2 ||_2^2

on the [CLS] states ``h`` of the mapped layers: PKD-skip (student layer m learns teacher layer
``m * L_T / L_S``, every k-th) or PKD-last (the teacher's last layers below its top); the student's last
layer is left to the logit term. When the widths differ, the student's states go through a learned
projection first.

``alpha`` weights the teacher's soft targets, as in the paper (eq. 5: ``(1 - alpha) L_CE + alpha L_DS +
beta L_PT``) and the authors' code (``alpha * d_loss + (1 - alpha) * nll_loss``): alpha = 0.7 is 70%
distillation, 30% gold labels.

Defaults: ``alpha`` 0.5 and ``temperature`` 5 are from the paper's search grid (alpha in {0.2, 0.5, 0.7},
T in {5, 10, 20}); ``t2_scaling`` as in the authors' code (KL x T^2). The paper's beta grid
{10, 100, 500, 1000} belongs to the authors' code, which averages the squared difference over the
hidden units (768 on BERT-base); the formula above sums them, so ``beta`` = 1.0 here sits in that range
(500 / 768 to 1000 / 768).

Still different from the authors' code (docs/METAKD.md, "Other methods"): the soft term is the soft
cross-entropy (KL plus the teacher's entropy, a constant: same gradient), averaged over the batch, where
the code's ``KLDivLoss(reduction='mean')`` also divides by the number of classes; the patient loss is
summed over the hidden units and the mapped layers, where the code's ``mse_loss`` averages both (see
beta above).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from metakd.distill.base import Distiller, Stage, register_distiller
from metakd.distill.layer_maps import LayerMatch, RecipeError, check_depths
from metakd.distill.losses import register_feature_loss
from metakd.distill.terms import HardCE, LayerMatches, LogitKD
from metakd.errors import StudentConfigError


@register_feature_loss("pkd_cls")
def normalized_cls_mse(student: Tensor, teacher: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """BERT-PKD's patient loss for one layer pair (Sun et al. 2019, eq. 2), per instance:
    ``|| h_S / ||h_S||_2 - h_T / ||h_T||_2 ||_2^2`` on the [CLS] states (position 0).

    ``student``, ``teacher``: (B, T, H) token states (the student already projected to the teacher
    width). ``attention_mask`` is unused ([CLS] is always a real token). Returns (B,).
    """
    del attention_mask
    if student.shape[0] != teacher.shape[0] or student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"normalized_cls_mse: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ "
            "in batch or hidden size; project the student to the teacher's hidden size first"
        )
    s = F.normalize(student[:, 0], dim=-1)
    t = F.normalize(teacher[:, 0], dim=-1)
    return (s - t).pow(2).sum(dim=-1)


def pkd_skip_map(n_teacher_layers: int, n_student_layers: int, loss: str = "pkd_cls") -> list[LayerMatch]:
    """BERT-PKD's PKD-skip map (Sun et al. 2019): student layer m (1..L_S-1) learns teacher layer
    ``m * L_T / L_S`` (rounded down), i.e. every k-th teacher layer; 12 -> 6 gives {2, 4, 6, 8, 10}.

    The student's last layer is left out: the prediction-layer KD term covers it.
    """
    check_depths(n_teacher_layers, n_student_layers)
    if n_student_layers < 2:
        raise RecipeError(
            "the PKD layer maps need a student with at least 2 layers (the last one is not mapped)"
        )
    return [
        LayerMatch(max(1, m * n_teacher_layers // n_student_layers), m, "hidden", loss)
        for m in range(1, n_student_layers)
    ]


def pkd_last_map(n_teacher_layers: int, n_student_layers: int, loss: str = "pkd_cls") -> list[LayerMatch]:
    """BERT-PKD's PKD-last map: student layer m (1..L_S-1) learns teacher layer ``L_T - L_S + m``, the
    teacher's last layers before its top one; 12 -> 6 gives {7, 8, 9, 10, 11}."""
    check_depths(n_teacher_layers, n_student_layers)
    if n_student_layers < 2:
        raise RecipeError(
            "the PKD layer maps need a student with at least 2 layers (the last one is not mapped)"
        )
    if n_teacher_layers < n_student_layers:
        raise RecipeError(
            "PKD-last needs a teacher at least as deep as the student, got "
            f"{n_teacher_layers} < {n_student_layers}"
        )
    return [
        LayerMatch(n_teacher_layers - n_student_layers + m, m, "hidden", loss)
        for m in range(1, n_student_layers)
    ]


LAYER_MAPS = {"skip": pkd_skip_map, "last": pkd_last_map}


@register_distiller("pkd")
class PatientKD(Distiller):
    """BERT-PKD (see the module docstring); ``layer_map`` is ``skip`` (PKD-skip) or ``last`` (PKD-last)."""

    label = "BERT-PKD"
    teacher_role = "single"

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 1.0,
        temperature: float = 5.0,
        t2_scaling: bool = True,
        layer_map: Literal["skip", "last"] = "skip",
        prediction_lr: float = 3e-5,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise StudentConfigError(f"pkd alpha must be in [0, 1], got {alpha}")
        if beta < 0:
            raise StudentConfigError(f"pkd beta must be >= 0, got {beta}")
        if layer_map not in LAYER_MAPS:
            raise StudentConfigError(f"pkd layer_map must be one of {sorted(LAYER_MAPS)}, got {layer_map!r}")
        self.alpha, self.beta, self.layer_map = alpha, beta, layer_map
        self.temperature, self.t2_scaling, self.prediction_lr = temperature, t2_scaling, prediction_lr

    def stages(self) -> list[Stage]:
        layer_map = LAYER_MAPS[self.layer_map]
        return [
            Stage(
                "prediction",
                [
                    HardCE(1.0 - self.alpha),
                    LogitKD(self.alpha, self.temperature, self.t2_scaling),
                    LayerMatches(lambda n_t, n_s: layer_map(n_t, n_s), "hidden", weight=self.beta, name="pt"),
                ],
                lr=self.prediction_lr,
            )
        ]
