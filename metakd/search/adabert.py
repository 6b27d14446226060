"""AdaBERT's differentiable search of a task-specific student (Chen et al., IJCAI 2020), per domain:
its settings and the search loop.

**Search space.** ``max_cells`` stacked cells over the frozen word embeddings of ``embedding`` (the
teacher's WordPiece table, projected to ``hidden_size``). A cell has ``nodes_per_cell`` intermediate
nodes; node j takes every earlier node (0 and 1: the two previous cells' outputs) through an *edge* that
mixes the candidate operations of :data:`metakd.students.adabert.OPERATIONS` (the paper's ten:
convolutions and dilated convolutions of width 3/5/7, max and average pooling, identity, zero). All
cells share one set of operation logits ``alpha`` (edges x operations), as in DARTS; the number of cells
has its own logits ``depth`` (``search_depth``): the classifier reads ``sum_k w_k * pool(cell_k)``.

**Relaxation.** Each forward draws the edge weights and the depth weights with Gumbel-softmax,
``w = softmax((logits + g) / tau)``, ``g = -log(-log U)``, ``U ~ Uniform(0, 1)``, and the temperature is
annealed exponentially, ``tau_t = tau_start * (tau_end / tau_start) ** (t / (T - 1))``. With ``hard`` the
sample is the one-hot argmax with the soft sample's gradient (straight-through), and only the sampled
operation of each edge is run (as in GDAS, Dong & Yang 2019): about 1/9 of the soft supernet's cost.

**Loss.** ``L = (1 - gamma) * CE + gamma * L_KD + beta * L_E`` (AdaBERT's form; at the default ``gamma =
0.5`` it equals ``(1 - gamma) * (CE + L_KD)``). ``L_KD`` is the soft cross-entropy between the teacher's
and the student's logits at ``temperature``, plus, with ``probes`` (on by default, as published),
AdaBERT's task-useful knowledge: a linear probe per teacher layer, trained on the weight split, whose
predictions cell k's own head learns to match (cell k <-> teacher layer ``round(k * L / max_cells)``),
weighted by each probe's accuracy on the architecture split (normalised to sum to 1). ``L_E`` is the
expected cost of the sampled architecture, ``(E[params] / max_params + E[FLOPs] / max_FLOPs) / 2`` over
the cells (:func:`expected_cost`; the maxima: every edge at its costliest operation, ``max_cells``
cells).

**Alternating updates.** The target domain's *training* split is cut (stratified, seeded) into a weight
split and an architecture split (``arch_fraction``); dev and test are never read. After
``warmup_steps`` of weight updates only, every step updates ``alpha``/``depth`` on an architecture batch
(Adam, ``arch_lr``, first-order) and then the weights on a weight batch (AdamW, ``weight_lr``).

**Did the architecture move?** Every recorded step stores the mean per-edge entropy of the operation
distribution ``softmax(alpha_e)`` (nats; ``log 10 = 2.303`` is uniform) and of the depth distribution;
``search.json`` has them under ``entropy`` and ``architecture.json``'s ``derived_from.op_entropy`` the
first and last value. A search whose entropy stays at the maximum derived its architecture from noise.
Calibration (Amazon books, width 64, 3 cells of 2 nodes, hard samples, 300 steps, 50 of them warm-up):
``arch_lr`` 3e-3 (the earlier default) moved the entropy from 2.303 to 2.299 only; 3e-2 moved it to 1.914
and still falling, hence the default 3e-2 and 400 steps. DARTS's 3e-4 assumes tens of thousands of
steps, which 2 CPU cores cannot give.

**Derive.** Per node keep the ``edges_per_node`` incoming edges whose best non-zero operation has the
largest softmax weight, each with that operation; the number of cells is ``argmax(depth) + 1``
(:func:`derive`). The result is the architecture JSON of :class:`metakd.students.adabert.AdaBERTStudent`,
which is retrained from scratch with KD by ``python -m metakd fit`` (``student_model: {class_path:
adabert, init_args: {architecture: <out>/architecture.json}}``).

**Robustness in the objective** (``rosearch``, off by default): RoSearch's evolutionary search (Guo et
al. 2021, :mod:`metakd.search.rosearch`) ranks candidates by accuracy, accuracy under attack and
efficiency, starting from the derived architecture (``initial: adabert``) or from random ones
(``initial: random``, without this search); the fittest one is written instead.

Where the parts live: the relaxation (:mod:`metakd.search.relaxation`), the supernet and its expected
cost (:mod:`metakd.search.supernet`), the teacher's knowledge and the split
(:mod:`metakd.search.knowledge`), the derivation (:mod:`metakd.search.derive`), the whole run with its
output files (:mod:`metakd.search.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metakd.distill.losses import soft_cross_entropy
from metakd.errors import StudentConfigError
from metakd.search.derive import derive
from metakd.search.knowledge import SearchData, probe_loss
from metakd.search.relaxation import max_entropy, mean_entropy, temperature_at
from metakd.search.supernet import SuperNet, cell_edges
from metakd.students.adabert import ARCHITECTURE_FORMAT, OPERATIONS, check_architecture


@dataclass
class SearchSettings:
    """Settings of one AdaBERT search (``search:`` in the config; module docstring for the meaning).

    Attributes:
        embedding: backbone whose word embeddings the cells read (frozen during the search).
        freeze_embeddings: whether the derived student keeps them frozen when retrained.
        hidden_size, max_cells, nodes_per_cell, operations, edges_per_node, search_depth: the space.
        steps, warmup_steps, batch_size, arch_fraction, weight_lr, arch_lr, weight_decay: the schedule.
        gamma, beta, temperature: the loss (KD temperature); tau_start, tau_end, hard: Gumbel-softmax.
        probes, probe_steps: AdaBERT's probe-classifier knowledge.
        dropout: of the classifier input.
    """

    embedding: str = "minilm-l6"
    freeze_embeddings: bool = True
    hidden_size: int = 128
    max_cells: int = 4
    nodes_per_cell: int = 3
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    edges_per_node: int = 2
    search_depth: bool = True
    steps: int = 400
    warmup_steps: int = 50
    batch_size: int = 32
    arch_fraction: float = 0.2
    weight_lr: float = 1e-3
    arch_lr: float = 3e-2
    weight_decay: float = 0.0
    gamma: float = 0.5
    beta: float = 0.1
    temperature: float = 1.0
    tau_start: float = 1.0
    tau_end: float = 0.1
    hard: bool = False
    probes: bool = True
    probe_steps: int = 200
    dropout: float = 0.1

    def check(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown or not self.operations:
            raise StudentConfigError(
                f"search.operations: unknown {unknown}; choose from {sorted(OPERATIONS)}"
            )
        for name in ("hidden_size", "max_cells", "nodes_per_cell", "edges_per_node", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise StudentConfigError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.arch_fraction < 1.0:
            raise StudentConfigError(f"search.arch_fraction must be in (0, 1), got {self.arch_fraction}")
        if not 0.0 <= self.gamma <= 1.0 or self.beta < 0:
            raise StudentConfigError(
                f"search.gamma must be in [0, 1] and beta >= 0 ({self.gamma}, {self.beta})"
            )
        if not 0.0 < self.tau_end <= self.tau_start:
            raise StudentConfigError(
                f"search: need 0 < tau_end <= tau_start ({self.tau_end}, {self.tau_start})"
            )
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise StudentConfigError(f"search.warmup_steps must be in [0, steps), got {self.warmup_steps}")


@dataclass
class AdaBERTSearch:
    """A finished search: the derived architecture, the supernet (its final ``alpha`` and ``depth``) and
    the loss history."""

    architecture: dict[str, Any]
    net: SuperNet
    history: list[dict[str, float]] = field(default_factory=list)
    initial_entropy: dict[str, float] = field(default_factory=dict)

    def edge_report(self, operations: list[str], nodes_per_cell: int) -> list[dict[str, Any]]:
        """Per edge, the final operation probabilities ``softmax(alpha)`` (4 decimals)."""
        edge_probs = torch.softmax(self.net.alpha.detach(), -1)
        return [
            {
                "from": s,
                "to": t,
                "probabilities": {op: round(float(p), 4) for op, p in zip(operations, edge_probs[e])},
            }
            for e, (s, t) in enumerate(cell_edges(nodes_per_cell))
        ]

    def depth_probabilities(self) -> list[float]:
        return torch.softmax(self.net.depth.detach(), -1).tolist()

    def entropy_report(self) -> dict[str, Any]:
        """Whether the architecture moved: the mean per-edge entropy of the operation distribution
        ``softmax(alpha_e)`` (and of the depth distribution) before the first step, after the last, its
        maximum ``log |O|`` (uniform) and the value at every recorded step (nats)."""
        final = entropies(self.net)
        report: dict[str, Any] = {}
        for key, width in (
            ("op_entropy", self.net.alpha.shape[-1]),
            ("depth_entropy", self.net.depth.shape[-1]),
        ):
            if key not in final:
                continue
            report[key.removesuffix("_entropy")] = {
                "initial": self.initial_entropy[key],
                "final": final[key],
                "max": max_entropy(width),
                "steps": [row["step"] for row in self.history],
                "values": [row[key] for row in self.history],
            }
        return report


def entropies(net: SuperNet) -> dict[str, float]:
    """``op_entropy``: mean over edges of the entropy of ``softmax(alpha_e)``; ``depth_entropy``: of
    ``softmax(depth)`` when the depth is searched (nats, :func:`mean_entropy`)."""
    out = {"op_entropy": mean_entropy(net.alpha)}
    if net.search_depth:
        out["depth_entropy"] = mean_entropy(net.depth.unsqueeze(0))
    return out


def search_architecture(
    settings: SearchSettings, data: SearchData, datamodule: Any, embeddings: Tensor, seed: int
) -> AdaBERTSearch:
    """Alternate architecture and weight updates on ``data`` (module docstring) and derive the
    architecture; ``embeddings`` is the frozen word-embedding table the cells read."""
    tokenizer = datamodule.tokenizer
    net = SuperNet(
        embeddings,
        datamodule.num_labels,
        settings.operations,
        settings.hidden_size,
        settings.max_cells,
        settings.nodes_per_cell,
        settings.search_depth,
        settings.dropout,
        int(tokenizer.pad_token_id or 0),
        probe_heads=settings.probes,
    )
    weight_opt = torch.optim.AdamW(
        net.weight_parameters(), lr=settings.weight_lr, weight_decay=settings.weight_decay
    )
    arch_opt = torch.optim.Adam(net.architecture_parameters(), lr=settings.arch_lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    weight_batches = data.batches(data.weight_rows, settings.batch_size, generator)
    arch_batches = data.batches(data.arch_rows, settings.batch_size, generator)
    history: list[dict[str, float]] = []
    initial = entropies(net)

    def objective(
        batch: dict[str, Tensor], rows: Tensor, tau: float, with_cost: bool
    ) -> tuple[Tensor, dict[str, float]]:
        edges, depth = net.sample(tau, settings.hard, noise)
        logits, pooled = net(batch["input_ids"], batch["attention_mask"], edges, depth)
        ce = F.cross_entropy(logits, batch["labels"])
        kd = soft_cross_entropy(logits, data.teacher_logits[rows], settings.temperature).mean()
        if settings.probes:
            kd = kd + probe_loss(net.heads, pooled, data.probe_probs, data.probe_weights, rows)
        loss = (1.0 - settings.gamma) * ce + settings.gamma * kd
        efficiency = net.efficiency_loss(edges, depth)
        if with_cost:
            loss = loss + settings.beta * efficiency
        return loss, {"ce": ce.item(), "kd": kd.item(), "efficiency": efficiency.item()}

    net.train()
    torch.set_grad_enabled(True)  # (an in-process caller may have switched it off)
    for step in range(settings.steps):
        tau = temperature_at(step, settings.steps, settings.tau_start, settings.tau_end)
        if step >= settings.warmup_steps:
            batch, rows = next(arch_batches)
            arch_opt.zero_grad()
            loss, _ = objective(batch, rows, tau, with_cost=True)
            loss.backward()
            arch_opt.step()
        batch, rows = next(weight_batches)
        weight_opt.zero_grad()
        loss, parts = objective(batch, rows, tau, with_cost=False)
        loss.backward()
        weight_opt.step()
        if step % max(1, settings.steps // 20) == 0 or step == settings.steps - 1:
            history.append(
                {"step": step, "tau": round(tau, 4), "loss": loss.item(), **parts, **entropies(net)}
            )

    fixed = None if settings.search_depth else settings.max_cells
    derived = derive(
        net.alpha, net.depth, settings.operations, settings.nodes_per_cell, settings.edges_per_node, fixed
    )
    architecture = {
        "format": ARCHITECTURE_FORMAT,
        "search_space": "adabert",
        "hidden_size": settings.hidden_size,
        **derived,
        "embedding": {
            "source": settings.embedding,
            "dim": int(net.embeddings.weight.shape[1]),
            "freeze": settings.freeze_embeddings,
        },
        "dropout": settings.dropout,
    }
    check_architecture(architecture)
    return AdaBERTSearch(architecture, net, history, initial)


__all__ = ["AdaBERTSearch", "SearchSettings", "search_architecture"]
