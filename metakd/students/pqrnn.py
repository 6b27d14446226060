"""The pQRNN student (Kaliamoorthi, Siddhant, Li, Johnson 2021, "Distilling Large Language Models into
Tiny and Effective Students using pQRNN", arXiv 2101.08890): an embedding-free projection of hashed
strings, a dense bottleneck, bidirectional QRNN layers with f-pooling (Bradbury et al. 2017,
"Quasi-Recurrent Neural Networks", arXiv 1611.01576), pooling over time and an MLP head, trained
quantisation-aware and exported as int8.

**Input.** With the data's tokenizer set to the pQRNN featurizer (``backbone: pqrnn-features`` of the
datamodule, :mod:`metakd.text_features`), ``input_ids`` hold ``features_per_word`` slots per word: the
stable hash ids of the word string and of its character n-grams (0: no feature). This is the published
input: strings, no vocabulary. With a vocabulary tokenizer (e.g. ``minilm-l6``, one slot per WordPiece id)
each id is the single feature of its position: the earlier form of this student, kept for comparison.

**Projection.** Feature id ``h`` maps to a fixed ternary vector ``p(h)`` in {-1, 0, 1}^P:
``p_k(h) = ((a_k * h + b_k) mod M) mod 3 - 1`` with the Mersenne prime ``M = 2^31 - 1`` and per-feature
constants ``a_k in [1, M)``, ``b_k in [0, M)`` drawn from BLAKE2b of ``"metakd-pqrnn:<hash_seed>:<k>"`` (a
universal hash family: the features of two different ids are pairwise independent). A word's projection
is ``sum_f p(h_f) / sqrt(n)`` over its ``n`` features: a fixed random projection of its bag of feature
strings, scaled so that its entries keep the variance of one ternary vector. The hash runs inside the
model (int64 arithmetic, which ONNX exports), so there is no embedding table: parameters and file size do
not depend on any vocabulary. Nothing uses Python's ``hash()``: the projection is the same in every
process.

**QRNN with f-pooling.** Per direction, a convolution of width ``kernel_width`` over time (causal for the
forward direction, anti-causal for the backward one) gives ``z_t = tanh(W_z * x)`` and ``f_t =
sigmoid(W_f * x)``, then ``h_t = f_t h_{t-1} + (1 - f_t) z_t`` (forward) or ``h_t = f_t h_{t+1} +
(1 - f_t) z_t`` (backward), from ``h = 0``. At padded positions ``f = 1`` and ``z = 0``, so padding leaves
the state untouched and the output does not depend on padding (right or left). The recurrence is a
TorchScript function (:func:`f_pooling`) over time-major tensors: fast in PyTorch and exported to ONNX as
a ``Loop`` with dynamic sequence length.

**Quantisation-aware training** (``quantization_aware``, on by default): the bottleneck's and the QRNN
convolutions' and the head's weights run through int8 fake quantisation in training and evaluation, and
their inputs through uint8 fake quantisation in training, with the rules of ONNX Runtime's dynamic
quantisation (:mod:`metakd.students.quantization`), which quantises exactly these (``MatMul``, ``Conv``
and the head's ``Gemm``, which it turns into a ``MatMul``). ``metakd export --onnx --int8`` traces a copy
whose weights are already on their int8 grid (:meth:`PQRNNStudent.for_export`), so ``model.int8.onnx``
holds exactly the weights training saw.

Deviations from the paper (docs/METAKD.md): mean (or max) pooling instead of attention pooling, no zoneout,
an MLP head; the features are words and character n-grams hashed by BLAKE2b (the paper's projection
hashes words with MurmurHash; ``pqrnn-words`` is that input); PyTorch evaluation uses the int8 weights with
float activations (the int8 export also quantises activations, at run time).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.students.base import STUDENTS, StudentModel, StudentOutput
from metakd.students.common import masked_max, masked_mean, mlp_head
from metakd.students.quantization import fake_quantize_activation, fake_quantize_weight
from metakd.text_features import HASH_PRIME, featurizer_for


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
    """(...) ids -> (..., P) float ternary features ``((a_k t + b_k) mod M) mod 3 - 1``."""
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


def linear(x: Tensor, layer: nn.Linear, weights: bool, inputs: bool) -> Tensor:
    """``layer(x)``, with its weight / input fake-quantised when ``weights`` / ``inputs``."""
    x = fake_quantize_activation(x) if inputs else x
    return F.linear(x, fake_quantize_weight(layer.weight) if weights else layer.weight, layer.bias)


def conv1d(x: Tensor, layer: nn.Conv1d, quantize: bool) -> Tensor:
    """``layer(x)``, with its weight fake-quantised to int8 when ``quantize``."""
    if not quantize:
        return layer(x)
    return F.conv1d(x, fake_quantize_weight(layer.weight), layer.bias)


class BiQRNNLayer(nn.Module):
    """One bidirectional QRNN layer with f-pooling: (B, T, D) -> (B, T, 2 H) (forward, backward)."""

    def __init__(self, in_size: int, hidden_size: int, kernel_width: int) -> None:
        super().__init__()
        self.kernel_width = kernel_width
        self.hidden_size = hidden_size
        self.forward_gates = nn.Conv1d(in_size, 2 * hidden_size, kernel_width)
        self.backward_gates = nn.Conv1d(in_size, 2 * hidden_size, kernel_width)

    def forward(self, x: Tensor, valid: Tensor, weights: bool = False, inputs: bool = False) -> Tensor:
        """``x`` (B, T, D) with zeros at padded positions, ``valid`` (B, T) bool; ``weights`` / ``inputs``:
        fake-quantise the convolutions' weights / input (quantisation-aware training)."""
        channels = fake_quantize_activation(x).transpose(1, 2) if inputs else x.transpose(1, 2)
        pad = self.kernel_width - 1
        forward_gates = conv1d(F.pad(channels, (pad, 0)), self.forward_gates, weights)  # causal
        backward_gates = conv1d(F.pad(channels, (0, pad)), self.backward_gates, weights)  # anti-causal
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
    """Ternary hash projection of each word's features (``projection_size`` features, no embedding table)
    -> ``Linear(P, bottleneck_size) -> ReLU`` -> ``num_layers`` bidirectional QRNN layers (``hidden_size``
    per direction, convolution width ``kernel_width``, f-pooling) -> ``pooling`` over time (``mean`` or
    ``max``) -> ``Linear(2 hidden, mlp_size) -> ReLU -> Linear(mlp_size, num_labels)``.

    ``features_per_word``: id slots per word (None: the data's featurizer's, 1 for a vocabulary tokenizer;
    filled from ``tokenizer_name``). ``quantization_aware``: int8 fake quantisation (module docstring).
    Provides ``pooled`` (the pooled states, width ``2 * hidden_size``).
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
        quantization_aware: bool = True,
        features_per_word: int | None = None,
        tokenizer_name: str | None = None,
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
        self.features_per_word = word_slots(features_per_word, tokenizer_name)
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
        self.quantization_aware = bool(quantization_aware)
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(2 * hidden_size, mlp_size, num_labels, dropout)
        self._pooled_size = 2 * hidden_size

    @property
    def hidden_size(self) -> int:
        return self._pooled_size

    def payload(self) -> dict[str, Any]:
        # The resolved slot count lets a rebuild (export, classify) do without the featurizer's name.
        payload = super().payload()
        payload["init_args"] = {**payload["init_args"], "features_per_word": self.features_per_word}
        return payload

    def project(self, input_ids: Tensor) -> Tensor:
        """The projection (B, W, P) of the words of ``input_ids`` (B, W * features_per_word)."""
        if self.features_per_word == 1:  # one id a position (a vocabulary tokenizer): its ternary vector
            return ternary_projection(input_ids, self.hash_a, self.hash_b)
        slots = input_ids.reshape(input_ids.shape[0], -1, self.features_per_word)
        present = (slots != 0).unsqueeze(-1)
        ternary = ternary_projection(slots, self.hash_a, self.hash_b) * present
        count = present.sum(dim=2).clamp_min(1).to(ternary.dtype)
        return ternary.sum(dim=2) / count.sqrt()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        if input_ids.shape[1] % self.features_per_word and not torch.jit.is_tracing():
            raise StudentConfigError(
                f"pqrnn: {input_ids.shape[1]} input ids are not whole words of {self.features_per_word} "
                "slots: the data's tokenizer is not the featurizer this student was built for"
            )
        weights = self.quantization_aware
        inputs = weights and self.training
        valid = attention_mask.reshape(attention_mask.shape[0], -1, self.features_per_word)[..., 0].bool()
        projection = self.project(input_ids)
        states = F.relu(linear(projection, self.bottleneck[0], weights, inputs)) * valid.unsqueeze(-1)
        for layer in self.layers:
            states = layer(self.dropout(states), valid, weights, inputs)
        pool = masked_mean if self.pooling == "mean" else masked_max
        pooled = pool(states, valid)
        logits = self.dropout(pooled)
        for module in self.head:
            quantized = isinstance(module, nn.Linear)
            logits = linear(logits, module, weights, inputs) if quantized else module(logits)
        return StudentOutput(logits=logits, pooled=pooled if "pooled" in need else None)

    def quantized_layers(self) -> list[nn.Module]:
        """The layers whose weights quantisation-aware training rounds (dynamic int8 quantises them)."""
        convolutions = [conv for layer in self.layers for conv in (layer.forward_gates, layer.backward_gates)]
        head = [module for module in self.head if isinstance(module, nn.Linear)]
        return [self.bottleneck[0], *convolutions, *head]

    def for_export(self) -> nn.Module:
        """What ONNX export traces: a copy with every quantised weight on its int8 grid and no fake
        quantisation (so ``quantize_dynamic`` finds plain initializers and reproduces those weights)."""
        if not self.quantization_aware:
            return self
        exported = copy.deepcopy(self).eval()
        exported.quantization_aware = False
        with torch.no_grad():
            for layer in exported.quantized_layers():
                layer.weight.copy_(fake_quantize_weight(layer.weight))
        return exported


def word_slots(features_per_word: int | None, tokenizer_name: str | None) -> int:
    """The id slots per word: the data featurizer's (checked against an explicit value), else 1."""
    featurizer = featurizer_for(tokenizer_name) if tokenizer_name is not None else None
    expected = featurizer.config.features_per_word if featurizer is not None else 1
    if features_per_word is None:
        return expected
    if tokenizer_name is not None and features_per_word != expected:
        what = (
            f"the featurizer {tokenizer_name!r}"
            if featurizer
            else f"the vocabulary tokenizer {tokenizer_name!r}"
        )
        raise StudentConfigError(
            f"pqrnn: features_per_word={features_per_word}, but {what} gives {expected} id(s) per word"
        )
    if features_per_word < 1:
        raise StudentConfigError(f"pqrnn: features_per_word must be >= 1, got {features_per_word}")
    return int(features_per_word)
