"""The teacher's learned instance weights (``metakd/meta_teacher/meta_weights.py``): the look-ahead loss
with its domain term, the held-out draws from the training split, and the schedule.

The expected meta-gradient is g_i = -a grad l_i . v (Ren et al. 2018) with l_i = CE_i + lambda_d CE^dom_i
and v the mean held-out CE gradient (over the other domains' examples with ``other_domains``),
computed here with per-example autograd gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import ToyMultiDomainDataModule
from torch import nn
from torch.utils.data import DataLoader

from metakd.errors import ConfigError
from metakd.meta_teacher.domain_loss import DomainAdversary
from metakd.meta_teacher.meta_weights import MetaWeighter
from metakd.meta_teacher.network import TeacherOutput

LAMBDA, A = 0.5, 0.1


class Heads(nn.Module):
    """A class head and a domain head on a shared layer."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.cls, self.dom = nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return self.cls(h), self.dom(h)


def run(part: dict, network) -> TeacherOutput:
    logits, domain_logits = network(part["x"])
    return TeacherOutput(logits, domain_logits, part["x"], None)


def batches() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    train = {"x": torch.randn(5, 3, generator=g), "labels": torch.tensor([0, 1, 1, 0, 1]),
             "domain_ids": torch.tensor([0, 1, 2, 1, 0])}  # fmt: skip
    heldout = {"x": torch.randn(4, 3, generator=g), "labels": torch.tensor([1, 0, 0, 1]),
               "domain_ids": torch.tensor([1, 1, 2, 0])}  # fmt: skip
    return train, heldout


def flat_grad(model: nn.Module, loss: torch.Tensor, scope: str = "") -> torch.Tensor:
    params = [p for name, p in model.named_parameters() if name.startswith(scope)]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def expected_gradients(
    model: Heads, train: dict, heldout: dict, targets, rule: str, scope: str = ""
) -> torch.Tensor:
    """g over the parameters whose names start with ``scope`` (all by default)."""
    held = [
        flat_grad(
            model, F.cross_entropy(model(heldout["x"][j : j + 1])[0], heldout["labels"][j : j + 1]), scope
        )
        for j in range(4)
    ]
    out = []
    for i in range(5):
        logits, domain_logits = model(train["x"][i : i + 1])
        loss = F.cross_entropy(logits, train["labels"][i : i + 1])
        if targets is not None:
            loss = loss + LAMBDA * F.cross_entropy(domain_logits, targets[i : i + 1])
        others = [j for j in range(4) if rule == "all" or heldout["domain_ids"][j] != train["domain_ids"][i]]
        v = sum(held[j] for j in others) / len(others)
        out.append(-A * flat_grad(model, loss, scope) @ v)
    return torch.stack(out)


@pytest.mark.parametrize("engine", ["higher", "jvp"])
@pytest.mark.parametrize(
    ("mode", "rule"), [("none", "all"), ("reversal", "other_domains"), ("corruption", "all")]
)
def test_weights_follow_the_look_ahead_of_the_teacher_loss(engine: str, mode: str, rule: str) -> None:
    torch.manual_seed(1)
    model = Heads()
    train, heldout = batches()
    domain = DomainAdversary(mode, LAMBDA)
    targets = domain.targets(train)
    weighter = MetaWeighter(domain, engine, None, A, rule, every_n_steps=1)
    result = weighter.weights(model, run, train, heldout, targets, weighter.param_names)
    expected = expected_gradients(model, train, heldout, targets, rule)
    assert torch.allclose(result.gradients, expected, atol=1e-7)
    positive = torch.relu(-expected)
    assert torch.allclose(result.weights, positive / positive.sum() * 5, atol=1e-5)


def test_a_scope_moves_only_its_parameters() -> None:
    torch.manual_seed(1)
    model = Heads()
    train, heldout = batches()
    weighter = MetaWeighter(
        DomainAdversary("reversal", LAMBDA), "jvp", ["cls.weight", "cls.bias"], A, "all", 1
    )
    targets = train["domain_ids"]
    result = weighter.weights(model, run, train, heldout, targets, weighter.param_names)
    expected = expected_gradients(model, train, heldout, targets, "all", scope="cls.")
    assert torch.allclose(result.gradients, expected, atol=1e-7)
    assert not torch.allclose(expected, expected_gradients(model, train, heldout, targets, "all"), atol=1e-4)


def test_schedule_and_heldout_draws() -> None:
    weighter = MetaWeighter(DomainAdversary("none", LAMBDA), "jvp", None, A, "all", every_n_steps=3)
    assert [weighter.due(step) for step in range(5)] == [True, False, False, True, False]
    data = ToyMultiDomainDataModule(train_per_domain=2, batch_size=4)  # 6 examples: batches of 4 and 2
    data.setup("fit")
    sizes = [len(weighter.heldout_batch(data, "cpu")["labels"]) for _ in range(3)]
    assert sizes == [4, 2, 4]  # a new shuffled pass after the last batch
    weighter.reset()
    assert len(weighter.heldout_batch(data, "cpu")["labels"]) == 4
    with pytest.raises(ConfigError, match="draws its held-out batch from the datamodule's training split"):
        weighter.heldout_batch(None, "cpu")
    empty = SimpleNamespace(train_dataloader=lambda: DataLoader([]))
    weighter.reset()
    with pytest.raises(ConfigError, match="train_dataloader\\(\\) is empty"):
        weighter.heldout_batch(empty, "cpu")
