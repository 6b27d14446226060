"""The NaN check of teacher training: a non-finite loss stops the run with the step and the examples."""

from __future__ import annotations

import torch
from torch import Tensor

from metakd.errors import MetakdError


class NonFiniteLossError(MetakdError, FloatingPointError):
    """A NaN or infinite training loss; the message names the step and the batch's example_ids."""


def check_finite(
    what: str, value: Tensor, example_ids: Tensor, global_step: int, epoch: int, batch_idx: int
) -> None:
    """Raise :class:`NonFiniteLossError` naming the step, epoch, batch and ``example_ids`` unless
    ``value`` is finite."""
    if torch.isfinite(value):
        return
    raise NonFiniteLossError(
        f"{what} is {value.item()} at global step {global_step} (epoch {epoch}, batch "
        f"{batch_idx}); example_ids of the batch: {example_ids.tolist()}. Lower the learning "
        "rate, check these examples, or keep fp32."
    )
