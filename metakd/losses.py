"""Meta-teacher losses (teacher training in Meta-KD), as pure functions.

The weighted teacher loss is

    L_T = (1/B) sum_i w_i [CE(logits_i, y_i) + lambda_d CE(domain_logits_i, d~_i)]

with w_i the instance weights (transferability t_i, meta weights, their product, or ones) and d~_i
the domain target: ``d_pi(i)`` under a fresh permutation pi of the batch (domain corruption), or the
true domain d_i with the domain head behind a :class:`GradientReversal` (DANN variant).
Distillation losses live in :mod:`metakd.distill.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def per_instance_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """CE per row: (B, C) logits and (B,) class indices -> (B,) losses (no reduction)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def domain_corruption_targets(domain_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Domain targets for the corruption loss: the batch's own domain ids under a fresh permutation.

    Instance i gets d_{pi(i)}, the domain of a random instance of the same batch, so the domain head
    cannot be right by reading i's own domain: u_i is pushed to carry no domain-specific signal.
    """
    perm = torch.randperm(domain_ids.shape[0], generator=generator, device="cpu").to(domain_ids.device)
    return domain_ids[perm]


@dataclass
class TeacherLoss:
    """Terms of the weighted teacher loss (each a scalar except ``per_instance``).

    ``cls`` = (1/B) sum_i w_i CE_i; ``domain`` = (1/B) sum_i w_i CE^dom_i (without lambda_d);
    ``total`` = cls + lambda_d * domain; ``per_instance`` = CE_i + lambda_d CE^dom_i, unweighted (B,).
    """

    total: Tensor
    cls: Tensor
    domain: Tensor
    per_instance: Tensor


def teacher_loss_terms(
    logits: Tensor,
    labels: Tensor,
    domain_logits: Tensor | None,
    domain_targets: Tensor | None,
    domain_loss_weight: float,
) -> tuple[Tensor, Tensor]:
    """Unweighted per-instance (CE_i, CE^dom_i); CE^dom is zeros without a domain head/targets."""
    cls = per_instance_cross_entropy(logits, labels)
    if domain_logits is None or domain_targets is None or domain_loss_weight == 0:
        return cls, torch.zeros_like(cls)
    return cls, per_instance_cross_entropy(domain_logits, domain_targets)


def weighted_teacher_loss(
    logits: Tensor,
    labels: Tensor,
    domain_logits: Tensor | None,
    domain_targets: Tensor | None,
    instance_weights: Tensor | None,
    domain_loss_weight: float = 0.5,
) -> TeacherLoss:
    """L_T = (1/B) sum_i w_i [CE(logits_i, y_i) + lambda_d CE(domain_logits_i, d~_i)].

    Args:
        logits: (B, C) class logits; labels: (B,).
        domain_logits: (B, K) or None (no domain loss).
        domain_targets: (B,) from :func:`domain_corruption_targets`, or the true domains for the
            gradient-reversal variant; None for no domain loss.
        instance_weights: (B,) w_i, or None for ones. Not normalised here: the 1/B is the batch size.
        domain_loss_weight: lambda_d.
    """
    cls, dom = teacher_loss_terms(logits, labels, domain_logits, domain_targets, domain_loss_weight)
    w = torch.ones_like(cls) if instance_weights is None else instance_weights.to(cls.dtype)
    if w.shape != cls.shape:
        raise ValueError(f"instance_weights must have shape {tuple(cls.shape)}, got {tuple(w.shape)}")
    cls_term = (w * cls).mean()
    dom_term = (w * dom).mean()
    return TeacherLoss(
        total=cls_term + domain_loss_weight * dom_term,
        cls=cls_term,
        domain=dom_term,
        per_instance=cls + domain_loss_weight * dom,
    )


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale`` (Ganin & Lempitsky 2015).

    The backward is made of differentiable ops, so a double backward (the meta look-ahead) works; the
    forward-mode derivative is reversed too (:mod:`metakd.weighting`, engine ``jvp``).
    """

    @staticmethod
    def forward(x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, float], output: Tensor) -> None:  # type: ignore[override]
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output * (-ctx.scale), None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, scale_tangent: None) -> Tensor:  # type: ignore[override]
        # Forward mode moves with the update the backward defines (the meta weights' ``jvp`` engine
        # takes grad l_i . v with the reversed gradient, as the look-ahead's SGD step does).
        return x_tangent * (-ctx.scale)


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Apply :class:`GradientReversal`: the layers below ``x`` ascend the loss above it."""
    return GradientReversal.apply(x, scale)
