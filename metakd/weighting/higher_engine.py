"""The ``higher`` meta-weight engine: the look-ahead as written, by double backward.

One differentiable SGD step theta' = theta - a * grad sum_i eps_i l_i(theta) at eps = 0 (``higher``'s
``innerloop_ctx``), the held-out losses at theta', and g = d L_heldout(theta') / d eps by a backward
through the step: one double backward through the whole network per held-out domain group. Measured
with MiniLM-L6, batch 16, seq 64, 4 domains and ``"other_domains"``: 7.5x a plain step
(benchmarks/results/speed.md). Models with attention need ``attn_implementation="eager"`` (sdpa has no
double backward).
"""

from __future__ import annotations

import higher
import torch
from torch import Tensor

from metakd.weighting.lookahead import LookAhead, combine_domain_gradients, heldout_groups


def lookahead_gradients(problem: LookAhead, heldout_domains: Tensor | None) -> Tensor:
    """g by the look-ahead itself: ``higher``'s differentiable SGD step, a double backward per group."""
    inner_opt = torch.optim.SGD(list(problem.params.values()), lr=problem.inner_lr)
    with higher.innerloop_ctx(problem.model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        train_losses = problem.train_losses_fn(fmodel, None).float()
        eps = torch.zeros_like(train_losses, requires_grad=True)
        diffopt.step((eps * train_losses).sum())
        heldout_losses = problem.heldout_losses_fn(fmodel, None).float()
        if problem.heldout == "all":
            (grad,) = torch.autograd.grad(heldout_losses.mean(), eps)
            return grad
        groups = heldout_groups(problem.heldout, heldout_domains)
        per_domain: dict[int, Tensor] = {}
        for n, (e, rows) in enumerate(groups.items()):
            (per_domain[e],) = torch.autograd.grad(
                heldout_losses[rows].sum(), eps, retain_graph=n < len(groups) - 1
            )
    counts = {e: len(rows) for e, rows in groups.items()}
    return combine_domain_gradients(per_domain, counts, problem.train_domains.to(eps.device))
