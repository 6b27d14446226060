"""The domain-adversarial part of teacher training (``domain_loss``, docs/METAKD.md):

    L_T = (1/B) sum_i w_i [CE(logits_i, y_i) + lambda_d CE(domain_logits_i, d~_i)]

- ``corruption``: the domain head must predict d~_i = d_pi(i), the domain of a random instance of the
  batch (a fresh permutation per step), so u_i carries no domain-specific signal;
- ``reversal`` (DANN): d~_i = d_i, and the network reverses the gradient between u and the domain head
  (:class:`~metakd.meta_teacher.network.TeacherNetwork` with ``reverse_domain_gradient``);
- ``none``: no domain term. The domain head (if any) then gets a zero gradient, which keeps it in the
  graph, so DDP (which expects every trainable parameter there) needs no ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from metakd.losses import TeacherLoss, domain_corruption_targets, teacher_loss_terms, weighted_teacher_loss

DomainLoss = Literal["corruption", "reversal", "none"]


class DomainAdversary:
    """The domain targets and the teacher loss of one ``domain_loss`` mode with weight lambda_d."""

    def __init__(self, mode: DomainLoss, weight: float) -> None:
        self.mode = mode
        self.weight = weight

    @property
    def reverses_gradient(self) -> bool:
        """Whether the network needs a gradient reversal layer before its domain head."""
        return self.mode == "reversal"

    def targets(self, batch: dict[str, Tensor]) -> Tensor | None:
        """d~ for the batch (None without a domain term); ``corruption`` draws a fresh permutation."""
        if self.mode == "corruption":
            return domain_corruption_targets(batch["domain_ids"])
        if self.mode == "reversal":
            return batch["domain_ids"]
        return None

    def per_instance(self, out: Any, labels: Tensor, targets: Tensor | None) -> Tensor:
        """The unweighted per-instance loss CE_i + lambda_d CE^dom_i (the meta look-ahead's)."""
        cls, dom = teacher_loss_terms(out.logits, labels, out.domain_logits, targets, self.weight)
        return cls + self.weight * dom

    def loss(self, out: Any, labels: Tensor, targets: Tensor | None, weights: Tensor) -> TeacherLoss:
        """L_T with the instance weights w_i (its terms, for logging)."""
        domain_logits = out.domain_logits if targets is not None else None
        return weighted_teacher_loss(out.logits, labels, domain_logits, targets, weights, self.weight)

    def objective(self, loss: TeacherLoss, out: Any, targets: Tensor | None) -> Tensor:
        """What the step differentiates: L_T, plus a zero term that keeps an unused domain head in the
        graph (see the module docstring)."""
        if targets is None and out.domain_logits is not None:
            return loss.total + 0.0 * out.domain_logits.sum()
        return loss.total
