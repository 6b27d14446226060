"""Parts the small non-transformer students share (no architecture is registered here): word embeddings
initialised from a backbone's WordPiece embeddings, and padding-proof token bookkeeping.

- :class:`EmbeddingStudent`: a :class:`~metakd.students.base.StudentModel` with a word-embedding table
  that starts from a backbone's input embeddings (``embedding_init: backbone``, the default: MiniLM-L6's
  30522 x 384 WordPiece embeddings for the ``minilm-l6`` tokenizer; ``embedding_dim`` below the
  backbone's width keeps the leading principal components), from static embeddings that model2vec
  distils from the backbone (``embedding_init: model2vec``, cached on disk:
  :mod:`metakd.students.distilled_embeddings`) or from random values (``embedding_init: random``). A
  rebuilt model (export, reload) takes its weights from the state dict and never loads the backbone
  again.
- :func:`left_align`, :func:`reverse_within_length`, :func:`masked_max`, :func:`masked_mean`: gathers
  that put every sequence's real tokens first, so that a recurrent or convolutional student gives the
  same output whatever padding (right or left) the batch carries. All are ONNX-exportable (cumsum,
  scatter, gather) with dynamic batch and sequence axes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.students.base import StudentModel

EmbeddingInit = Literal["backbone", "model2vec", "random"]
RANDOM_EMBEDDING_DIM = 128
"""Width of randomly initialised embeddings when ``embedding_dim`` is not given."""


def backbone_word_embeddings(backbone: str, tokenizer_name: str, vocab_size: int) -> Tensor:
    """The (V, H) input word embeddings of ``backbone``, checked to belong to the data's tokenizer."""
    from metakd.backbones import check_same_tokenizer, load_encoder

    check_same_tokenizer(tokenizer_name, "data", backbone, "embedding backbone")
    weight = load_encoder(backbone).get_input_embeddings().weight.detach().float().clone()
    if weight.shape[0] < vocab_size:
        raise StudentConfigError(
            f"the embedding backbone {backbone!r} has {weight.shape[0]} word embeddings, fewer than the "
            f"tokenizer's {vocab_size} tokens"
        )
    return weight[:vocab_size]


def principal_components(weight: Tensor, dim: int) -> Tensor:
    """``weight`` (V, H) centred and projected on its ``dim`` leading principal directions (V, dim):
    a smaller table that keeps as much of the embeddings' variance as ``dim`` directions can. The sign
    of each direction is fixed (largest loading positive), so the result is deterministic."""
    centred = weight.double() - weight.double().mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues of the (H, H) scatter
    directions = vectors[:, -dim:].flip(1).T  # (dim, H), leading direction first
    signs = torch.sign(directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)))
    return (centred @ (directions * signs).T).float()


def word_embeddings(
    vocab_size: int,
    pad_token_id: int,
    tokenizer_name: str,
    init: EmbeddingInit,
    backbone: str,
    dim: int | None,
) -> nn.Embedding:
    """An embedding table: the backbone's WordPiece embeddings (``dim`` None: its full width; smaller:
    its leading principal components), the backbone's static embeddings distilled by model2vec (``dim``:
    model2vec's PCA width, None: the backbone's width without PCA;
    :mod:`metakd.students.distilled_embeddings`) or random N(0, 0.1^2) values of width ``dim`` (default
    128)."""
    if init == "random":
        dim = RANDOM_EMBEDDING_DIM if dim is None else dim
        if dim < 1:
            raise StudentConfigError(f"embedding_dim must be >= 1, got {dim}")
        table = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        nn.init.normal_(table.weight, std=0.1)
        with torch.no_grad():
            table.weight[pad_token_id].zero_()
        return table
    if init == "model2vec":
        from metakd.students.distilled_embeddings import model2vec_word_embeddings

        if dim is not None and dim < 1:
            raise StudentConfigError(f"embedding_dim must be >= 1, got {dim}")
        weight = model2vec_word_embeddings(backbone, tokenizer_name, vocab_size, dim)
        return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=pad_token_id)
    if init != "backbone":
        raise StudentConfigError(f"embedding_init must be 'backbone', 'model2vec' or 'random', got {init!r}")
    weight = backbone_word_embeddings(backbone, tokenizer_name, vocab_size)
    if dim is not None and dim != weight.shape[1]:
        if not 1 <= dim < weight.shape[1]:
            raise StudentConfigError(
                f"embedding_dim={dim}: with embedding_init 'backbone' it must be at most the backbone "
                f"{backbone!r}'s width {weight.shape[1]} (fewer keeps its leading principal components)"
            )
        weight = principal_components(weight, dim)
    return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=pad_token_id)


class EmbeddingStudent(StudentModel):
    """A student over a word-embedding table (see the module docstring): builds ``self.embeddings`` and
    rebuilds without the backbone."""

    def build_embeddings(
        self,
        vocab_size: int,
        pad_token_id: int,
        tokenizer_name: str,
        embedding_init: EmbeddingInit,
        backbone: str,
        embedding_dim: int | None,
        freeze_embeddings: bool,
    ) -> int:
        """Create ``self.embeddings``; returns its width."""
        from metakd.text_features import featurizer_for

        if featurizer_for(tokenizer_name) is not None:
            raise StudentConfigError(
                f"{type(self).__name__} reads a vocabulary's token ids, but the data's tokenizer "
                f"{tokenizer_name!r} is a pQRNN featurizer (hashed word features: only pqrnn reads them)"
            )
        self.embeddings = word_embeddings(
            vocab_size, pad_token_id, tokenizer_name, embedding_init, backbone, embedding_dim
        )
        self.embeddings.weight.requires_grad_(not freeze_embeddings)
        return self.embeddings.embedding_dim

    def payload(self) -> dict[str, Any]:
        # The resolved width lets rebuild() make a random table of the right shape without the backbone.
        return {**super().payload(), "embedding_dim": self.embeddings.embedding_dim}

    @classmethod
    def rebuild(cls, payload: dict[str, Any]) -> StudentModel:
        init_args = dict(payload["init_args"])
        model = cls(**{**init_args, "embedding_init": "random", "embedding_dim": payload["embedding_dim"]})
        model.init_args = init_args
        return model


# -------------------------------------------------------------------------------------------------
# padding-proof token bookkeeping


def left_align(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(order, lengths)``: gathering positions ``order`` (B, T) puts each sequence's real tokens
    first, in their order, then its padding; ``lengths`` (B,) counts the real tokens. For right-padded
    batches ``order`` is the identity."""
    mask = attention_mask.long()
    lengths = mask.sum(dim=1)
    real_slot = mask.cumsum(dim=1) - 1
    pad_slot = lengths.unsqueeze(1) + (1 - mask).cumsum(dim=1) - 1
    slot = torch.where(mask.bool(), real_slot, pad_slot)  # where each position goes
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).expand_as(mask)
    order = torch.zeros_like(slot).scatter(1, slot, positions)  # order[slot[t]] = t
    return order, lengths


def valid_positions(lengths: Tensor, length: int | Tensor) -> Tensor:
    """(B, T) bool: position t < lengths[b] (real tokens of a left-aligned batch)."""
    positions = torch.arange(length, device=lengths.device).unsqueeze(0)
    return positions < lengths.unsqueeze(1)


def reverse_within_length(lengths: Tensor, length: int | Tensor) -> Tensor:
    """(B, T) positions that reverse each left-aligned sequence's first ``lengths[b]`` tokens and keep
    its padding in place (an involution: applying it twice is the identity)."""
    positions = torch.arange(length, device=lengths.device).unsqueeze(0)
    reversed_positions = lengths.unsqueeze(1) - 1 - positions
    return torch.where(positions < lengths.unsqueeze(1), reversed_positions, positions)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for x (B, T, ...) and index (B, T)."""
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def masked_max(x: Tensor, valid: Tensor) -> Tensor:
    """Max over time of x (B, T, H) at the ``valid`` (B, T) positions."""
    return x.masked_fill(~valid.unsqueeze(-1), torch.finfo(x.dtype).min).amax(dim=1)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean over time of x (B, T, H) at the ``valid`` (B, T) positions."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def mlp_head(in_size: int, hidden: int, num_labels: int, dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout -> Linear`` (``hidden`` 0: dropout then one Linear)."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_size, num_labels))
    return nn.Sequential(
        nn.Linear(in_size, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels)
    )
