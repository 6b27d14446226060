"""AdaBERT's continuous relaxation of the discrete choices: Gumbel-softmax samples, the annealed
temperature (formulas in :mod:`metakd.search.adabert`) and the entropy that shows whether the
architecture logits have moved."""

from __future__ import annotations

import math

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


def mean_entropy(logits: Tensor) -> float:
    """Mean over the rows of ``logits`` (e.g. the edges of ``alpha``) of the entropy of ``softmax(row)``,
    ``H = -sum_o p_o log p_o`` in nats: ``log(num_columns)`` for uniform rows, 0 for one-hot ones."""
    log_probs = torch.log_softmax(logits.detach().double(), dim=-1)
    return float(-(log_probs.exp() * log_probs).sum(-1).mean())


def max_entropy(num_choices: int) -> float:
    """The entropy of the uniform distribution over ``num_choices`` (``log n``, nats)."""
    return math.log(num_choices)


__all__ = ["gumbel_softmax", "max_entropy", "mean_entropy", "sample_gumbel", "temperature_at"]
