"""What the search learns from the teacher, on the target domain's training split (formulas in
:mod:`metakd.search.adabert`): the split into weight and architecture rows, the frozen teacher's logits,
AdaBERT's task-useful knowledge probes (a linear probe per teacher layer) and the probe loss that cell k's
head pays to teacher layer ``round(k L / K)``. :func:`prepare_search_data` builds it all once; AdaBERT's
search and RoSearch's candidates both read the resulting :class:`SearchData`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.prototypes import masked_mean_pool

log = logging.getLogger(__name__)


@dataclass
class SearchData:
    """The target domain's training split, tokenised, with the teacher's outputs, cut in two.

    ``probe_probs`` (L, N, C) and ``probe_weights`` (L,) are AdaBERT's probe predictions per teacher
    layer and their weights (None without probes)."""

    dataset: Any
    collate: Any
    teacher_logits: Tensor  # (N, C) in dataset order
    weight_rows: list[int]
    arch_rows: list[int]
    probe_probs: Tensor | None = None
    probe_weights: Tensor | None = None

    def batches(self, rows: list[int], batch_size: int, generator: torch.Generator):
        """Endless shuffled batches of ``rows`` (positions in ``dataset``), with their positions."""
        while True:
            order = torch.randperm(len(rows), generator=generator).tolist()
            for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                chunk = [rows[k] for k in order[start : start + batch_size]]
                yield self.collate([self.dataset[i] for i in chunk]), torch.tensor(chunk)


def split_rows(labels: list[int], arch_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified, seeded ``(weight rows, architecture rows)`` of a training split."""
    from datamodules.splitting import stratified_split

    rest, held_out = stratified_split(labels, arch_fraction, seed, "the search's architecture split")
    return sorted(rest), sorted(held_out)


@torch.no_grad()
def teacher_outputs(teacher: Any, datamodule: Any, need_layers: bool) -> tuple[Tensor, Tensor | None]:
    """The frozen teacher's logits (N, C) and, with ``need_layers``, mean-pooled layers (L, N, H) on the
    training split in order."""
    from metakd.teachers import TeacherRequest

    layers = frozenset(range(1, teacher.num_layers + 1))
    request = TeacherRequest(frozenset({"hidden"}), layers) if need_layers else TeacherRequest()
    logits, pooled = [], []
    for batch in datamodule.train_eval_dataloader():
        out = teacher.forward(batch, request)
        logits.append(out.logits.float())
        if need_layers:
            states = [out.hidden_states[i] for i in sorted(layers)]
            pooled.append(torch.stack([masked_mean_pool(s.float(), batch["attention_mask"]) for s in states]))
    return torch.cat(logits), (torch.cat(pooled, dim=1) if need_layers else None)


def train_probes(
    features: Tensor, labels: Tensor, weight_rows: list[int], arch_rows: list[int], steps: int, seed: int
) -> tuple[Tensor, Tensor]:
    """A linear probe per teacher layer on the weight split: ``(probabilities (L, N, C), accuracy (L,) on
    the architecture split)``."""
    generator = torch.Generator().manual_seed(seed)
    num_layers, _, width = features.shape
    num_labels = int(labels.max()) + 1
    probs, accuracy = [], []
    for layer in range(num_layers):
        x = features[layer]
        probe = nn.Linear(width, num_labels)
        with torch.no_grad():
            probe.weight.copy_(0.01 * torch.randn(probe.weight.shape, generator=generator))
            probe.bias.zero_()
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(probe(x[weight_rows]), labels[weight_rows]).backward()
            optimizer.step()
        with torch.no_grad():
            logits = probe(x)
            probs.append(torch.softmax(logits, -1))
            accuracy.append((logits[arch_rows].argmax(-1) == labels[arch_rows]).float().mean())
    return torch.stack(probs), torch.stack(accuracy)


def layer_for_cell(cell: int, max_cells: int, teacher_layers: int) -> int:
    """Teacher layer (1..L) that cell ``cell`` (1..K) matches: ``round(cell * L / K)``, at least 1."""
    return max(1, min(teacher_layers, round(cell * teacher_layers / max_cells)))


def probe_loss(
    heads: nn.ModuleList, pooled: list[Tensor], probe_probs: Tensor, probe_weights: Tensor, rows: Tensor
) -> Tensor:
    """``sum_k w_{l(k)} * CE(probe_{l(k)}(x), head_k(cell_k(x)))`` over the cells k = 1..K (``pooled``:
    their mean-pooled outputs), ``l(k)`` = :func:`layer_for_cell`, averaged over the batch ``rows``."""
    loss = pooled[0].new_zeros(())
    for k, state in enumerate(pooled, start=1):
        layer = layer_for_cell(k, len(heads), probe_probs.shape[0])
        target = probe_probs[layer - 1, rows]
        student = F.log_softmax(heads[k - 1](state), -1)
        loss = loss - probe_weights[layer - 1] * (target * student).sum(-1).mean()
    return loss


def prepare_search_data(
    datamodule: Any, teacher: Any, arch_fraction: float, probes: bool, probe_steps: int, seed: int
) -> SearchData:
    """Split ``datamodule``'s (set-up) training split, run the frozen ``teacher`` over it and, with
    ``probes``, train the layer probes (their weights: accuracy on the architecture rows, normalised)."""
    dataset = datamodule.train_dataset
    labels = torch.as_tensor([int(dataset[i]["labels"]) for i in range(len(dataset))])
    weight_rows, arch_rows = split_rows(labels.tolist(), arch_fraction, seed)
    log.info(
        "search %s: %d weight rows, %d architecture rows",
        datamodule.target_domain,
        len(weight_rows),
        len(arch_rows),
    )
    teacher_logits, layers = teacher_outputs(teacher, datamodule, probes)
    probe_probs = probe_weights = None
    if probes:
        probe_probs, probe_accuracy = train_probes(layers, labels, weight_rows, arch_rows, probe_steps, seed)
        probe_weights = probe_accuracy / probe_accuracy.sum().clamp_min(1e-8)
    collate = datamodule.train_eval_dataloader().collate_fn
    return SearchData(dataset, collate, teacher_logits, weight_rows, arch_rows, probe_probs, probe_weights)


__all__ = [
    "SearchData",
    "layer_for_cell",
    "prepare_search_data",
    "probe_loss",
    "split_rows",
    "teacher_outputs",
    "train_probes",
]
