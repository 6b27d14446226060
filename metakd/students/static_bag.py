"""The static-bag student: model2vec's classifier shape (Tulkens and van Dongen 2024,
https://github.com/MinishLab/model2vec, ``model2vec.train.StaticModelForClassification``) as a metakd
student, so that it can be distilled from a teacher and trained on transfer sets.

WordPiece ids -> a trainable embedding table (by default model2vec's static embeddings distilled from
the teacher's backbone: :mod:`metakd.students.distilled_embeddings`) -> the mean of the token vectors
over the real (non-pad) tokens -> L2 normalisation -> an MLP head -> logits. Its cost is one gather, one
mean and the head, so it is the fastest of the tiny students.

What it mirrors of model2vec 0.10's ``StaticModelForClassification`` (``train/base.py``,
``train/classifier.py``): the head ``Linear(E, hidden_dim) -> ReLU -> [Linear(hidden_dim, hidden_dim) ->
ReLU] x (n_layers - 1) -> Linear(hidden_dim, num_labels)`` with its defaults ``hidden_dim`` 512 and
``n_layers`` 1 (``n_layers`` 0: one ``Linear(E, num_labels)``), its initialisation (Kaiming-uniform for
ReLU on the hidden layers, Xavier-uniform on the last, zero biases), no dropout by default, the
unweighted mean of the token vectors (a distilled table without separate token weights, as
``embedding_init: model2vec`` gives: the SIF weights are baked into its rows) and ``normalize``: the mean
is L2-normalised before the head. Differences: the ids are the data's WordPiece ids, so ``[CLS]`` and
``[SEP]`` are in the mean (model2vec encodes without special tokens; they have no distilled row, so they
start at zero and, with ``normalize``, do not change the first forward), ``[UNK]`` is kept (model2vec
drops it), the texts are truncated at the data's ``max_length``, and ``dropout`` (default 0) is an
option model2vec has not. Training (lr, epochs, early stopping, loss) is the Student's, not model2vec's
``fit``.

Padding-proof without any re-ordering: the mean reads only the positions of ``attention_mask``, so
padding (right or left, whatever ids it holds) never changes the output.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.backbones import DEFAULT_BACKBONE
from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentOutput
from metakd.students.common import EmbeddingInit, EmbeddingStudent, masked_mean


def model2vec_head(
    in_size: int, hidden_dim: int, n_layers: int, num_labels: int, dropout: float
) -> nn.Sequential:
    """model2vec's classifier head (``StaticModelForClassification.construct_head``), with its
    initialisation; ``dropout`` > 0 adds a Dropout before every Linear (model2vec has none)."""
    sizes = [in_size] + [hidden_dim] * n_layers + [num_labels]
    modules: list[nn.Module] = []
    linears = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        linear = nn.Linear(fan_in, fan_out)
        linears.append(linear)
        modules.append(linear)
        if index < n_layers:
            modules.append(nn.ReLU())
    *hidden, last = linears
    for linear in hidden:
        nn.init.kaiming_uniform_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
    nn.init.xavier_uniform_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*modules)


@STUDENTS.register("static_bag")
class StaticBagStudent(EmbeddingStudent):
    """Word embeddings -> masked mean over the real tokens -> L2 normalisation (``normalize``) -> model2vec's
    MLP head (``hidden_dim`` 512, ``n_layers`` 1; see the module docstring).

    Embeddings: see :mod:`metakd.students.common`. ``embedding_init``: ``model2vec`` (the default: the
    static embeddings model2vec distils from ``backbone``, at their own width, the backbone's, unless
    ``embedding_dim`` asks for model2vec's PCA to that width), ``backbone`` (its WordPiece embeddings;
    ``embedding_dim`` below its width keeps the leading principal components) or ``random``;
    ``freeze_embeddings``. Provides ``pooled`` (the vector the head reads).
    """

    provides = frozenset({"pooled"})

    def __init__(
        self,
        num_labels: int,
        vocab_size: int,
        tokenizer_name: str = DEFAULT_BACKBONE,
        pad_token_id: int = 0,
        embedding_init: EmbeddingInit = "model2vec",
        backbone: str = DEFAULT_BACKBONE,
        embedding_dim: int | None = None,
        freeze_embeddings: bool = False,
        hidden_dim: int = 512,
        n_layers: int = 1,
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_layers < 0 or (n_layers > 0 and hidden_dim < 1) or not 0 <= dropout < 1:
            raise StudentConfigError(
                f"static_bag: n_layers must be >= 0, hidden_dim >= 1 and 0 <= dropout < 1, got "
                f"n_layers={n_layers}, hidden_dim={hidden_dim}, dropout={dropout}"
            )
        width = self.build_embeddings(
            vocab_size, pad_token_id, tokenizer_name, embedding_init, backbone, embedding_dim,
            freeze_embeddings,
        )  # fmt: skip
        self.normalize = bool(normalize)
        self.head = model2vec_head(width, hidden_dim, n_layers, num_labels, dropout)

    @property
    def hidden_size(self) -> int:
        return self.embeddings.embedding_dim

    def pool(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The (B, E) mean of the token vectors at the ``attention_mask`` positions, L2-normalised with
        ``normalize`` (zeros for an example without tokens)."""
        pooled = masked_mean(self.embeddings(input_ids), attention_mask.bool())
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        pooled = self.pool(input_ids, attention_mask)
        return StudentOutput(logits=self.head(pooled), pooled=pooled if "pooled" in need else None)
