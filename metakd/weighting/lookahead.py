"""What both meta-weight engines share: the look-ahead problem and its held-out domain groups.

A training batch with per-instance losses l_i(theta), a held-out batch, an inner learning rate a and
a held-out rule. Both engines return g_i = d L_heldout(theta') / d eps_i at eps = 0 for the one-step
look-ahead theta' = theta - a * grad sum_i eps_i l_i(theta) (:mod:`metakd.weighting`).

Held-out rule ``"other_domains"`` (Meta-KD): the held-out loss of training instance i uses only
held-out examples whose domain differs from d_i, as their mean. The held-out loss is a sum over
examples, so with S_e = sum_{j in held-out domain e} l_j(theta') and g^(e) = dS_e/deps:

    g_i = (1 / N_{-d_i}) sum_{e != d_i} g^(e)_i,   N_{-k} = number of held-out examples not in k.

An instance with no other-domain held-out example (e.g. a held-out batch of its own domain only)
uses the whole held-out batch. Rule ``"all"``: the mean over the whole held-out batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

HeldoutRule = Literal["other_domains", "all"]

LossFn = Callable[[Callable[..., Any], Tensor | None], Tensor]
"""``(network, rows) -> per-instance losses`` of the batch's rows ``rows`` (all rows when None), computed
with ``network``, a callable with the module's signature (the module's fast-weight copy)."""


@dataclass
class LookAhead:
    """The inputs of :func:`metakd.weighting.meta_instance_weights` both engines share.

    Attributes:
        model: the unwrapped module (left unchanged).
        params: the trainable parameters the look-ahead moves, by name (the scope).
        train_losses_fn, heldout_losses_fn: see :data:`LossFn`.
        inner_lr: a.
        heldout: the held-out rule.
        train_domains: (B,) d_i (``"other_domains"`` only).
    """

    model: nn.Module
    params: dict[str, nn.Parameter]
    train_losses_fn: LossFn
    heldout_losses_fn: LossFn
    inner_lr: float
    heldout: HeldoutRule
    train_domains: Tensor | None


def heldout_groups(heldout: HeldoutRule, heldout_domains: Tensor | None) -> dict[int, Tensor | None]:
    """Held-out domain e -> its rows (one group of all rows, key -1, for ``"all"``)."""
    if heldout == "all":
        return {-1: None}
    return {
        int(e): torch.nonzero(heldout_domains == e).squeeze(1) for e in torch.unique(heldout_domains).tolist()
    }


def combine_domain_gradients(
    per_domain: dict[int, Tensor],
    heldout_counts: dict[int, int],
    train_domains: Tensor,
) -> Tensor:
    """g_i = (1/N_{-d_i}) sum_{e != d_i} g^(e)_i; fall back to the mean over all held-out examples.

    Args:
        per_domain: held-out domain e -> (B,) gradient of the *sum* of that domain's held-out losses.
        heldout_counts: e -> number of held-out examples of domain e.
        train_domains: (B,) d_i.
    """
    stacked = torch.stack(list(per_domain.values()))  # (E, B)
    domains = torch.tensor(list(per_domain.keys()), device=train_domains.device)
    counts = torch.tensor([heldout_counts[e] for e in per_domain], dtype=stacked.dtype, device=stacked.device)
    other = (domains.unsqueeze(1) != train_domains.unsqueeze(0)).to(stacked.dtype)  # (E, B)
    other_sum = (stacked * other).sum(0)
    other_count = (counts.unsqueeze(1) * other).sum(0)
    all_mean = stacked.sum(0) / counts.sum()
    return torch.where(other_count > 0, other_sum / other_count.clamp_min(1.0), all_mean)
