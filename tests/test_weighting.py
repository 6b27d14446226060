"""Learning-to-reweight weights against the closed form of a linear model.

For theta' = theta - a * sum_i eps_i grad l_i(theta): dL_val(theta')/deps_i at eps = 0 is
-a * grad l_i(theta) . grad L_val(theta). With squared errors l = (x . theta - y)^2 the gradients are
2 (x . theta - y) x, written out below with plain tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metakd.weighting import combine_domain_gradients, meta_instance_weights, normalise_meta_weights

A = 0.1
X_TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
Y_TRAIN = torch.tensor([1.0, -1.0, 0.5, 3.0])
D_TRAIN = torch.tensor([0, 1, 0, 2])
X_VAL = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 1.0]])
Y_VAL = torch.tensor([2.0, 0.0, 1.0])
D_VAL = torch.tensor([0, 1, 2])
THETA = torch.tensor([0.3, -0.2])


def _model() -> nn.Module:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(THETA.view(1, 2))
    return model


def _losses(x: torch.Tensor, y: torch.Tensor):
    return lambda f: (f(x).squeeze(-1) - y) ** 2


def _grad_sq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row gradient of (x . theta - y)^2: 2 (x . theta - y) x."""
    residual = x @ THETA - y
    return 2 * residual.unsqueeze(1) * x


def test_all_heldout_matches_closed_form() -> None:
    model = _model()
    result = meta_instance_weights(model, _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), inner_lr=A)
    grad_val = _grad_sq(X_VAL, Y_VAL).mean(0)
    expected = -A * _grad_sq(X_TRAIN, Y_TRAIN) @ grad_val
    assert torch.allclose(result.gradients, expected, atol=1e-6)
    w = torch.relu(-expected)
    assert torch.allclose(result.weights, w / w.sum() * 4, atol=1e-5)
    assert result.weights.mean().item() == pytest.approx(1.0)
    assert torch.equal(model.weight.detach(), THETA.view(1, 2))  # the look-ahead leaves the model alone


def test_other_domains_matches_closed_form() -> None:
    result = meta_instance_weights(
        _model(), _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), inner_lr=A,
        heldout="other_domains", train_domains=D_TRAIN, heldout_domains=D_VAL,
    )  # fmt: skip
    g_train, g_val = _grad_sq(X_TRAIN, Y_TRAIN), _grad_sq(X_VAL, Y_VAL)
    expected = []
    for i in range(4):
        others = [j for j in range(3) if int(D_VAL[j]) != int(D_TRAIN[i])]
        val_grad = sum(g_val[j] for j in others) / len(others)
        expected.append(float(-A * g_train[i] @ val_grad))
    assert result.gradients.tolist() == pytest.approx(expected, abs=1e-6)


def test_other_domains_falls_back_to_all_heldout() -> None:
    # The held-out batch holds domain 0 only: domain-0 instances have no "other" example.
    x_val, y_val = X_VAL[:1], Y_VAL[:1]
    result = meta_instance_weights(
        _model(), _losses(X_TRAIN, Y_TRAIN), _losses(x_val, y_val), inner_lr=A,
        heldout="other_domains", train_domains=D_TRAIN, heldout_domains=torch.tensor([0]),
    )  # fmt: skip
    expected = -A * _grad_sq(X_TRAIN, Y_TRAIN) @ _grad_sq(x_val, y_val)[0]
    assert torch.allclose(result.gradients, expected, atol=1e-6)


def test_combine_domain_gradients() -> None:
    per_domain = {0: torch.tensor([1.0, 2.0, 3.0]), 1: torch.tensor([10.0, 20.0, 30.0])}
    out = combine_domain_gradients(per_domain, {0: 2, 1: 5}, torch.tensor([0, 1, 2]))
    assert out.tolist() == pytest.approx([10.0 / 5, 2.0 / 2, (3.0 + 30.0) / 7])


def test_normalisation_and_uniform_fallback() -> None:
    w, fallback = normalise_meta_weights(torch.tensor([-1.0, -3.0, 2.0, 0.0]))
    assert w.tolist() == pytest.approx([1.0, 3.0, 0.0, 0.0]) and not fallback
    w, fallback = normalise_meta_weights(torch.tensor([0.5, 0.0, 2.0]))
    assert w.tolist() == [1.0, 1.0, 1.0] and fallback
    with pytest.raises(FloatingPointError):
        normalise_meta_weights(torch.tensor([float("nan"), -1.0]))


def test_other_domains_needs_domains() -> None:
    with pytest.raises(ValueError, match="needs train_domains"):
        meta_instance_weights(_model(), _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), A, "other_domains")
