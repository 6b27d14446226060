"""The BiLSTM student of Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", arXiv 1903.12136): word embeddings, one or more bidirectional LSTM layers, the final
states of both directions (the paper's sentence vector; max-pooling over time as an option), an MLP head.

Sentence pairs (``siamese``, the paper's model for MNLI/QQP): the two sentences are encoded separately by
the same BiLSTM into ``h1`` and ``h2``, and the head reads ``[h1, h2, h1 * h2, |h1 - h2|]``. The datamodule
gives a pair as one sequence (``[CLS] a [SEP] b [SEP]``) with ``token_type_ids`` 0 for the first segment
and 1 for the second; each example is split by its ``token_type_ids`` (the special tokens stay with their
segment), and each segment is left-aligned on its own, so the features do not depend on padding either.

Each layer runs a forward and a backward ``nn.LSTM`` over the concatenated states of the layer below.
The batch is left-aligned first (:func:`~metakd.students.common.left_align`) and the backward direction
reads each sequence reversed within its own length, so padding never enters a real token's state:
the output does not depend on how much (or on which side) the batch is padded. Everything is plain
PyTorch that ONNX exports with dynamic batch and sequence axes (``LSTM``, ``Gather``, ``ScatterElements``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metakd.backbones import DEFAULT_BACKBONE
from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentOutput
from metakd.students.common import (
    EmbeddingInit,
    EmbeddingStudent,
    gather_time,
    left_align,
    masked_max,
    mlp_head,
    reverse_within_length,
    valid_positions,
)


@STUDENTS.register("bilstm")
class BiLSTMStudent(EmbeddingStudent):
    """Word embeddings -> ``num_layers`` bidirectional LSTM layers of ``hidden_size`` units per
    direction -> ``pooling`` (``final``, the default and the paper's: the forward direction's last state
    and the backward direction's first; ``max``: max over time of the last layer's states) -> ``h``
    (width ``2 hidden``) -> ``Linear(in, mlp_size) -> ReLU -> Linear(mlp_size, num_labels)``, where ``in``
    is ``2 hidden``, or ``8 hidden`` with ``siamese`` (``[h1, h2, h1 * h2, |h1 - h2|]`` of a pair's two
    segments; a segment without tokens has ``h = 0``).

    Embeddings: see :mod:`metakd.students.common` (``embedding_init``: ``backbone`` = ``backbone``'s
    WordPiece embeddings, ``random``; ``embedding_dim``; ``freeze_embeddings``).
    Provides ``pooled`` (what the head reads).
    """

    provides = frozenset({"pooled"})

    def __init__(
        self,
        num_labels: int,
        vocab_size: int,
        tokenizer_name: str = DEFAULT_BACKBONE,
        pad_token_id: int = 0,
        embedding_init: EmbeddingInit = "backbone",
        backbone: str = DEFAULT_BACKBONE,
        embedding_dim: int | None = None,
        freeze_embeddings: bool = False,
        hidden_size: int = 150,
        num_layers: int = 1,
        pooling: Literal["max", "final"] = "final",
        mlp_size: int = 200,
        dropout: float = 0.1,
        siamese: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise StudentConfigError(
                f"bilstm: hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}"
            )
        if pooling not in ("max", "final"):
            raise StudentConfigError(f"bilstm: pooling must be 'max' or 'final', got {pooling!r}")
        width = self.build_embeddings(
            vocab_size, pad_token_id, tokenizer_name, embedding_init, backbone, embedding_dim,
            freeze_embeddings,
        )  # fmt: skip
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(num_layers):
            in_size = width if layer == 0 else 2 * hidden_size
            self.forward_layers.append(nn.LSTM(in_size, hidden_size, batch_first=True))
            self.backward_layers.append(nn.LSTM(in_size, hidden_size, batch_first=True))
        self.pooling = pooling
        self.siamese = bool(siamese)
        self.dropout = nn.Dropout(dropout)
        self._pooled_size = (8 if self.siamese else 2) * hidden_size
        self.head = mlp_head(self._pooled_size, mlp_size, num_labels, dropout)

    @property
    def hidden_size(self) -> int:
        return self._pooled_size

    def encode(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """The sentence vector ``h`` (B, 2 hidden) of the tokens where ``mask`` (B, T) is set (0 for an
        example without any)."""
        order, lengths = left_align(mask)
        length = input_ids.shape[1]
        valid = valid_positions(lengths, length)
        backward_order = reverse_within_length(lengths, length)
        states = self.embeddings(input_ids.gather(1, order)) * valid.unsqueeze(-1)
        forward_out = backward_out = states
        for forward_lstm, backward_lstm in zip(self.forward_layers, self.backward_layers):
            states = self.dropout(states)
            # zero initial states shaped from the input, so ONNX keeps the batch size dynamic
            initial = states.new_zeros(1, states.shape[0], forward_lstm.hidden_size)
            forward_out, _ = forward_lstm(states, (initial, initial))
            backward_out, _ = backward_lstm(gather_time(states, backward_order), (initial, initial))
            backward_out = gather_time(backward_out, backward_order)  # back to reading order
            states = torch.cat([forward_out, backward_out], dim=-1)
        if self.pooling == "max":
            pooled = masked_max(states, valid)
        else:
            last = (lengths - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, forward_out.shape[-1])
            pooled = torch.cat([forward_out.gather(1, last).squeeze(1), backward_out[:, 0]], dim=-1)
        return pooled * (lengths > 0).unsqueeze(-1).to(pooled.dtype)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        mask = attention_mask.bool()
        if self.siamese:
            second = token_type_ids.bool() if token_type_ids is not None else torch.zeros_like(mask)
            h1 = self.encode(input_ids, mask & ~second)
            h2 = self.encode(input_ids, mask & second)
            pooled = torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)
        else:
            pooled = self.encode(input_ids, mask)
        logits = self.head(self.dropout(pooled))
        return StudentOutput(logits=logits, pooled=pooled if "pooled" in need else None)
