"""Learned instance weights by a one-step meta-gradient (learning to reweight, Ren et al. 2018).

For a training batch with per-instance losses l_i(theta) and a held-out batch with loss L_val:

1. eps_i = 0 (requires grad); one differentiable SGD step with ``higher``:
   theta' = theta - a * grad_theta sum_i eps_i l_i(theta)   (a = ``inner_lr``);
2. g_i = d L_val(theta') / d eps_i at eps = 0, which equals -a * grad l_i(theta) . grad L_val(theta):
   how much a small up-weighting of instance i would lower the held-out loss;
3. w_i = relu(-g_i), normalised to sum to 1 and multiplied by B so the weights *average 1* (the loss
   keeps the scale of an unweighted mean and the learning rate keeps its meaning). If every w_i is
   zero (no instance helps the held-out batch) the weights fall back to uniform ones (documented in
   :class:`MetaWeights.fallback_uniform`), so the step is an ordinary unweighted step rather than no step.

Since the weights are normalised and g is linear in ``a``, ``inner_lr`` only matters numerically.

Held-out rule ``"other_domains"`` (Meta-KD): the held-out loss of training instance i uses only
held-out examples whose domain differs from d_i, as their mean. The held-out loss is a sum over
examples, so with S_e = sum_{j in held-out domain e} l_j(theta') and g^(e) = dS_e/deps (one
``autograd.grad`` per held-out domain e present, ``retain_graph=True``):

    g_i = (1 / N_{-d_i}) sum_{e != d_i} g^(e)_i,   N_{-k} = number of held-out examples not in k.

Cost: one double backward per held-out domain present (up to K) instead of one for ``"all"``; the
forward passes and the differentiable inner step are shared. Measured with MiniLM-L6, batch 8, seq
128 on 2 CPU cores: plain step 0.57 s; meta step (look-ahead + plain step) 3.5x with ``"all"``,
about 7x with ``"other_domains"`` and 4 domains. ``meta_every_n_steps`` in the teacher amortises it.
An instance with no other-domain held-out example (e.g. a held-out batch of its own domain only)
uses the whole held-out batch.

The look-ahead must run on the unwrapped module (never a DDP wrapper), in fp32, and models with
attention need ``attn_implementation="eager"`` (sdpa has no double backward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import higher
import torch
from torch import Tensor, nn

HeldoutRule = Literal["other_domains", "all"]


@dataclass
class MetaWeights:
    """Result of :func:`meta_instance_weights`.

    Attributes:
        weights: (B,) non-negative weights averaging 1.
        gradients: (B,) raw g_i = dL_heldout/deps_i (before relu and normalisation).
        fallback_uniform: True when every relu(-g_i) was 0 and ``weights`` are ones.
    """

    weights: Tensor
    gradients: Tensor
    fallback_uniform: bool


def normalise_meta_weights(gradients: Tensor) -> tuple[Tensor, bool]:
    """relu(-g), normalised to sum to 1, times B (mean 1); all zero -> ones. Returns (w, fallback)."""
    w = torch.relu(-gradients)
    total = w.sum()
    if not torch.isfinite(total):
        raise FloatingPointError(f"meta-gradient is not finite: {gradients.tolist()}")
    if total <= 0:
        return torch.ones_like(w), True
    return w / total * w.shape[0], False


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


def meta_instance_weights(
    model: nn.Module,
    train_losses_fn: Callable[[nn.Module], Tensor],
    heldout_losses_fn: Callable[[nn.Module], Tensor],
    inner_lr: float,
    heldout: HeldoutRule = "all",
    train_domains: Tensor | None = None,
    heldout_domains: Tensor | None = None,
) -> MetaWeights:
    """Instance weights from a one-step look-ahead (see the module docstring for the formulas).

    Args:
        model: the unwrapped module whose parameters take the inner SGD step (not modified).
        train_losses_fn: fmodel -> (B,) per-instance training losses l_i computed with the
            functional (fast-weight) copy it is given.
        heldout_losses_fn: fmodel -> (M,) per-example held-out losses.
        inner_lr: a, the inner SGD learning rate.
        heldout: ``"all"`` (mean over the held-out batch) or ``"other_domains"`` (needs the domains).
        train_domains: (B,) d_i; heldout_domains: (M,) domains of the held-out examples.
    """
    if heldout == "other_domains" and (train_domains is None or heldout_domains is None):
        raise ValueError("heldout='other_domains' needs train_domains and heldout_domains")
    if heldout not in ("all", "other_domains"):
        raise ValueError(f"heldout must be 'all' or 'other_domains', got {heldout!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    inner_opt = torch.optim.SGD(params, lr=inner_lr)
    device_type = params[0].device.type if params else "cpu"
    with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            train_losses = train_losses_fn(fmodel).float()
            eps = torch.zeros_like(train_losses, requires_grad=True)
            diffopt.step((eps * train_losses).sum())
            heldout_losses = heldout_losses_fn(fmodel).float()
            if heldout == "all":
                (grad,) = torch.autograd.grad(heldout_losses.mean(), eps)
            else:
                present = [int(e) for e in torch.unique(heldout_domains).tolist()]
                per_domain: dict[int, Tensor] = {}
                counts: dict[int, int] = {}
                for n, e in enumerate(present):
                    mask = heldout_domains == e
                    counts[e] = int(mask.sum())
                    (per_domain[e],) = torch.autograd.grad(
                        heldout_losses[mask].sum(), eps, retain_graph=n < len(present) - 1
                    )
                grad = combine_domain_gradients(per_domain, counts, train_domains.to(eps.device))
    grad = grad.detach()
    weights, fallback = normalise_meta_weights(grad)
    return MetaWeights(weights=weights, gradients=grad, fallback_uniform=fallback)
