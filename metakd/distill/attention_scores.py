"""Unnormalised attention scores of BERT-style layers, recomputed from the layers' input states.

TinyBERT (Jiao et al. 2020, eq. 3) fits the student's attention matrices to the teacher's *before* the
softmax, ``A = Q K^T / sqrt(d_head)``; the authors' code compares those scores after replacing the
padded keys' large negative values by 0. HuggingFace BERT returns only the probabilities
``softmax(A + mask)`` (after attention dropout, in training). The scores are cheap to recompute: layer
``m``'s input is ``hidden_states[m - 1]`` (the embedding output for ``m = 1``), so

    A_m = (h_{m-1} W_q^T + b_q)(h_{m-1} W_k^T + b_k)^T / sqrt(d_head), per head,

with that layer's own ``query`` and ``key`` projections: the same tensor the layer computed, and the same
gradient for the student. No model code changes, and it works for a student and a teacher alike.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from metakd.distill.layer_maps import RecipeError


def is_self_attention(module: nn.Module) -> bool:
    """A BERT-style self-attention block: ``query`` and ``key`` projections and a head count."""
    return (
        isinstance(getattr(module, "query", None), nn.Linear)
        and isinstance(getattr(module, "key", None), nn.Linear)
        and isinstance(getattr(module, "num_attention_heads", None), int)
    )


def self_attentions(model: nn.Module, num_layers: int, who: str) -> list[nn.Module]:
    """The ``num_layers`` self-attention blocks of ``model`` in layer order (module order), or a
    :class:`RecipeError` that says why the attention-score loss cannot read ``who``'s scores."""
    found = [m for m in model.modules() if is_self_attention(m)]
    if len(found) != num_layers:
        raise RecipeError(
            f"the attention-score loss recomputes Q K^T / sqrt(d) from BERT-style self-attention blocks "
            f"(query/key projections), but the {who} {type(model).__name__} has {len(found)} of them for "
            f"{num_layers} layers; use distillation_options.attention: probabilities"
        )
    for module in found:
        kind = getattr(module, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise RecipeError(
                f"the attention-score loss needs absolute position embeddings; the {who}'s attention uses "
                f"{kind!r} (its scores have a relative-position term); use distillation_options.attention: "
                "probabilities"
            )
    return found


def attention_scores(attention: nn.Module, hidden: Tensor) -> Tensor:
    """``Q K^T / sqrt(d_head)`` of one self-attention block from its input states ``hidden`` (B, T, D):
    shape (B, heads, T, T), before the mask and the softmax."""
    heads = int(attention.num_attention_heads)
    batch, length, _ = hidden.shape
    query = attention.query(hidden).view(batch, length, heads, -1).transpose(1, 2)
    key = attention.key(hidden).view(batch, length, heads, -1).transpose(1, 2)
    return query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])


__all__ = ["attention_scores", "is_self_attention", "self_attentions"]
