"""Which training examples a tensor of stored per-example scores (t_i) covers.

t_i are stored by ``example_ids`` over the whole pooled training split (``num_pooled_train`` rows), NaN
for the examples the scoring pass did not load. ``target_domain`` and ``train_fraction`` load a subset
of the pooled split without changing ``split_fingerprint``, so a matching fingerprint says only that the
rows mean the same examples: stored t_i are reusable for a datamodule only when they are finite on every
example it trains on (:func:`missing_scores`), else they are computed again (from the prototypes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor


def loaded_example_ids(dataloader: Iterable[Mapping[str, Tensor]]) -> list[int] | None:
    """The ``example_ids`` a loader yields, in its order: read from the dataset's ``example_ids`` column
    when it has one, else from one pass over the loader's batches; None for a one-shot iterator (it
    cannot be read twice)."""
    dataset = getattr(dataloader, "dataset", None)
    if "example_ids" in (getattr(dataset, "column_names", None) or ()) and hasattr(dataset, "with_format"):
        return [int(i) for i in dataset.with_format(None)["example_ids"]]
    if isinstance(dataloader, Iterator):
        return None
    return [int(i) for batch in dataloader for i in batch["example_ids"].reshape(-1).tolist()]


def trained_positions(datamodule: Any) -> Tensor:
    """Positions in the pooled training split of the examples the datamodule trains on (its
    ``train_eval_dataloader``): an augmented example counts as the example it came from
    (``source_example_ids``); one from none (an unlabelled review, source -1) is left out."""
    with torch.random.fork_rng(devices=[]):  # a loader's iterator draws its seed from the global RNG:
        loaded = loaded_example_ids(datamodule.train_eval_dataloader())  # this check must not move it
    ids = torch.tensor(loaded or [], dtype=torch.long)
    source = getattr(datamodule, "source_example_ids", None)
    if source is not None and ids.numel():
        ids = source.cpu()[ids]
    return torch.unique(ids[ids >= 0])


def missing_scores(scores: Tensor, datamodule: Any) -> tuple[int, int]:
    """``(missing, total)``: how many of the datamodule's trained examples (:func:`trained_positions`)
    ``scores`` (by pooled position) have no finite value for, of how many."""
    positions = trained_positions(datamodule)
    inside = positions < scores.shape[0]
    finite = torch.zeros_like(positions, dtype=torch.bool)
    finite[inside] = torch.isfinite(scores.detach().cpu()[positions[inside]])
    return int((~finite).sum()), int(positions.numel())


def coverage_note(missing: int, total: int) -> str:
    """Why stored scores of the same pooled split cannot be reused (for messages)."""
    return (
        f"its stored scores cover {total - missing} of the {total} training examples of this data (another "
        "train_fraction or target_domain than it was trained with)"
    )
