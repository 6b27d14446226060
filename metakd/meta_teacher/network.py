"""The teacher's network: an encoder with heads on it, as a plain module (what the meta look-ahead
differentiates through).

Heads of the Meta-KD teacher (docs/METAKD.md): a classifier on the [CLS] state, a domain embedding
E (K x H), ``corrupt_dense`` (H -> H) and a domain classifier (H -> K):

    c_i = masked mean of the last-layer states,   g_i = corrupt_dense(E[d_i] + c_i),
    u_i = dropout(tanh(g_i)),                      domain_logits_i = domain_classifier(u_i)

(with ``reverse_domain_gradient``, a gradient reversal layer between u and the domain classifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metakd.backbones import BackboneError, load_encoder
from metakd.errors import ConfigError
from metakd.losses import reverse_gradient
from metakd.prototypes import masked_mean_pool
from metakd.weighting.scopes import MetaParams, meta_parameter_names


@dataclass
class TeacherOutput:
    """What :meth:`MetaTeacher.forward` returns (docs/ARCHITECTURE.md).

    Attributes:
        logits: (B, C) classifier on the [CLS] state (the multi-task teacher: each example's domain head).
        domain_logits: (B, K) domain head on u = dropout(tanh(corrupt_dense(E[d] + c))); None for a
            teacher without a domain head (:class:`MultiTaskTeacher`).
        pooled: (B, H) c, masked mean of the last-layer token states.
        transferable: (B, H) g = corrupt_dense(E[d] + c), before tanh; None for a teacher without it
            (``"transferable" not in type(teacher).provides``).
        hidden_states: L+1 tensors (B, T, H) (embedding output, then each layer) or None.
        attentions: L tensors (B, heads, T, T) of attention probabilities or None.
    """

    logits: Tensor
    domain_logits: Tensor | None
    pooled: Tensor
    transferable: Tensor | None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


def build_encoder(
    backbone: str, encoder_config: dict[str, Any] | None = None, attn_implementation: str | None = None
) -> nn.Module:
    """The encoder: pre-trained ``backbone`` weights, or a fresh ``BertConfig(**encoder_config)``.

    The pooler is dropped (or frozen when the architecture has no switch): the classifier reads the
    raw [CLS] state, and unused trainable parameters would trouble DDP.
    """
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if encoder_config is not None:
            from transformers import AutoModel, BertConfig

            encoder = AutoModel.from_config(BertConfig(**encoder_config), add_pooling_layer=False, **kwargs)
        else:
            try:
                encoder = load_encoder(backbone, add_pooling_layer=False, **kwargs)
            except TypeError:  # an architecture without a pooler switch
                encoder = load_encoder(backbone, **kwargs)
    except (ValueError, ImportError) as err:
        if attn_implementation == "eager" and not isinstance(err, BackboneError):
            raise ConfigError(
                f"backbone {backbone!r} cannot be built with attn_implementation='eager', which the meta "
                f"weighting (a double backward through attention) needs: {err}. Use weighting 'prototype' "
                "or 'none' with this backbone."
            ) from err
        raise
    pooler = getattr(encoder, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    return encoder


def attn_implementation(encoder: nn.Module) -> str | None:
    """The attention kernel the encoder's config names (None when it names none)."""
    config = getattr(encoder, "config", None)
    return getattr(config, "_attn_implementation", None)


def use_eager_attention(encoder: nn.Module) -> None:
    """Switch ``encoder`` to eager attention (sdpa returns no attention probabilities)."""
    if attn_implementation(encoder) == "eager":
        return
    if not hasattr(encoder, "set_attn_implementation"):
        raise ValueError(
            "attention probabilities need attn_implementation='eager'; build the teacher with "
            "attn_implementation='eager' (this transformers version cannot switch a loaded model)"
        )
    encoder.set_attn_implementation("eager")


class EncoderNetwork(nn.Module):
    """An encoder with heads on it (a plain module: what the meta look-ahead differentiates through).

    :meth:`forward` runs the encoder and hands its last-layer states to :meth:`heads`, which subclasses
    implement; ``encoder`` and ``dropout`` are set by them.
    """

    encoder: nn.Module
    dropout: nn.Module

    def meta_parameter_names(self, scope: MetaParams, last_k: int = 1) -> list[str] | None:
        """The parameters the meta look-ahead moves (:func:`metakd.weighting.scopes.meta_parameter_names`):
        ``all`` (None: every trainable one), ``head`` (the heads on the encoder) or ``last_k`` (the heads
        and the encoder's last ``last_k`` layers)."""
        return meta_parameter_names(self, scope, last_k)

    def use_eager_attention(self) -> None:
        """Switch the encoder to eager attention (sdpa returns no attention probabilities)."""
        use_eager_attention(self.encoder)

    def heads(
        self, states: Tensor, attention_mask: Tensor, domain_ids: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(logits, domain_logits, pooled, transferable)`` from the last-layer states (B, T, H)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        domain_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TeacherOutput:
        if domain_ids is None:
            raise ValueError(
                f"{type(self).__name__} needs domain_ids (the heads depend on each example's domain)"
            )
        if output_attentions:
            self.use_eager_attention()
        encoded = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits, domain_logits, pooled, transferable = self.heads(
            encoded.last_hidden_state, attention_mask, domain_ids
        )
        return TeacherOutput(
            logits=logits,
            domain_logits=domain_logits,
            pooled=pooled,
            transferable=transferable,
            hidden_states=tuple(encoded.hidden_states) if output_hidden_states else None,
            attentions=tuple(encoded.attentions) if output_attentions else None,
        )


class TeacherNetwork(EncoderNetwork):
    """Encoder and Meta-KD heads (see the module docstring)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        num_domains: int,
        dropout: float,
        reverse_domain_gradient: bool,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        self.domain_embedding = nn.Embedding(num_domains, hidden)
        self.corrupt_dense = nn.Linear(hidden, hidden)
        self.domain_classifier = nn.Linear(hidden, num_domains)
        self.reverse_domain_gradient = reverse_domain_gradient

    def heads(
        self, states: Tensor, attention_mask: Tensor, domain_ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits = self.classifier(self.dropout(states[:, 0]))
        pooled = masked_mean_pool(states, attention_mask)
        transferable = self.corrupt_dense(self.domain_embedding(domain_ids) + pooled)
        u = self.dropout(torch.tanh(transferable))
        if self.reverse_domain_gradient:
            u = reverse_gradient(u)
        return logits, self.domain_classifier(u), pooled, transferable
