"""Learning-to-reweight weights against the closed form of a linear model, for both engines.

For theta' = theta - a * sum_i eps_i grad l_i(theta): dL_val(theta')/deps_i at eps = 0 is
-a * grad l_i(theta) . grad L_val(theta). With squared errors l = (x . theta - y)^2 the gradients are
2 (x . theta - y) x, written out below with plain tensors. On a tiny BERT teacher the two engines
give the same weights, and the cheaper parameter scopes correlate with the full ones.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_encoder_config
from torch import nn

from metakd.losses import domain_corruption_targets
from metakd.teacher import MetaTeacher
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
    """(network, rows) -> per-row squared errors, the loss-function shape meta_instance_weights takes."""

    def losses(f, rows):
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        return (f(xs).squeeze(-1) - ys) ** 2

    return losses


def _grad_sq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row gradient of (x . theta - y)^2: 2 (x . theta - y) x."""
    residual = x @ THETA - y
    return 2 * residual.unsqueeze(1) * x


ENGINES = pytest.mark.parametrize("engine", ["higher", "jvp"])


@ENGINES
def test_all_heldout_matches_closed_form(engine: str) -> None:
    model = _model()
    result = meta_instance_weights(
        model, _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), inner_lr=A, engine=engine
    )
    grad_val = _grad_sq(X_VAL, Y_VAL).mean(0)
    expected = -A * _grad_sq(X_TRAIN, Y_TRAIN) @ grad_val
    assert torch.allclose(result.gradients, expected, atol=1e-6)
    w = torch.relu(-expected)
    assert torch.allclose(result.weights, w / w.sum() * 4, atol=1e-5)
    assert result.weights.mean().item() == pytest.approx(1.0)
    assert torch.equal(model.weight.detach(), THETA.view(1, 2))  # the look-ahead leaves the model alone


@ENGINES
def test_other_domains_matches_closed_form(engine: str) -> None:
    result = meta_instance_weights(
        _model(), _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), inner_lr=A,
        heldout="other_domains", train_domains=D_TRAIN, heldout_domains=D_VAL, engine=engine,
    )  # fmt: skip
    g_train, g_val = _grad_sq(X_TRAIN, Y_TRAIN), _grad_sq(X_VAL, Y_VAL)
    expected = []
    for i in range(4):
        others = [j for j in range(3) if int(D_VAL[j]) != int(D_TRAIN[i])]
        val_grad = sum(g_val[j] for j in others) / len(others)
        expected.append(float(-A * g_train[i] @ val_grad))
    assert result.gradients.tolist() == pytest.approx(expected, abs=1e-6)


@ENGINES
def test_other_domains_falls_back_to_all_heldout(engine: str) -> None:
    # The held-out batch holds domain 0 only: domain-0 instances have no "other" example.
    x_val, y_val = X_VAL[:1], Y_VAL[:1]
    result = meta_instance_weights(
        _model(), _losses(X_TRAIN, Y_TRAIN), _losses(x_val, y_val), inner_lr=A,
        heldout="other_domains", train_domains=D_TRAIN, heldout_domains=torch.tensor([0]), engine=engine,
    )  # fmt: skip
    expected = -A * _grad_sq(X_TRAIN, Y_TRAIN) @ _grad_sq(x_val, y_val)[0]
    assert torch.allclose(result.gradients, expected, atol=1e-6)


@ENGINES
@pytest.mark.parametrize("scope", [["weight"], ["bias"], ["weight", "bias"]])
def test_parameter_scope_matches_closed_form_over_those_parameters(engine: str, scope: list[str]) -> None:
    """With a bias b, grad_theta l = 2 r x and grad_b l = 2 r (r = x . theta + b - y); the look-ahead
    over a scope sums the dot products of the scope's gradients only; the model is left unchanged."""
    bias = 0.25
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(THETA.view(1, 2))
        model.bias.fill_(bias)

    def grads(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, 3): d/dtheta, d/db
        residual = x @ THETA + bias - y
        return torch.cat([2 * residual.unsqueeze(1) * x, 2 * residual.unsqueeze(1)], dim=1)

    columns = {"weight": [0, 1], "bias": [2]}
    keep = [c for name in scope for c in columns[name]]
    result = meta_instance_weights(
        model, _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), inner_lr=A,
        heldout="other_domains", train_domains=D_TRAIN, heldout_domains=D_VAL,
        engine=engine, param_names=scope,
    )  # fmt: skip
    g_train, g_val = grads(X_TRAIN, Y_TRAIN)[:, keep], grads(X_VAL, Y_VAL)[:, keep]
    expected = []
    for i in range(4):
        others = [j for j in range(3) if int(D_VAL[j]) != int(D_TRAIN[i])]
        expected.append(float(-A * g_train[i] @ (sum(g_val[j] for j in others) / len(others))))
    assert result.gradients.tolist() == pytest.approx(expected, abs=1e-6)
    assert model.bias.item() == bias and torch.equal(model.weight.detach(), THETA.view(1, 2))


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


def test_bad_arguments() -> None:
    losses = (_model(), _losses(X_TRAIN, Y_TRAIN), _losses(X_VAL, Y_VAL), A)
    with pytest.raises(ValueError, match="needs train_domains"):
        meta_instance_weights(*losses, "other_domains")
    with pytest.raises(ValueError, match="engine must be 'higher' or 'jvp', got 'exact'"):
        meta_instance_weights(*losses, engine="exact")
    with pytest.raises(ValueError, match=r"param_names \['bias'\] are not trainable parameters"):
        meta_instance_weights(*losses, param_names=["bias"])


# --------------------------------------------------------------------------------------- tiny BERT


def _teacher_and_batches(**kwargs: Any) -> tuple[MetaTeacher, list[dict[str, torch.Tensor]]]:
    """A tiny BERT meta-teacher (dropout off: deterministic weights) and four training batches."""
    dm = ToyMultiDomainDataModule(train_per_domain=16, batch_size=12)
    dm.setup("fit")
    torch.manual_seed(0)
    teacher = MetaTeacher(
        **{"encoder_config": tiny_encoder_config(num_hidden_layers=3), **kwargs}, backbone="tiny-test-bert",
        num_labels=dm.num_labels, num_domains=dm.num_domains, weighting="meta", dropout=0.0,
    )  # fmt: skip
    teacher.network.eval()
    return teacher, list(dm.train_dataloader())[:4]


@pytest.mark.parametrize(("domain_loss", "heldout"), [("corruption", "other_domains"), ("reversal", "all")])
def test_engines_agree_on_a_tiny_bert(domain_loss: str, heldout: str) -> None:
    teacher, batches = _teacher_and_batches(domain_loss=domain_loss, meta_heldout=heldout)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for batch, heldout_batch in zip(batches[::2], batches[1::2]):
        targets = domain_corruption_targets(batch["domain_ids"]) if domain_loss == "corruption" else None
        exact = teacher.meta_weights(batch, heldout_batch, targets, engine="higher")
        fast = teacher.meta_weights(batch, heldout_batch, targets, engine="jvp")
        assert not exact.fallback_uniform and exact.gradients.abs().max() > 1e-4
        assert torch.allclose(fast.gradients, exact.gradients, rtol=1e-4, atol=1e-7)
        assert torch.allclose(fast.weights, exact.weights, rtol=1e-3, atol=1e-5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_cheaper_scopes_correlate_with_the_full_look_ahead_on_a_tiny_bert() -> None:
    """A scope's weights are the exact look-ahead over its parameters (both engines agree); over several
    batches they correlate with the full look-ahead's without being equal to them. A wide
    initialisation keeps the random encoder's features apart (at 0.02 every scope correlates ~1)."""
    teacher, batches = _teacher_and_batches(
        encoder_config=tiny_encoder_config(num_hidden_layers=3, initializer_range=1.0)
    )
    network = teacher.network
    assert network.meta_parameter_names("all") is None
    head = network.meta_parameter_names("head")
    assert head == [
        n for n, p in network.named_parameters() if p.requires_grad and not n.startswith("encoder.")
    ]
    last = network.meta_parameter_names("last_k", 1)
    assert set(last) - set(head) == {n for n, _ in network.named_parameters() if ".layer.2." in n}
    with pytest.raises(ValueError, match="meta_last_k must be between 1 and the encoder's 3 layers, got 4"):
        network.meta_parameter_names("last_k", 4)
    full, cheap = [], {"head": [], "last_k": []}
    for n, (batch, heldout_batch) in enumerate(zip(batches, batches[1:] + batches[:1])):
        full.append(teacher.meta_weights(batch, heldout_batch, None).gradients)
        for scope in cheap:
            cheap[scope].append(teacher.meta_weights(batch, heldout_batch, None, meta_params=scope).gradients)
            if n == 0:
                exact = teacher.meta_weights(batch, heldout_batch, None, engine="higher", meta_params=scope)
                assert torch.allclose(cheap[scope][0], exact.gradients, rtol=1e-4, atol=1e-7)
    for scope, values in cheap.items():
        reference, approximation = torch.cat(full), torch.cat(values)
        correlation = torch.corrcoef(torch.stack([reference, approximation]))[0, 1]
        assert correlation > 0.9, scope
        assert (approximation - reference).norm() > 0.05 * reference.norm(), scope  # an approximation
