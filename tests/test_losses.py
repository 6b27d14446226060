"""Teacher losses against values computed by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from metakd import losses as L


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def test_per_instance_cross_entropy() -> None:
    logits = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    out = L.per_instance_cross_entropy(logits, torch.tensor([1, 0, 1]))
    assert out.tolist() == pytest.approx([_ce([1, 2], 1), math.log(2), _ce([3, -1], 1)], abs=1e-6)


def test_domain_corruption_targets_permute_the_batch() -> None:
    domains = torch.tensor([0, 0, 1, 2, 2, 2])
    gen = torch.Generator().manual_seed(3)
    targets = L.domain_corruption_targets(domains, gen)
    assert sorted(targets.tolist()) == sorted(domains.tolist())
    again = L.domain_corruption_targets(domains, torch.Generator().manual_seed(3))
    assert torch.equal(targets, again)
    draws = {tuple(L.domain_corruption_targets(domains).tolist()) for _ in range(20)}
    assert len(draws) > 1  # a fresh permutation each call


def test_weighted_teacher_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    labels = torch.tensor([0, 0])
    domain_logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    domain_targets = torch.tensor([2, 1])
    t = torch.tensor([0.8, 0.4])
    lam = 0.5
    out = L.weighted_teacher_loss(logits, labels, domain_logits, domain_targets, t, lam)
    ce = [_ce([2, 0], 0), _ce([0.5, 1.5], 0)]
    dom = [_ce([1, 0, -1], 2), math.log(3)]
    expected = (0.8 * (ce[0] + lam * dom[0]) + 0.4 * (ce[1] + lam * dom[1])) / 2
    assert out.total.item() == pytest.approx(expected, abs=1e-6)
    assert out.cls.item() == pytest.approx((0.8 * ce[0] + 0.4 * ce[1]) / 2, abs=1e-6)
    assert out.domain.item() == pytest.approx((0.8 * dom[0] + 0.4 * dom[1]) / 2, abs=1e-6)
    assert out.per_instance.tolist() == pytest.approx([ce[0] + lam * dom[0], ce[1] + lam * dom[1]], abs=1e-6)
    # No weights = ones; no domain head = classification only.
    plain = L.weighted_teacher_loss(logits, labels, None, None, None, lam)
    assert plain.total.item() == pytest.approx((ce[0] + ce[1]) / 2, abs=1e-6)
    assert plain.domain.item() == 0.0
    with pytest.raises(ValueError, match="instance_weights must have shape"):
        L.weighted_teacher_loss(logits, labels, None, None, torch.ones(3), lam)


def test_gradient_reversal_forward_backward_and_double_backward() -> None:
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = L.reverse_gradient(x, scale=0.5)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
    assert grad.tolist() == [-0.5 * 2 * 1.0, -0.5 * 2 * -2.0]
    # grad = -0.5 * 2 * y with y = GRL(x): differentiating it reverses once more, (-0.5) * (-0.5 * 2).
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert second.tolist() == [0.5, 0.5]
