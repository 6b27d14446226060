"""Learned instance weights by a one-step meta-gradient (learning to reweight, Ren et al. 2018).

For a training batch with per-instance losses l_i(theta) and a held-out batch with loss L_val:

1. eps_i = 0 (requires grad); one differentiable SGD step:
   theta' = theta - a * grad_theta sum_i eps_i l_i(theta)   (a = ``inner_lr``);
2. g_i = d L_val(theta') / d eps_i at eps = 0, which equals -a * grad l_i(theta) . grad L_val(theta):
   how much a small up-weighting of instance i would lower the held-out loss;
3. w_i = relu(-g_i), normalised to sum to 1 and multiplied by B so the weights *average 1* (the loss
   keeps the scale of an unweighted mean and the learning rate keeps its meaning). If every w_i is
   zero (no instance helps the held-out batch) the weights fall back to uniform ones (documented in
   :class:`MetaWeights.fallback_uniform`), so the step is an ordinary unweighted step rather than no step.

Since the weights are normalised and g is linear in ``a``, ``inner_lr`` only matters numerically.
The held-out rules (``"all"``, ``"other_domains"``): :mod:`metakd.weighting.lookahead`.

The parts, one file each:

- :mod:`~metakd.weighting.higher_engine` (``engine="higher"``): the look-ahead as written, by double
  backward through ``higher``'s differentiable SGD step;
- :mod:`~metakd.weighting.jvp_engine` (``engine="jvp"``): step 2's closed form, one backward over the
  held-out batch and one forward-mode pass per training domain; the same g, cheaper;
- :mod:`~metakd.weighting.scopes` (``param_names``): the parameters the look-ahead moves (all, the
  heads, or the heads and the last k encoder layers), an approximation when not all.

The computation must run on the unwrapped module (never a DDP wrapper), in fp32; ``"higher"`` needs
``attn_implementation="eager"`` for models with attention (sdpa has no double backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from metakd.weighting.higher_engine import lookahead_gradients
from metakd.weighting.jvp_engine import jvp_gradients
from metakd.weighting.lookahead import HeldoutRule, LookAhead, LossFn, combine_domain_gradients
from metakd.weighting.scopes import scoped_parameters

MetaEngine = Literal["higher", "jvp"]

ENGINES: dict[str, Callable[[LookAhead, Tensor | None], Tensor]] = {
    "higher": lookahead_gradients,
    "jvp": jvp_gradients,
}
"""The engines by name: ``(problem, heldout_domains) -> g`` (B,)."""

__all__ = [
    "ENGINES",
    "HeldoutRule",
    "LossFn",
    "MetaEngine",
    "MetaWeights",
    "combine_domain_gradients",
    "meta_instance_weights",
    "normalise_meta_weights",
]


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


def meta_instance_weights(
    model: nn.Module,
    train_losses_fn: LossFn,
    heldout_losses_fn: LossFn,
    inner_lr: float,
    heldout: HeldoutRule = "all",
    train_domains: Tensor | None = None,
    heldout_domains: Tensor | None = None,
    engine: MetaEngine = "higher",
    param_names: Sequence[str] | None = None,
) -> MetaWeights:
    """Instance weights from a one-step look-ahead (see the module docstring for the formulas).

    Args:
        model: the unwrapped module whose parameters take the inner SGD step (not modified).
        train_losses_fn: ``(network, rows) -> (len(rows),)`` per-instance training losses l_i (all B
            when ``rows`` is None) computed with the callable ``network`` it is given.
        heldout_losses_fn: ``(network, rows) -> (len(rows),)`` per-example held-out losses (all M).
        inner_lr: a, the inner SGD learning rate.
        heldout: ``"all"`` (mean over the held-out batch) or ``"other_domains"`` (needs the domains).
        train_domains: (B,) d_i; heldout_domains: (M,) domains of the held-out examples.
        engine: ``"higher"`` (the look-ahead) or ``"jvp"`` (its closed form); the same g.
        param_names: names (``model.named_parameters()``) of the trainable parameters the look-ahead
            moves; None: all trainable parameters.
    """
    if heldout not in ("all", "other_domains"):
        raise ValueError(f"heldout must be 'all' or 'other_domains', got {heldout!r}")
    if heldout == "other_domains" and (train_domains is None or heldout_domains is None):
        raise ValueError("heldout='other_domains' needs train_domains and heldout_domains")
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'higher' or 'jvp', got {engine!r}")
    params = scoped_parameters(model, param_names)
    device_type = next(iter(params.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        problem = LookAhead(
            model, params, train_losses_fn, heldout_losses_fn, inner_lr, heldout, train_domains
        )
        grad = ENGINES[engine](problem, heldout_domains)
    grad = grad.detach()
    weights, fallback = normalise_meta_weights(grad)
    return MetaWeights(weights=weights, gradients=grad, fallback_uniform=fallback)
