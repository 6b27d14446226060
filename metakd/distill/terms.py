"""The loss terms methods are made of (each per instance, shape (B,); formulas in
``metakd.distill.losses``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.distill.attention_scores import attention_scores, self_attentions
from metakd.distill.base import DistillContext, LossTerm, StepContext
from metakd.distill.layer_maps import (
    LayerMatch,
    RecipeError,
    build_projections,
    coerce_match,
    needs_attentions,
    validate_matches,
)
from metakd.distill.losses import get_feature_loss, soft_cross_entropy, transferable_mse
from metakd.errors import StudentConfigError

UNKNOWN_LABEL = -100
"""A label only the teacher knows (``datamodules.augment.UNKNOWN_LABEL``; PyTorch's ``ignore_index``)."""


class HardCE(LossTerm):
    """Cross-entropy with the gold labels: ``CE(z_S, y)``; 0 for an example whose label is unknown
    (``y = -100``, ``datamodules.augment.UNKNOWN_LABEL``: an augmented example only the teacher labels)."""

    name = "ce"

    def __call__(self, step: StepContext) -> Tensor:
        labels = step.batch["labels"]
        known = labels != UNKNOWN_LABEL
        losses = F.cross_entropy(step.student.logits.float(), labels.clamp_min(0), reduction="none")
        return torch.where(known, losses, torch.zeros_like(losses))


class LogitKD(LossTerm):
    """Soft cross-entropy with the teacher's softened distribution (Hinton et al. 2015):
    ``sum_c -softmax(z_T/T)_c log softmax(z_S/T)_c``, times ``T^2`` with ``t2_scaling``."""

    name = "kd"
    teacher_needs = frozenset({"logits"})

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 1.0,
        t2_scaling: bool = False,
        name: str | None = None,
        monitor: bool = False,
    ) -> None:
        super().__init__(weight, name, monitor)
        if temperature <= 0:
            raise StudentConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.t2_scaling = temperature, t2_scaling

    def __call__(self, step: StepContext) -> Tensor:
        return soft_cross_entropy(
            step.student.logits.float(), step.teacher.logits.float(), self.temperature, self.t2_scaling
        )


class LogitMSE(LossTerm):
    """Mean squared error between student and teacher logits (Tang et al. 2019): ``mean_c (z_S - z_T)^2``."""

    name = "mse"
    teacher_needs = frozenset({"logits"})

    def __call__(self, step: StepContext) -> Tensor:
        return (step.student.logits.float() - step.teacher.logits.float().detach()).pow(2).mean(dim=-1)


class LayerMatches(LossTerm):
    """Intermediate-layer losses of a layer map (``metakd.distill.layer_maps``): the weighted sum over
    the map's matches of one ``kind`` (``hidden``: token states incl. embeddings, through a learned
    projection when the widths differ; ``attention``: attention maps).

    The map is None for the uniform (TinyBERT) map or a callable ``(L_T, L_S) -> list[LayerMatch]``
    (e.g. a skip map), resolved against the two models when the Student is built. The ``hidden``
    term of a map owns its projections, registered on the Student as ``projections``.
    """

    def __init__(
        self,
        matches: Sequence[LayerMatch | Mapping[str, Any]] | Any | None,
        kind: str,
        weight: float = 1.0,
        name: str | None = None,
        projections_name: str = "projections",
    ) -> None:
        if kind not in ("hidden", "attention"):
            raise RecipeError(f"LayerMatches kind must be 'hidden' or 'attention', got {kind!r}")
        super().__init__(weight, name or kind)
        self.kind = kind
        self.map = matches
        self.matches: list[LayerMatch] = []
        self.projections_name = projections_name
        self.student_needs = frozenset({"hidden"} if kind == "hidden" else {"attention"})
        self.teacher_needs = frozenset({"hidden"} if kind == "hidden" else {"attention"})

    def resolve(self, n_teacher: int, n_student: int) -> list[LayerMatch]:
        from metakd.distill.layer_maps import uniform_layer_map

        if self.map is None:
            return uniform_layer_map(n_teacher, n_student)
        if callable(self.map):
            return validate_matches(self.map(n_teacher, n_student), n_teacher, n_student)
        return validate_matches([coerce_match(m) for m in self.map], n_teacher, n_student)

    def bind(self, ctx: DistillContext) -> None:
        if ctx.teacher is None or ctx.student.num_layers is None:
            return  # check_needs reports what is missing
        self.matches = self.resolve(ctx.teacher.num_layers, ctx.student.num_layers)
        if self.kind == "attention" and not needs_attentions(self.matches):
            self.weight = 0.0  # a map without attention matches: nothing to compute

    def teacher_layers(self) -> tuple[frozenset[int], frozenset[int]]:
        if self.kind == "hidden":
            return frozenset(m.teacher_layer for m in self.matches if m.is_hidden), frozenset()
        return frozenset(), frozenset(m.teacher_layer for m in self.matches if m.feature == "attention")

    def build(self, ctx: DistillContext) -> dict[str, nn.Module]:
        self.bind(ctx)
        if self.kind != "hidden" or ctx.teacher is None or ctx.student.hidden_size is None:
            return {}
        return {
            self.projections_name: build_projections(
                self.matches, ctx.student.hidden_size, ctx.teacher.hidden_size
            )
        }

    def features(self, step: StepContext, match: LayerMatch) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's feature of one match (the student's states projected)."""
        if match.is_hidden:
            student = step.student.hidden_states[match.student_layer]
            projections = step.modules.get(self.projections_name, {})
            if match.key in projections:
                student = projections[match.key](student)
            return student, step.teacher.hidden_states[match.teacher_layer]
        student_maps, teacher_maps = step.student.attentions, step.teacher.attentions
        return student_maps[match.student_layer - 1], teacher_maps[match.teacher_layer - 1]

    def __call__(self, step: StepContext) -> Tensor:
        mask = step.attention_mask
        total: Tensor | None = None
        for match in self.matches:
            if match.is_hidden != (self.kind == "hidden"):
                continue
            loss = get_feature_loss(match.loss)
            student, teacher = self.features(step, match)
            value = loss(student.float(), teacher.float(), mask)
            if value.shape != mask.shape[:1]:
                raise RecipeError(
                    f"loss {match.loss!r} of {match.key} returned shape {tuple(value.shape)}; a feature loss "
                    f"must return one value per instance, shape ({mask.shape[0]},)"
                )
            value = match.weight * value
            total = value if total is None else total + value
        if total is None:
            return mask.new_zeros(mask.shape[0], dtype=torch.float32)
        return total


class AttentionScoreMatches(LayerMatches):
    """TinyBERT's attention loss (Jiao et al. 2020, eq. 3): the layer map's ``attention`` matches on the
    *unnormalised* scores ``Q K^T / sqrt(d_head)``, recomputed from each matched layer's input states with
    that layer's query and key projections (:mod:`metakd.distill.attention_scores`; the teacher's without
    gradients). The match's loss (``attention_mse``) counts only the pairs of real tokens, where the
    authors' code zeroes the padded keys' scores on both sides (a mean over every position instead).

    Reads token states of both models (layer ``m - 1`` for attention layer ``m``), not their attention
    probabilities, so neither needs eager attention.
    """

    def __init__(
        self,
        matches: Sequence[LayerMatch | Mapping[str, Any]] | Any | None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(matches, "attention", weight, name)
        self.student_needs = frozenset({"hidden"})
        self.teacher_needs = frozenset({"hidden"})
        self.student_blocks: list[nn.Module] = []
        self.teacher_blocks: list[nn.Module] = []

    def bind(self, ctx: DistillContext) -> None:
        super().bind(ctx)
        if self.matches and self.weight != 0.0:
            self.student_blocks = self_attentions(ctx.student, ctx.student.num_layers, "student")
            self.teacher_blocks = self_attentions(ctx.teacher.module, ctx.teacher.num_layers, "teacher")

    def teacher_layers(self) -> tuple[frozenset[int], frozenset[int]]:
        inputs = frozenset(m.teacher_layer - 1 for m in self.matches if m.feature == "attention")
        return inputs, frozenset()

    def features(self, step: StepContext, match: LayerMatch) -> tuple[Tensor, Tensor]:
        m, n = match.student_layer, match.teacher_layer
        student = attention_scores(self.student_blocks[m - 1], step.student.hidden_states[m - 1])
        with torch.no_grad():
            teacher = attention_scores(self.teacher_blocks[n - 1], step.teacher.hidden_states[n - 1])
        return student, teacher


class TransferableMSE(LossTerm):
    """Meta-KD's transferable-knowledge term: MSE between ``head(pooled_S)`` and the MetaTeacher's
    ``g = corrupt_dense(E[d] + c)`` (the head is a learned ``Linear(d_S, d_T)``; the teacher's domain term
    is constant on one target domain, so the head's bias absorbs it)."""

    name = "tk"
    student_needs = frozenset({"pooled"})
    teacher_needs = frozenset({"transferable"})
    head_name = "transferable_head"

    def build(self, ctx: DistillContext) -> dict[str, nn.Module]:
        if ctx.teacher is None or ctx.student.hidden_size is None:
            return {}
        return {self.head_name: nn.Linear(ctx.student.hidden_size, ctx.teacher.hidden_size)}

    def __call__(self, step: StepContext) -> Tensor:
        head = step.modules[self.head_name]
        return transferable_mse(head(step.student.pooled).float(), step.teacher.transferable.float())
