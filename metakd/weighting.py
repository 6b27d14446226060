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

Held-out rule ``"other_domains"`` (Meta-KD): the held-out loss of training instance i uses only
held-out examples whose domain differs from d_i, as their mean. The held-out loss is a sum over
examples, so with S_e = sum_{j in held-out domain e} l_j(theta') and g^(e) = dS_e/deps:

    g_i = (1 / N_{-d_i}) sum_{e != d_i} g^(e)_i,   N_{-k} = number of held-out examples not in k.

An instance with no other-domain held-out example (e.g. a held-out batch of its own domain only)
uses the whole held-out batch.

Two engines compute the same g (``engine``):

- ``"higher"``: the look-ahead as written above, with ``higher`` (a double backward through the whole
  network per held-out domain present). Measured with MiniLM-L6, batch 16, seq 64, 4 domains and
  ``"other_domains"``: 7.5x a plain step (benchmarks/results/speed.md).
- ``"jvp"``: step 2's closed form, evaluated directly. v^(e) = grad S_e(theta) by one backward per
  held-out domain *sub-batch* (together: one backward over the held-out batch), the direction
  v_{-k} = (1/N_{-k}) sum_{e != k} v^(e) per training domain k, and grad l_i . v_{-d_i} for the
  training instances of domain k by one forward-mode pass (``torch.func.jvp``) over their sub-batch.
  No double backward, and exactly the same g (``tests/test_weighting.py`` checks both engines
  against the closed form of a linear model and against each other on a tiny BERT). Unlike MAML's
  "first-order" shortcut, nothing is dropped: at eps = 0 the look-ahead has no second-order term.

Parameter scope (``param_names``): the dot products run over these parameters only (all trainable
ones when None), e.g. the heads and the last k encoder layers (:meth:`metakd.teacher.TeacherNetwork.
meta_parameter_names`). With ``"jvp"`` the layers below the scope run without autograd or tangents,
so a smaller scope is cheaper; the weights are then an approximation of the full ones, whose
correlation ``benchmarks/speed.py`` measures.

The computation must run on the unwrapped module (never a DDP wrapper), in fp32; ``"higher"`` needs
``attn_implementation="eager"`` for models with attention (sdpa has no double backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import higher
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

HeldoutRule = Literal["other_domains", "all"]
MetaEngine = Literal["higher", "jvp"]

LossFn = Callable[[Callable[..., Any], Tensor | None], Tensor]
"""``(network, rows) -> per-instance losses`` of the batch's rows ``rows`` (all rows when None), computed
with ``network``, a callable with the module's signature (the module's fast-weight copy)."""


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
    if engine not in ("higher", "jvp"):
        raise ValueError(f"engine must be 'higher' or 'jvp', got {engine!r}")
    params = _scope(model, param_names)
    device_type = next(iter(params.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        compute = _lookahead_gradients if engine == "higher" else _jvp_gradients
        grad = compute(
            _LookAhead(model, params, train_losses_fn, heldout_losses_fn, inner_lr, heldout, train_domains),
            heldout_domains,
        )
    grad = grad.detach()
    weights, fallback = normalise_meta_weights(grad)
    return MetaWeights(weights=weights, gradients=grad, fallback_uniform=fallback)


@dataclass
class _LookAhead:
    """The inputs of :func:`meta_instance_weights` both engines share."""

    model: nn.Module
    params: dict[str, nn.Parameter]
    train_losses_fn: LossFn
    heldout_losses_fn: LossFn
    inner_lr: float
    heldout: HeldoutRule
    train_domains: Tensor | None


def _scope(model: nn.Module, param_names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if param_names is None:
        chosen = trainable
    else:
        unknown = [name for name in param_names if name not in trainable]
        if unknown:
            raise ValueError(
                f"param_names {unknown} are not trainable parameters of the model "
                f"(it has {len(trainable)}, e.g. {list(trainable)[:3]})"
            )
        chosen = {name: trainable[name] for name in param_names}
    if not chosen:
        raise ValueError("the meta look-ahead has no trainable parameters to move")
    return chosen


def _heldout_groups(heldout: HeldoutRule, heldout_domains: Tensor | None) -> dict[int, Tensor | None]:
    """Held-out domain e -> its rows (one group of all rows, key -1, for ``"all"``)."""
    if heldout == "all":
        return {-1: None}
    return {
        int(e): torch.nonzero(heldout_domains == e).squeeze(1) for e in torch.unique(heldout_domains).tolist()
    }


def _lookahead_gradients(problem: _LookAhead, heldout_domains: Tensor | None) -> Tensor:
    """g by the look-ahead itself: ``higher``'s differentiable SGD step, a double backward per group."""
    model, params, train_losses_fn, heldout_losses_fn, inner_lr, heldout, train_domains = vars(
        problem
    ).values()
    inner_opt = torch.optim.SGD(list(params.values()), lr=inner_lr)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
        train_losses = train_losses_fn(fmodel, None).float()
        eps = torch.zeros_like(train_losses, requires_grad=True)
        diffopt.step((eps * train_losses).sum())
        heldout_losses = heldout_losses_fn(fmodel, None).float()
        if heldout == "all":
            (grad,) = torch.autograd.grad(heldout_losses.mean(), eps)
            return grad
        groups = _heldout_groups(heldout, heldout_domains)
        per_domain: dict[int, Tensor] = {}
        for n, (e, rows) in enumerate(groups.items()):
            (per_domain[e],) = torch.autograd.grad(
                heldout_losses[rows].sum(), eps, retain_graph=n < len(groups) - 1
            )
    counts = {e: len(rows) for e, rows in groups.items()}
    return combine_domain_gradients(per_domain, counts, train_domains.to(eps.device))


def _jvp_gradients(problem: _LookAhead, heldout_domains: Tensor | None) -> Tensor:
    """g by the closed form: held-out gradients by backward, their dot products by forward mode."""
    model, params, train_losses_fn, heldout_losses_fn, inner_lr, heldout, train_domains = vars(
        problem
    ).values()
    names = list(params)
    primals = tuple(p.detach() for p in params.values())
    # Everything outside the scope enters as constants: no autograd graph, no tangents below the scope.
    constants = {name: t.detach() for name, t in [*model.named_parameters(), *model.named_buffers()]}

    def network(scoped: Sequence[Tensor]) -> Callable[..., Any]:
        tensors = {**constants, **dict(zip(names, scoped))}
        return lambda *args, **kwargs: functional_call(model, tensors, args, kwargs)

    # v^(e): gradient of the SUM of group e's held-out losses, one backward per group sub-batch.
    directions: dict[int, tuple[Tensor, ...]] = {}
    counts: dict[int, int] = {}
    for e, rows in _heldout_groups(heldout, heldout_domains).items():
        leaves = tuple(p.clone().requires_grad_(True) for p in primals)
        losses = heldout_losses_fn(network(leaves), rows).float()
        grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
        directions[e] = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(primals, grads))
        counts[e] = losses.shape[0]

    def direction(excluded: int | None) -> tuple[Tensor, ...]:
        """(1/N) sum of v^(e) over the groups e != excluded (all groups when none is left)."""
        kept = [e for e in directions if e != excluded] or list(directions)
        total = sum(counts[e] for e in kept)
        return tuple(sum(directions[e][k] for e in kept) / total for k in range(len(primals)))

    if heldout == "all":
        train_groups: dict[int | None, Tensor | None] = {None: None}
    else:
        train_groups = {
            int(k): torch.nonzero(train_domains == k).squeeze(1) for k in torch.unique(train_domains).tolist()
        }
    grad: Tensor | None = None
    for k, rows in train_groups.items():
        with torch.no_grad():  # forward mode only: no autograd graph of the training sub-batch
            _, dots = jvp(
                lambda *scoped, rows=rows: train_losses_fn(network(scoped), rows).float(),
                primals,
                direction(k),
            )
        if rows is None:
            return -inner_lr * dots
        if grad is None:
            grad = torch.zeros(train_domains.shape[0], dtype=dots.dtype, device=dots.device)
        grad[rows] = -inner_lr * dots
    return grad
