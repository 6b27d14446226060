"""The pQRNN student (Kaliamoorthi, Siddhant, Li, Johnson 2021, "Distilling Large Language Models into
Tiny and Effective Students using pQRNN", arXiv 2101.08890): an embedding-free projection, a dense
bottleneck, bidirectional QRNN layers with f-pooling (Bradbury et al. 2017, "Quasi-Recurrent Neural
Networks", arXiv 1611.01576), pooling over time and an MLP head.

**Projection.** Token ``t`` (a WordPiece id of the data's tokenizer) maps to a fixed ternary vector
``p(t)`` in {-1, 0, 1}^P: ``p_k(t) = ((a_k * t + b_k) mod M) mod 3 - 1`` with the Mersenne prime
``M = 2^31 - 1`` and per-feature constants ``a_k in [1, M)``, ``b_k in [0, M)`` drawn from BLAKE2b of
``"metakd-pqrnn:<hash_seed>:<k>"`` (a universal hash family: the features of two different tokens are
pairwise independent). The hash is computed inside the model from the token id (int64 arithmetic, which
ONNX exports), so there is no embedding table: parameters and file size do not depend on the vocabulary.
The id is a fixed function of the token's string under the tokenizer's vocabulary; hashing the id rather
than the string avoids a vocabulary-sized table of per-token seeds at inference. Nothing uses Python's
``hash()``, so the projection is the same in every process.

**QRNN with f-pooling.** Per direction, a convolution of width ``kernel_width`` over time (causal for the
forward direction, anti-causal for the backward one) gives ``z_t = tanh(W_z * x)`` and ``f_t =
sigmoid(W_f * x)``, then ``h_t = f_t h_{t-1} + (1 - f_t) z_t`` (forward) or ``h_t = f_t h_{t+1} +
(1 - f_t) z_t`` (backward), from ``h = 0``. At padded positions ``f = 1`` and ``z = 0``, so padding leaves
the state untouched and the output does not depend on padding (right or left). The recurrence is a
TorchScript function (:func:`f_pooling`) over time-major tensors: fast in PyTorch and exported to ONNX as
a ``Loop`` with dynamic sequence length.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentModel, StudentOutput
from metakd.students.common import masked_max, masked_mean, mlp_head

HASH_PRIME = 2**31 - 1
"""The modulus ``M`` of the projection's hash (products of two values below it fit in int64)."""


def hash_constants(projection_size: int, hash_seed: int) -> tuple[Tensor, Tensor]:
    """``(a, b)``, each (P,) int64: the projection's per-feature hash constants, from BLAKE2b (the same in
    every process and on every machine)."""
    a, b = [], []
    for k in range(projection_size):
        digest = hashlib.blake2b(f"metakd-pqrnn:{hash_seed}:{k}".encode(), digest_size=16).digest()
        a.append(1 + int.from_bytes(digest[:8], "little") % (HASH_PRIME - 1))
        b.append(int.from_bytes(digest[8:], "little") % HASH_PRIME)
    return torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)


def ternary_projection(input_ids: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(B, T) token ids -> (B, T, P) float ternary features ``((a_k t + b_k) mod M) mod 3 - 1``."""
    hashed = torch.remainder(input_ids.long().unsqueeze(-1) * a + b, HASH_PRIME)
    return (torch.remainder(hashed, 3) - 1).float()


@torch.jit.script
def f_pooling(forget: Tensor, candidate: Tensor) -> Tensor:
    """QRNN f-pooling over time-major (T, B, H) gates: ``h_t = f_t h_{t-1} + (1 - f_t) z_t`` from 0,
    given ``forget`` = f and ``candidate`` = (1 - f) z. Returns (T, B, H)."""
    state = torch.zeros_like(candidate[0])
    states: list[Tensor] = []
    for t in range(forget.size(0)):
        state = forget[t] * state + candidate[t]
        states.append(state)
    return torch.stack(states, 0)


class BiQRNNLayer(nn.Module):
    """One bidirectional QRNN layer with f-pooling: (B, T, D) -> (B, T, 2 H) (forward, backward)."""

    def __init__(self, in_size: int, hidden_size: int, kernel_width: int) -> None:
        super().__init__()
        self.kernel_width = kernel_width
        self.hidden_size = hidden_size
        self.forward_gates = nn.Conv1d(in_size, 2 * hidden_size, kernel_width)
        self.backward_gates = nn.Conv1d(in_size, 2 * hidden_size, kernel_width)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x`` (B, T, D) with zeros at padded positions, ``valid`` (B, T) bool."""
        channels = x.transpose(1, 2)
        pad = self.kernel_width - 1
        forward_gates = self.forward_gates(F.pad(channels, (pad, 0)))  # causal
        backward_gates = self.backward_gates(F.pad(channels, (0, pad)))  # anti-causal
        gates = torch.cat([forward_gates, backward_gates], dim=1).permute(2, 0, 1)  # (T, B, 4H)
        h = self.hidden_size
        z = torch.tanh(torch.cat([gates[..., :h], gates[..., 2 * h : 3 * h]], dim=-1))
        f = torch.sigmoid(torch.cat([gates[..., h : 2 * h], gates[..., 3 * h :]], dim=-1))
        keep = valid.transpose(0, 1).unsqueeze(-1)  # (T, B, 1)
        forget = torch.where(keep, f, torch.ones_like(f))
        candidate = torch.where(keep, (1.0 - f) * z, torch.zeros_like(z))
        # Both directions in one scan: the backward half runs on time-reversed gates.
        forget = torch.cat([forget[..., :h], forget[..., h:].flip(0)], dim=-1)
        candidate = torch.cat([candidate[..., :h], candidate[..., h:].flip(0)], dim=-1)
        states = f_pooling(forget, candidate)
        states = torch.cat([states[..., :h], states[..., h:].flip(0)], dim=-1)
        return states.transpose(0, 1) * valid.unsqueeze(-1)  # padding stays zero for the next layer


@STUDENTS.register("pqrnn")
class PQRNNStudent(StudentModel):
    """Ternary hash projection (``projection_size`` features, no embedding table) -> ``Linear(P,
    bottleneck_size) -> ReLU`` -> ``num_layers`` bidirectional QRNN layers (``hidden_size`` per
    direction, convolution width ``kernel_width``, f-pooling) -> ``pooling`` over time (``mean`` or
    ``max``) -> ``Linear(2 hidden, mlp_size) -> ReLU -> Linear(mlp_size, num_labels)``.

    Provides ``pooled`` (the pooled states, width ``2 * hidden_size``). See the module docstring for
    the projection and the recurrence.
    """

    provides = frozenset({"pooled"})

    def __init__(
        self,
        num_labels: int,
        projection_size: int = 128,
        bottleneck_size: int = 128,
        hidden_size: int = 96,
        num_layers: int = 2,
        kernel_width: int = 2,
        pooling: Literal["mean", "max"] = "mean",
        mlp_size: int = 128,
        dropout: float = 0.1,
        hash_seed: int = 0,
    ) -> None:
        super().__init__()
        sizes = {"projection_size": projection_size, "bottleneck_size": bottleneck_size,
                 "hidden_size": hidden_size, "num_layers": num_layers,
                 "kernel_width": kernel_width}  # fmt: skip
        bad = {name: value for name, value in sizes.items() if value < 1}
        if bad:
            raise StudentConfigError(f"pqrnn: {bad} must be >= 1")
        if pooling not in ("mean", "max"):
            raise StudentConfigError(f"pqrnn: pooling must be 'mean' or 'max', got {pooling!r}")
        a, b = hash_constants(projection_size, hash_seed)
        # Derived from hash_seed, so not saved: a state dict holds only trained weights.
        self.register_buffer("hash_a", a, persistent=False)
        self.register_buffer("hash_b", b, persistent=False)
        self.bottleneck = nn.Sequential(nn.Linear(projection_size, bottleneck_size), nn.ReLU())
        self.layers = nn.ModuleList(
            BiQRNNLayer(bottleneck_size if i == 0 else 2 * hidden_size, hidden_size, kernel_width)
            for i in range(num_layers)
        )
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(2 * hidden_size, mlp_size, num_labels, dropout)
        self._pooled_size = 2 * hidden_size

    @property
    def hidden_size(self) -> int:
        return self._pooled_size

    def project(self, input_ids: Tensor) -> Tensor:
        """The ternary projection (B, T, P) of token ids."""
        return ternary_projection(input_ids, self.hash_a, self.hash_b)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        valid = attention_mask.bool()
        states = self.bottleneck(self.project(input_ids)) * valid.unsqueeze(-1)
        for layer in self.layers:
            states = layer(self.dropout(states), valid)
        pool = masked_mean if self.pooling == "mean" else masked_max
        pooled = pool(states, valid)
        logits = self.head(self.dropout(pooled))
        return StudentOutput(logits=logits, pooled=pooled if "pooled" in need else None)
