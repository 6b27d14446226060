"""The TextCNN student (Kim 2014, "Convolutional Neural Networks for Sentence Classification"; a student
of Tang et al. 2019's comparison): word embeddings, parallel 1-d convolutions of several widths,
max-over-time pooling, an MLP head.

Padding-proof: the batch is left-aligned, padded positions are zeroed, each convolution is "wide"
(zero padding of width - 1 on both sides, so a text shorter than the filter still has windows) and the
max runs only over windows that contain at least one real token. A padded batch therefore gives
exactly the outputs of the same texts unpadded, with right or left padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.backbones import DEFAULT_BACKBONE
from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentOutput
from metakd.students.common import (
    EmbeddingInit,
    EmbeddingStudent,
    left_align,
    masked_max,
    mlp_head,
    valid_positions,
)


@STUDENTS.register("textcnn")
class TextCNNStudent(EmbeddingStudent):
    """Word embeddings -> one ``Conv1d(embedding_dim, filters, w)`` + ReLU per width ``w`` of
    ``widths`` (Kim's 3/4/5 by default) -> max over time -> concatenation -> ``Linear(len(widths) *
    filters, mlp_size) -> ReLU -> Linear(mlp_size, num_labels)`` (``mlp_size`` 0: one Linear).

    Embeddings: see :mod:`metakd.students.common` (``embedding_init``: ``backbone`` = ``backbone``'s
    WordPiece embeddings, ``random``; ``embedding_dim`` below the backbone's width keeps its leading
    principal components; ``freeze_embeddings``). Provides ``pooled`` (the concatenated maxima).
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
        widths: Sequence[int] = (3, 4, 5),
        filters: int = 128,
        mlp_size: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or filters < 1:
            raise StudentConfigError(
                f"textcnn: widths must be a non-empty list of positive widths and filters >= 1, got "
                f"widths={widths}, filters={filters}"
            )
        width = self.build_embeddings(
            vocab_size, pad_token_id, tokenizer_name, embedding_init, backbone, embedding_dim,
            freeze_embeddings,
        )  # fmt: skip
        self.widths = widths
        self.convolutions = nn.ModuleList(nn.Conv1d(width, filters, w, padding=w - 1) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(len(widths) * filters, mlp_size, num_labels, dropout)
        self._pooled_size = len(widths) * filters

    @property
    def hidden_size(self) -> int:
        return self._pooled_size

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        order, lengths = left_align(attention_mask)
        valid = valid_positions(lengths, input_ids.shape[1])
        embedded = self.embeddings(input_ids.gather(1, order)) * valid.unsqueeze(-1)
        channels = self.dropout(embedded).transpose(1, 2)  # (B, E, T)
        pooled = []
        for width, convolution in zip(self.widths, self.convolutions):
            feature_map = F.relu(convolution(channels)).transpose(1, 2)  # (B, T + w - 1, F)
            # window j covers positions j - w + 1 .. j: it holds a real token iff j < length + w - 1
            windows = valid_positions(lengths + width - 1, feature_map.shape[1])
            pooled.append(masked_max(feature_map, windows))
        features = torch.cat(pooled, dim=-1)
        logits = self.head(self.dropout(features))
        return StudentOutput(logits=logits, pooled=features if "pooled" in need else None)
