"""Per-instance distillation losses, as small pure functions.

Every feature loss returns a PER-INSTANCE tensor of shape ``(B,)`` so that instance weights act on
each example (EasyNLP reduces each MSE to a batch mean first, which collapses the weights to one
scalar; we do not). Meta-KD's two distillation stages (docs/METAKD.md) combine them as:

- intermediate stage (intermediate layers):
  ``L_inter = (1/B) sum_i w_i * (L_hid,i + L_att,i + lambda_tk * L_tk,i)``, with
  ``w_i = (1 + t_i) * sigma_i`` and ``sigma_i = 1 / (1 + exp((1 - p_T(y_i | x_i))^2))``
  (see :func:`weighted_intermediate_loss`), where ``L_hid,i`` / ``L_att,i`` are the weighted sums of
  the per-match losses of the layer map (``metakd.distill.layer_maps``);
- prediction stage (prediction layer): ``L_pred = (1/B) sum_i soft_cross_entropy_i`` (+ an optional
  hard-label CE).

How a method sums these terms is data: its stages of loss terms in ``metakd.distill``.
Feature losses are looked up by name in :data:`FEATURE_LOSSES`; add your own with
:func:`register_feature_loss` (signature ``(student, teacher, attention_mask) -> (B,)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FeatureLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""``(student_feature, teacher_feature, attention_mask | None) -> (B,)`` per-instance loss."""


def _token_mask(reference: Tensor, attention_mask: Tensor | None) -> Tensor:
    """A float (B, T) mask of valid tokens (all ones when ``attention_mask`` is None)."""
    batch, length = reference.shape[0], reference.shape[1]
    if attention_mask is None:
        return reference.new_ones(batch, length)
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, T) = {(batch, length)}"
        )
    return attention_mask.to(reference.dtype)


def hidden_mse(student: Tensor, teacher: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Per-instance MSE between hidden states, over valid tokens and features.

    ``student``, ``teacher``: (B, T, H) (the student already projected to the teacher width).
    Returns (B,): ``sum_{t valid, h} (s - t)^2 / (n_valid_tokens * H)``.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"hidden_mse: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
            "project the student to the teacher's hidden size first"
        )
    mask = _token_mask(student, attention_mask)  # (B, T)
    squared = (student - teacher).pow(2).sum(dim=-1)  # (B, T)
    valid = mask.sum(dim=1).clamp_min(1.0)
    return (squared * mask).sum(dim=1) / (valid * student.shape[-1])


def attention_mse(
    student_attention: Tensor, teacher_attention: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Per-instance MSE between attention probability maps, over heads and valid (query, key) pairs.

    ``student_attention``: (B, H_S, T, T), ``teacher_attention``: (B, H_T, T, T).
    With equal head counts this is the mean of the per-head MSEs (TinyBERT). When the head counts
    differ, heads cannot be paired, so each side's maps are averaged over its heads first and the
    MSE is taken between the two (B, T, T) mean maps.
    Only pairs where both the query and the key are real tokens count. Returns (B,).
    """
    if student_attention.dim() != 4 or teacher_attention.dim() != 4:
        raise ValueError("attention_mse expects (B, heads, T, T) tensors")
    if student_attention.shape[0] != teacher_attention.shape[0] or (
        student_attention.shape[2:] != teacher_attention.shape[2:]
    ):
        raise ValueError(
            f"attention_mse: student {tuple(student_attention.shape)} and teacher "
            f"{tuple(teacher_attention.shape)} differ in batch or sequence size"
        )
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(dim=1, keepdim=True)
        teacher_attention = teacher_attention.mean(dim=1, keepdim=True)
    batch, heads, length, _ = student_attention.shape
    token_mask = _token_mask(student_attention[:, 0, :, 0], attention_mask)  # (B, T)
    pair_mask = token_mask[:, :, None] * token_mask[:, None, :]  # (B, T, T)
    squared = (student_attention - teacher_attention).pow(2).sum(dim=1)  # (B, T, T), summed heads
    valid = pair_mask.sum(dim=(1, 2)).clamp_min(1.0)
    return (squared * pair_mask).sum(dim=(1, 2)) / (valid * heads)


def transferable_mse(student: Tensor, teacher: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Per-instance MSE between transferable-knowledge vectors g, over features.

    ``student``, ``teacher``: (B, H_T). ``attention_mask`` is unused (sentence-level vectors).
    """
    del attention_mask
    if student.shape != teacher.shape:
        raise ValueError(
            f"transferable_mse: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ"
        )
    return (student - teacher).pow(2).mean(dim=-1)


def hidden_cosine(student: Tensor, teacher: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Per-instance ``1 - cos(s_t, t_t)`` averaged over valid tokens (an alternative hidden loss)."""
    mask = _token_mask(student, attention_mask)
    distance = 1.0 - F.cosine_similarity(student, teacher, dim=-1)  # (B, T)
    return (distance * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, t2_scaling: bool = False
) -> Tensor:
    """Per-instance soft cross-entropy ``sum_c -softmax(z_T/T)_c log softmax(z_S/T)_c``.

    Multiplied by ``T^2`` when ``t2_scaling`` (Hinton et al. 2015: keeps gradient magnitudes
    comparable across temperatures). The teacher side is detached. Returns (B,).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"soft_cross_entropy: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ (same label set expected)"
        )
    target = torch.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_probs = torch.log_softmax(student_logits / temperature, dim=-1)
    loss = -(target * log_probs).sum(dim=-1)
    return loss * temperature**2 if t2_scaling else loss


def domain_expertise(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """Domain-expertise weight ``sigma_i = 1 / (1 + exp((1 - p_T(y_i | x_i))^2))``, shape (B,).

    Lies in [1/(1+e), 1/2]: highest where the teacher is confident in the gold label. Detached. An
    unknown label (negative, e.g. -100 for an augmented example only the teacher labels) is replaced by
    the teacher's own prediction, so sigma_i = 1 / (1 + exp((1 - max_c p_T(c | x_i))^2)).
    """
    probs = torch.softmax(teacher_logits.detach().float(), dim=-1)
    labels = torch.where(labels < 0, probs.argmax(dim=-1), labels.long())
    gold = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return torch.sigmoid(-((1.0 - gold) ** 2))


def instance_weights(transferability: Tensor, expertise: Tensor) -> Tensor:
    """Meta-KD instance weights ``w_i = (1 + t_i) * sigma_i``, shape (B,). Detached."""
    return ((1.0 + transferability) * expertise).detach()


def weighted_intermediate_loss(
    hidden: Tensor,
    attention: Tensor,
    transferable: Tensor,
    weights: Tensor | None = None,
    lambda_tk: float = 0.5,
) -> Tensor:
    """``L_1 = (1/B) sum_i w_i * (L_hid,i + L_att,i + lambda_tk * L_tk,i)`` (a scalar).

    All inputs are (B,); ``weights=None`` means w_i = 1 (TinyBERT-KD, no instance weighting).
    """
    per_instance = hidden + attention + lambda_tk * transferable
    if weights is not None:
        if weights.shape != per_instance.shape:
            raise ValueError(f"weights {tuple(weights.shape)} != losses {tuple(per_instance.shape)}")
        per_instance = weights * per_instance
    return per_instance.mean()


FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "hidden_mse": hidden_mse,
    "hidden_cosine": hidden_cosine,
    "attention_mse": attention_mse,
    "transferable_mse": transferable_mse,
}
"""Feature losses by name, for ``LayerMatch.loss``. Extend with :func:`register_feature_loss`."""


def register_feature_loss(name: str) -> Callable[[FeatureLoss], FeatureLoss]:
    """Decorator that adds a per-instance feature loss to :data:`FEATURE_LOSSES` under ``name``."""

    def decorator(function: FeatureLoss) -> FeatureLoss:
        if name in FEATURE_LOSSES and FEATURE_LOSSES[name] is not function:
            raise ValueError(f"a feature loss named {name!r} is already registered")
        FEATURE_LOSSES[name] = function
        return function

    return decorator


def get_feature_loss(name: str) -> FeatureLoss:
    """Look a feature loss up by name, with an error that lists the known names."""
    try:
        return FEATURE_LOSSES[name]
    except KeyError:
        raise KeyError(
            f"unknown distillation loss {name!r}; known: {sorted(FEATURE_LOSSES)} "
            "(register your own with metakd.distill.losses.register_feature_loss)"
        ) from None
