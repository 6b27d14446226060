"""The two meta-weight engines on their own (``metakd/weighting/higher_engine.py``, ``jvp_engine.py``),
against g computed by hand for a one-parameter model.

l(x, y) = (theta x - y)^2 with theta = 1, so grad l = 2 (x - y) x, and a = 0.5:

- training rows x = (1, 2, -1), y = (0, 1, 0), domains (0, 1, 1): grad l_i = (2, 4, 2);
- held-out rows x = (1, 3), y = (2, 3), domains (0, 1): grad l_j = (-2, 0).

``all``: g_i = -a grad l_i * mean_j grad l_j = -0.5 grad l_i * (-1) = (1, 2, 1).
``other_domains``: row 0 (domain 0) sees held-out domain 1 only (gradient 0): g_0 = 0; rows 1, 2
(domain 1) see domain 0 (gradient -2): g = -0.5 * (4, 2) * (-2) = (4, 2).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metakd.weighting.higher_engine import lookahead_gradients
from metakd.weighting.jvp_engine import jvp_gradients
from metakd.weighting.lookahead import LookAhead, heldout_groups

X_TRAIN, Y_TRAIN, D_TRAIN = (
    torch.tensor([1.0, 2.0, -1.0]),
    torch.tensor([0.0, 1.0, 0.0]),
    torch.tensor([0, 1, 1]),
)
X_HELD, Y_HELD, D_HELD = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]), torch.tensor([0, 1])
EXPECTED = {"all": [1.0, 2.0, 1.0], "other_domains": [0.0, 4.0, 2.0]}
ENGINES = pytest.mark.parametrize("engine", [lookahead_gradients, jvp_gradients], ids=["higher", "jvp"])


def problem(heldout: str, calls: list | None = None) -> LookAhead:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)

    def losses(x, y, record):
        def fn(network, rows):
            if record is not None:
                record.append((None if rows is None else rows.tolist(), torch.is_grad_enabled()))
            xs, ys = (x, y) if rows is None else (x[rows], y[rows])
            return (network(xs.unsqueeze(1)).squeeze(1) - ys) ** 2

        return fn

    params = dict(model.named_parameters())
    return LookAhead(
        model, params, losses(X_TRAIN, Y_TRAIN, calls), losses(X_HELD, Y_HELD, None), 0.5, heldout, D_TRAIN
    )


@ENGINES
@pytest.mark.parametrize("heldout", ["all", "other_domains"])
def test_engine_gives_the_hand_computed_meta_gradient(engine, heldout: str) -> None:
    look_ahead = problem(heldout)
    g = engine(look_ahead, D_HELD)
    assert g.tolist() == pytest.approx(EXPECTED[heldout], abs=1e-6)
    assert look_ahead.model.weight.item() == 1.0  # the model is left as it was


def test_higher_steps_once_through_the_whole_training_batch() -> None:
    calls: list = []
    lookahead_gradients(problem("other_domains", calls), D_HELD)
    assert calls == [(None, True)]  # one differentiable forward of every row


def test_jvp_runs_each_training_domain_forward_only() -> None:
    """The closed form needs no autograd graph of the training batch: one forward-mode pass per training
    domain, on that domain's rows."""
    calls: list = []
    jvp_gradients(problem("other_domains", calls), D_HELD)
    assert calls == [([0], False), ([1, 2], False)]
    calls.clear()
    jvp_gradients(problem("all", calls), D_HELD)
    assert calls == [(None, False)]


def test_heldout_groups() -> None:
    assert heldout_groups("all", D_HELD) == {-1: None}
    groups = heldout_groups("other_domains", torch.tensor([2, 0, 2]))
    assert {k: v.tolist() for k, v in groups.items()} == {0: [1], 2: [0, 2]}
