"""The teacher's domain-adversarial part (``metakd/meta_teacher/domain_loss.py``): targets per mode, the
loss L_T = (1/B) sum_i w_i [CE_i + lambda_d CE^dom_i] by hand, and the zero term that keeps an unused
domain head in the graph."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metakd.meta_teacher.domain_loss import DomainAdversary
from metakd.meta_teacher.network import TeacherOutput

DOMAINS = torch.tensor([0, 0, 1, 2, 2, 2])


def test_targets_per_mode() -> None:
    batch = {"domain_ids": DOMAINS}
    corruption = DomainAdversary("corruption", 0.5)
    torch.manual_seed(0)
    draws = [corruption.targets(batch) for _ in range(5)]
    assert all(sorted(d.tolist()) == DOMAINS.tolist() for d in draws)  # the batch's domains, permuted
    assert any(not torch.equal(d, DOMAINS) for d in draws)
    assert torch.equal(DomainAdversary("reversal", 0.5).targets(batch), DOMAINS)
    assert DomainAdversary("none", 0.5).targets(batch) is None
    assert [DomainAdversary(m, 0.5).reverses_gradient for m in ("corruption", "reversal", "none")] == [
        False, True, False,
    ]  # fmt: skip


def output(domain_logits: torch.Tensor | None) -> TeacherOutput:
    # Uniform logits: CE = ln 2 over 2 classes, ln 3 over 3 domains.
    return TeacherOutput(torch.zeros(2, 2), domain_logits, torch.zeros(2, 4), None)


def test_loss_by_hand() -> None:
    labels, targets, weights = torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([2.0, 0.5])
    part = DomainAdversary("corruption", 0.25)
    out = output(torch.zeros(2, 3))
    assert part.per_instance(out, labels, targets).tolist() == pytest.approx(
        [math.log(2) + 0.25 * math.log(3)] * 2
    )
    loss = part.loss(out, labels, targets, weights)
    mean_w = (2.0 + 0.5) / 2
    assert loss.cls.item() == pytest.approx(mean_w * math.log(2))
    assert loss.domain.item() == pytest.approx(mean_w * math.log(3))
    assert loss.total.item() == pytest.approx(mean_w * (math.log(2) + 0.25 * math.log(3)))
    without = part.loss(out, labels, None, weights)  # no targets: no domain term
    assert without.domain.item() == 0.0 and without.total.item() == pytest.approx(mean_w * math.log(2))
    assert part.per_instance(out, labels, None).tolist() == pytest.approx([math.log(2)] * 2)


def test_objective_keeps_an_unused_domain_head_in_the_graph() -> None:
    head = nn.Linear(4, 3)
    out = output(head(torch.ones(2, 4)))
    part = DomainAdversary("none", 0.5)
    loss = part.loss(out, torch.tensor([0, 1]), None, torch.ones(2))
    objective = part.objective(loss, out, None)
    assert objective.item() == loss.total.item()
    objective.backward()
    assert head.weight.grad is not None and torch.equal(head.weight.grad, torch.zeros(3, 4))
    with_targets = DomainAdversary("reversal", 0.5)
    loss = with_targets.loss(out, torch.tensor([0, 1]), DOMAINS[:2], torch.ones(2))
    assert with_targets.objective(loss, out, DOMAINS[:2]) is loss.total
