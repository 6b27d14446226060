"""The ``jvp`` meta-weight engine: the look-ahead's meta-gradient in closed form.

At eps = 0, g_i = -a * grad l_i(theta) . v with v the gradient of the held-out loss (Ren et al. 2018):
nothing second-order is left, so unlike MAML's "first-order" shortcut nothing is dropped. Evaluated
directly: v^(e) = grad S_e(theta) by one backward per held-out domain *sub-batch* (together: one
backward over the held-out batch), the direction v_{-k} = (1/N_{-k}) sum_{e != k} v^(e) per training
domain k, and grad l_i . v_{-d_i} for the training instances of domain k by one forward-mode pass
(``torch.func.jvp``) over their sub-batch, without an autograd graph. The parameters outside the scope
enter as constants: the layers below the scope run without autograd or tangents, so a smaller scope is
cheaper. The same g as the ``higher`` engine (tests/test_weighting.py, tests/test_meta_engines.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, jvp

from metakd.weighting.lookahead import LookAhead, heldout_groups


def jvp_gradients(problem: LookAhead, heldout_domains: Tensor | None) -> Tensor:
    """g by the closed form: held-out gradients by backward, their dot products by forward mode."""
    model, train_domains = problem.model, problem.train_domains
    names = list(problem.params)
    primals = tuple(p.detach() for p in problem.params.values())
    # Everything outside the scope enters as constants: no autograd graph, no tangents below the scope.
    constants = {name: t.detach() for name, t in [*model.named_parameters(), *model.named_buffers()]}

    def network(scoped: Sequence[Tensor]) -> Callable[..., Any]:
        tensors = {**constants, **dict(zip(names, scoped))}
        return lambda *args, **kwargs: functional_call(model, tensors, args, kwargs)

    # v^(e): gradient of the SUM of group e's held-out losses, one backward per group sub-batch.
    directions: dict[int, tuple[Tensor, ...]] = {}
    counts: dict[int, int] = {}
    for e, rows in heldout_groups(problem.heldout, heldout_domains).items():
        leaves = tuple(p.clone().requires_grad_(True) for p in primals)
        losses = problem.heldout_losses_fn(network(leaves), rows).float()
        grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
        directions[e] = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(primals, grads))
        counts[e] = losses.shape[0]

    def direction(excluded: int | None) -> tuple[Tensor, ...]:
        """(1/N) sum of v^(e) over the groups e != excluded (all groups when none is left)."""
        kept = [e for e in directions if e != excluded] or list(directions)
        total = sum(counts[e] for e in kept)
        return tuple(sum(directions[e][k] for e in kept) / total for k in range(len(primals)))

    if problem.heldout == "all":
        train_groups: dict[int | None, Tensor | None] = {None: None}
    else:
        train_groups = {
            int(k): torch.nonzero(train_domains == k).squeeze(1) for k in torch.unique(train_domains).tolist()
        }
    grad: Tensor | None = None
    for k, rows in train_groups.items():
        with torch.no_grad():  # forward mode only: no autograd graph of the training sub-batch
            _, dots = jvp(
                lambda *scoped, rows=rows: problem.train_losses_fn(network(scoped), rows).float(),
                primals,
                direction(k),
            )
        if rows is None:
            return -problem.inner_lr * dots
        if grad is None:
            grad = torch.zeros(train_domains.shape[0], dtype=dots.dtype, device=dots.device)
        grad[rows] = -problem.inner_lr * dots
    return grad
