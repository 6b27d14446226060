"""The cache of a frozen teacher's outputs on the training set, by ``example_ids``.

The teacher is frozen and in eval mode, so its outputs are deterministic and caching is exact (up to
float rounding across different padding lengths). Mode ``logits`` keeps a (N, C) table, which can also
be read from and written to a file; ``all`` also keeps, per example, the token features the method
reads, trimmed to the example's length (memory heavy: use it for small target domains).
:class:`metakd.teachers.FrozenTeacher` binds it to the data and the teacher (its key).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metakd.utils import atomic_torch_save

log = logging.getLogger(__name__)

CacheMode = Literal["none", "logits", "all"]

Cached = tuple[Tensor, Tensor | None, tuple | None, tuple | None]
"""``(logits, transferable, hidden_states, attentions)`` of a batch (the fields of ``TeacherOutputs``)."""


class TeacherOutputCache:
    """Teacher outputs on the training set, by ``example_ids`` (module docstring)."""

    def __init__(self, mode: CacheMode, num_examples: int, num_labels: int) -> None:
        self.mode = mode
        self.key: str | None = None
        self.logits = torch.zeros(num_examples, num_labels)
        self.filled = torch.zeros(num_examples, dtype=torch.bool)
        self.features: dict[int, tuple[Tensor | None, tuple, tuple]] = {}

    def lookup(self, example_ids: Tensor, attention_mask: Tensor, need_features: bool) -> Cached | None:
        """Cached outputs for a batch, or None when any example (or needed feature) is missing."""
        ids = example_ids.cpu()
        if self.mode == "none" or not bool(self.filled[ids].all()):
            return None
        device = attention_mask.device
        logits = self.logits[ids].to(device)
        if not need_features:
            return logits, None, None, None
        if self.mode != "all" or any(int(i) not in self.features for i in ids):
            return None
        length = attention_mask.shape[1]
        rows = [self.features[int(i)] for i in ids]
        transferable = None if rows[0][0] is None else torch.stack([r[0] for r in rows]).to(device)
        hidden = tuple(
            None if rows[0][1][k] is None else _pad_stack([r[1][k] for r in rows], length, (0,)).to(device)
            for k in range(len(rows[0][1]))
        )
        attentions = tuple(
            None if rows[0][2][k] is None else _pad_stack([r[2][k] for r in rows], length, (1, 2)).to(device)
            for k in range(len(rows[0][2]))
        )
        return logits, transferable, hidden, attentions

    def store(self, example_ids: Tensor, attention_mask: Tensor, output: Any) -> None:
        """Remember a batch's teacher outputs (a ``TeacherOutputs``)."""
        if self.mode == "none":
            return
        ids = example_ids.cpu()
        self.logits[ids] = output.logits.detach().float().cpu()
        self.filled[ids] = True
        if self.mode != "all" or output.hidden_states is None:
            return
        lengths = attention_mask.sum(dim=1).cpu().tolist()
        for row, (example_id, n) in enumerate(zip(ids.tolist(), lengths)):
            n = int(n)
            transferable = None if output.transferable is None else output.transferable[row].detach().cpu()
            hidden = tuple(None if h is None else h[row, :n].detach().cpu() for h in output.hidden_states)
            attentions = tuple(
                None if a is None else a[row, :, :n, :n].detach().cpu() for a in (output.attentions or ())
            )
            self.features[example_id] = (transferable, hidden, attentions)

    def reset(self, key: str | None) -> None:
        """Empty the cache and bind it to a new key."""
        self.key = key
        self.logits.zero_()
        self.filled.zero_()
        self.features.clear()

    def read_logits(self, path: Path) -> None:
        """Fill the logits from ``path`` when it holds a table of this shape (an unreadable file is ignored
        with a warning)."""
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored["logits"].shape == self.logits.shape:
                self.logits.copy_(stored["logits"])
                self.filled.copy_(stored["filled"])
                log.info("teacher logits read from cache %s", path)
        except Exception as err:
            log.warning("ignoring unreadable teacher-output cache %s (%s)", path, err)

    def write_logits(self, path: Path) -> None:
        """Write the logits table to ``path`` (atomically)."""
        atomic_torch_save({"logits": self.logits, "filled": self.filled}, path)


def _pad_stack(tensors: list[Tensor], length: int, dims: tuple[int, ...]) -> Tensor:
    """Zero-pad each tensor along ``dims`` (sequence axes) to ``length`` and stack."""
    padded = []
    for tensor in tensors:
        pad: list[int] = []
        for dim in reversed(range(tensor.dim())):
            pad.extend([0, length - tensor.shape[dim]] if dim in dims else [0, 0])
        padded.append(F.pad(tensor, pad))
    return torch.stack(padded)
