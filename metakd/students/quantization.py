"""Quantisation-aware training (QAT) that matches ONNX Runtime's dynamic int8 quantisation
(``metakd export --int8``: ``onnxruntime.quantization.quantize_dynamic``, int8 weights), so that a student
trained with it loses nothing it did not see in training when it is exported as int8.

What ONNX Runtime does to a ``MatMul`` or ``Conv`` whose weight is an initializer: the weight becomes
int8, symmetric per tensor, ``q = clamp(round(w / s), -127, 127)`` with ``s = max|w| / 127``; the input is
quantised at run time to uint8 per tensor, ``s_x = (max(x, 0) - min(x, 0)) / 255``, zero point
``z = round(-min(x, 0) / s_x)``, ``q_x = clamp(round(x / s_x) + z, 0, 255)``. A ``Gemm`` (a ``Linear`` on
a 2-d input) becomes a ``MatMul`` with its weight transposed and is quantised the same way. The functions
below compute the same rounded values in float ("fake quantisation") with a straight-through gradient
(the rounding passes the gradient unchanged), as in Jacob et al. 2018 and seq_flow_lite's quantised
layers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _straight_through(x: Tensor, rounded: Tensor) -> Tensor:
    """``rounded`` forward, the identity's gradient backward."""
    return x + (rounded - x).detach()


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """Symmetric per-tensor int8: ``clamp(round(w / s), -127, 127) * s``, ``s = max|w| / 127``."""
    scale = weight.detach().abs().amax().clamp_min(1e-12) / 127.0
    return _straight_through(weight, torch.clamp(torch.round(weight / scale), -127, 127) * scale)


def fake_quantize_activation(x: Tensor) -> Tensor:
    """Per-tensor uint8 with the tensor's own range (0 included), as ``DynamicQuantizeLinear``."""
    low = x.detach().amin().clamp_max(0.0)
    high = x.detach().amax().clamp_min(0.0)
    scale = ((high - low) / 255.0).clamp_min(1e-12)
    zero = torch.round(-low / scale)
    quantized = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    return _straight_through(x, quantized)
