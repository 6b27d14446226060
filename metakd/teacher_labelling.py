"""Labelling a data set with a frozen teacher once, before training (``FrozenTeacher.prefill_logits``): the
batches whose examples the logits cache lacks go through the teacher, with a progress bar (thousands of
transfer-set examples take minutes on a CPU); with a by-input store (:class:`.teacher_cache.LogitsByInput`),
rows another data set of the same teacher already had are read from it, and only the rest are labelled."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from metakd.teacher_cache import LogitsByInput, TeacherOutputCache

Label = Callable[[Mapping[str, Any]], Tensor]
"""A batch -> the teacher's logits (stored in the cache by the caller's teacher as it runs)."""


@torch.no_grad()
def prefill(
    cache: TeacherOutputCache,
    dataloader: Any,
    device: torch.device,
    label: Label,
    by_input: LogitsByInput | None = None,
    domains: Callable[[Mapping[str, Tensor]], Tensor | None] = lambda batch: None,
) -> None:
    """Fill ``cache`` for every example of ``dataloader``; ``label`` runs the teacher on a batch (and stores
    its logits), ``domains`` gives a batch's domain ids as the teacher reads them (``by_input``'s keys)."""
    bar = None  # a progress bar from the first batch the cache lacks (none when all is cached)
    for index, batch in enumerate(dataloader):
        if bool(cache.filled[batch["example_ids"]].all()):
            continue
        if bar is None:
            from metakd.progress import loop_bar

            bar = loop_bar(len(dataloader), "Teacher labels")
            bar.update(index)
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        if by_input is None:
            label(batch)
        else:
            _label_by_input(cache, batch, label, by_input, domains(batch))
        bar.update(1)
    if bar is not None:
        bar.close()
    if by_input is not None:
        by_input.save()


def _label_by_input(
    cache: TeacherOutputCache, batch: dict[str, Any], label: Label, by_input: LogitsByInput, domain_ids: Any
) -> None:
    """Fill a batch's logits from ``by_input``, running the teacher on the rows it lacks only."""
    keys = by_input.keys(batch, domain_ids)
    known = [row for row, key in enumerate(keys) if by_input.get(key) is not None]
    if known:
        cache.store_logits(
            batch["example_ids"][known], torch.stack([by_input.get(keys[row]) for row in known])
        )
    missing = [row for row in range(len(keys)) if by_input.get(keys[row]) is None]
    if missing:
        rows = torch.tensor(missing, device=batch["input_ids"].device)
        sub = {k: v[rows] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in batch.items()}
        by_input.put([keys[row] for row in missing], label(sub))
