"""The teacher's NaN check (``metakd/meta_teacher/nonfinite.py``)."""

from __future__ import annotations

import pytest
import torch

from metakd.errors import MetakdError
from metakd.meta_teacher.nonfinite import NonFiniteLossError, check_finite


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_names_the_step_and_the_examples(value: float) -> None:
    with pytest.raises(NonFiniteLossError) as raised:
        check_finite("the training loss", torch.tensor(value), torch.tensor([4, 9]), 7, 1, 3)
    message = str(raised.value)
    assert message.startswith(f"the training loss is {value} at global step 7 (epoch 1, batch 3)")
    assert "example_ids of the batch: [4, 9]" in message
    assert isinstance(raised.value, MetakdError) and isinstance(raised.value, FloatingPointError)


def test_a_finite_loss_passes() -> None:
    check_finite("the training loss", torch.tensor(1e30), torch.tensor([0]), 0, 0, 0)
