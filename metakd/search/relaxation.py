"""AdaBERT's continuous relaxation of the discrete choices: Gumbel-softmax samples and the annealed
temperature (formulas in :mod:`metakd.search.adabert`)."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``."""
    uniform = torch.rand(shape, generator=generator).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def gumbel_softmax(
    logits: Tensor, tau: float, hard: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """``softmax((logits + g) / tau)`` over the last axis; ``hard``: the one-hot argmax in the forward
    pass with the soft sample's gradient (straight-through)."""
    noise = sample_gumbel(logits.shape, generator).to(logits.device, logits.dtype)
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


def temperature_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Exponential annealing from ``start`` (step 0) to ``end`` (step ``total_steps - 1``)."""
    if total_steps <= 1:
        return end
    fraction = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return start * (end / start) ** fraction


__all__ = ["gumbel_softmax", "sample_gumbel", "temperature_at"]
