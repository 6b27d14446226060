"""AdaBERT's differentiable search of a task-specific student (Chen et al., IJCAI 2020), per domain.

**Search space.** ``max_cells`` stacked cells over the frozen word embeddings of ``embedding`` (the
teacher's WordPiece table, projected to ``hidden_size``). A cell has ``nodes_per_cell`` intermediate
nodes; node j takes every earlier node (0 and 1: the two previous cells' outputs) through an *edge* that
mixes the candidate operations of :data:`metakd.students.adabert.OPERATIONS`. All cells share one set of
operation logits ``alpha`` (edges x operations), as in DARTS; the number of cells has its own logits
``depth`` (``search_depth``): the classifier reads ``sum_k w_k * pool(cell_k)``.

**Relaxation.** Each forward draws the edge weights and the depth weights with Gumbel-softmax,
``w = softmax((logits + g) / tau)``, ``g = -log(-log U)``, ``U ~ Uniform(0, 1)``, and the temperature is
annealed exponentially, ``tau_t = tau_start * (tau_end / tau_start) ** (t / (T - 1))``. With ``hard`` the
sample is the one-hot argmax with the soft sample's gradient (straight-through), and only the sampled
operation of each edge is run (as in GDAS, Dong & Yang 2019): about 1/9 of the soft supernet's cost.

**Loss.** ``L = (1 - gamma) * CE + gamma * L_KD + beta * L_E`` (AdaBERT's form; at the default
``gamma = 0.5`` it equals ``(1 - gamma) * (CE + L_KD)``). ``L_KD`` is the soft cross-entropy between the
teacher's and the student's logits at ``temperature``, plus, with ``probes``, AdaBERT's task-useful
knowledge: a linear probe per teacher layer, trained on the weight split, whose predictions cell k's own
head learns to match (cell k <-> teacher layer ``round(k * L / max_cells)``), weighted by each probe's
accuracy on the architecture split (normalised to sum to 1). ``L_E`` is the expected cost of the sampled
architecture, ``(E[params] / max_params + E[FLOPs] / max_FLOPs) / 2`` over the cells
(:func:`expected_cost`; the maxima: every edge at its costliest operation, ``max_cells`` cells).

**Alternating updates.** The target domain's *training* split is cut (stratified, seeded) into a weight
split and an architecture split (``arch_fraction``); dev and test are never read. After
``warmup_steps`` of weight updates only, every step updates ``alpha``/``depth`` on an architecture batch
(Adam, ``arch_lr``, first-order) and then the weights on a weight batch (AdamW, ``weight_lr``).

**Derive.** Per node keep the ``edges_per_node`` incoming edges whose best non-zero operation has the
largest softmax weight, each with that operation; the number of cells is ``argmax(depth) + 1``
(:func:`derive`). The result is the architecture JSON of :class:`metakd.students.adabert.AdaBERTStudent`,
which is retrained from scratch with KD by ``python -m metakd fit`` (``student_model: {class_path:
adabert, init_args: {architecture: <out>/architecture.json}}``).

**Robustness in the objective** (``rosearch``, off by default): RoSearch's accuracy-robustness-efficiency
fitness (Guo et al. 2021) ranks the derived architecture and its mutants (a small evolutionary search,
:mod:`metakd.search.rosearch`); the fittest one is written instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.prototypes import masked_mean_pool
from metakd.students.adabert import ARCHITECTURE_FORMAT, OPERATIONS, Operation, op_cost

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# relaxation


def sample_gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``."""
    uniform = torch.rand(shape, generator=generator).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def gumbel_softmax(
    logits: Tensor, tau: float, hard: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """``softmax((logits + g) / tau)`` over the last axis; ``hard``: the one-hot argmax in the forward
    pass with the soft sample's gradient (straight-through)."""
    noise = sample_gumbel(logits.shape, generator).to(logits.device, logits.dtype)
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


def temperature_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Exponential annealing from ``start`` (step 0) to ``end`` (step ``total_steps - 1``)."""
    if total_steps <= 1:
        return end
    fraction = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return start * (end / start) ** fraction


# --------------------------------------------------------------------------------------------------
# the supernet


def cell_edges(nodes_per_cell: int) -> list[tuple[int, int]]:
    """``(source, node)`` of every edge of a cell, nodes 2.. in order, sources 0..node-1."""
    return [(source, node) for node in range(2, nodes_per_cell + 2) for source in range(node)]


def expected_cost(
    edge_weights: Tensor, depth_weights: Tensor | None, operations: list[str], width: int
) -> tuple[Tensor, Tensor]:
    """``(E[params], E[FLOPs per token])`` of the cells: per cell ``sum_edges sum_ops w_eo * cost(o)``
    (one shared genotype), times the expected number of cells ``sum_k k * w_k`` (``max_cells`` when
    ``depth_weights`` has one entry or is None: then the number of cells is fixed, given by the caller
    as a one-entry tensor of that count)."""
    costs = torch.tensor([op_cost(op, width) for op in operations], dtype=edge_weights.dtype)
    per_cell = edge_weights @ costs.to(edge_weights.device)  # (edges, 2)
    per_cell = per_cell.sum(0)
    cell_norm = 2 * width  # each cell's output LayerNorm
    per_cell = per_cell + torch.tensor([cell_norm, 0.0], dtype=per_cell.dtype, device=per_cell.device)
    if depth_weights is None:
        raise ValueError("depth_weights is needed (a one-entry tensor holding the fixed number of cells)")
    counts = torch.arange(1, depth_weights.shape[0] + 1, dtype=per_cell.dtype, device=per_cell.device)
    cells = (depth_weights * counts).sum() if depth_weights.shape[0] > 1 else depth_weights[0]
    return cells * per_cell[0], cells * per_cell[1]


class MixedEdge(nn.Module):
    """An edge of the supernet: every candidate operation, mixed by the sampled weights."""

    def __init__(self, operations: list[str], width: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(Operation(op, width) for op in operations)

    def forward(self, x: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        out = None
        for weight, op in zip(weights, self.ops):
            # zero contributes nothing; an operation a hard (one-hot) sample leaves out is not run at all
            # (its weight is exactly 0: GDAS's saving; the sampled one carries the straight-through gradient)
            if op.kind == "zero" or float(weight.detach()) == 0.0:
                continue
            term = weight * op(x, mask)
            out = term if out is None else out + term
        return out if out is not None else torch.zeros_like(x)


class SuperCell(nn.Module):
    def __init__(self, operations: list[str], width: int, nodes_per_cell: int) -> None:
        super().__init__()
        self.edges = cell_edges(nodes_per_cell)
        self.mixed = nn.ModuleList(MixedEdge(operations, width) for _ in self.edges)
        self.nodes_per_cell = nodes_per_cell
        self.norm = nn.LayerNorm(width)

    def forward(self, previous: Tensor, current: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
        states = [previous, current]
        for node in range(2, self.nodes_per_cell + 2):
            total = None
            for e, (source, target) in enumerate(self.edges):
                if target == node:
                    term = self.mixed[e](states[source], mask, weights[e])
                    total = term if total is None else total + term
            states.append(total)
        output = torch.stack(states[2:]).mean(0)
        return self.norm(output) * mask.unsqueeze(-1).to(output.dtype)


class SuperNet(nn.Module):
    """The relaxed search space (module docstring): frozen embeddings, projection, ``max_cells`` super
    cells, classifier, optional per-cell probe heads; ``alpha`` and ``depth`` are its architecture."""

    def __init__(
        self,
        embeddings: Tensor,
        num_labels: int,
        operations: list[str],
        hidden_size: int,
        max_cells: int,
        nodes_per_cell: int,
        search_depth: bool = True,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        probe_heads: bool = False,
    ) -> None:
        super().__init__()
        self.operations, self.hidden_size = list(operations), hidden_size
        self.max_cells, self.nodes_per_cell, self.search_depth = max_cells, nodes_per_cell, search_depth
        self.embeddings = nn.Embedding.from_pretrained(
            embeddings.float(), freeze=True, padding_idx=pad_token_id
        )
        self.projection = nn.Linear(embeddings.shape[1], hidden_size)
        self.cells = nn.ModuleList(
            SuperCell(operations, hidden_size, nodes_per_cell) for _ in range(max_cells)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.heads = (
            nn.ModuleList(nn.Linear(hidden_size, num_labels) for _ in range(max_cells))
            if probe_heads
            else None
        )
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(cell_edges(nodes_per_cell)), len(operations)))
        self.depth = nn.Parameter(torch.zeros(max_cells if search_depth else 1))

    def architecture_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.depth] if self.search_depth else [self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.architecture_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in arch]

    def sample(
        self, tau: float, hard: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Edge weights (edges, ops) and depth weights (max_cells,) (fixed depth: all on ``max_cells``)."""
        edges = gumbel_softmax(self.alpha, tau, hard, generator)
        if not self.search_depth:
            depth = torch.zeros(self.max_cells, device=edges.device)
            depth[-1] = 1.0
            return edges, depth
        return edges, gumbel_softmax(self.depth, tau, hard, generator)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, edges: Tensor, depth: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """``(logits, per-cell pooled states)`` for sampled ``edges`` / ``depth`` weights."""
        mask = attention_mask
        x = self.projection(self.embeddings(input_ids)) * mask.unsqueeze(-1).float()
        previous, current = x, x
        pooled = []
        for cell in self.cells:
            previous, current = current, cell(previous, current, mask, edges)
            pooled.append(masked_mean_pool(current, mask))
        mixed = sum(w * p for w, p in zip(depth, pooled))
        return self.classifier(self.dropout(mixed)), pooled

    def efficiency_loss(self, edges: Tensor, depth: Tensor) -> Tensor:
        """``L_E = (E[params] / max_params + E[FLOPs] / max_FLOPs) / 2`` (module docstring)."""
        counts = depth if self.search_depth else torch.tensor([float(self.max_cells)], device=depth.device)
        params, flops = expected_cost(edges, counts, self.operations, self.hidden_size)
        worst = [max(op_cost(op, self.hidden_size)[k] for op in self.operations) for k in (0, 1)]
        num_edges = len(cell_edges(self.nodes_per_cell))
        max_params = self.max_cells * (num_edges * worst[0] + 2 * self.hidden_size)
        max_flops = self.max_cells * num_edges * max(worst[1], 1)
        return 0.5 * (params / max_params + flops / max_flops)


# --------------------------------------------------------------------------------------------------
# derivation


def derive(
    alpha: Tensor,
    depth: Tensor | None,
    operations: list[str],
    nodes_per_cell: int,
    edges_per_node: int = 2,
    fixed_cells: int | None = None,
) -> dict[str, Any]:
    """The discrete cell and depth of ``alpha`` / ``depth`` logits (module docstring): per node the
    ``edges_per_node`` edges with the strongest non-zero operation (ties: the earlier source)."""
    if alpha.shape != (len(cell_edges(nodes_per_cell)), len(operations)):
        raise StudentConfigError(
            f"alpha has shape {tuple(alpha.shape)}; expected "
            f"({len(cell_edges(nodes_per_cell))}, {len(operations)})"
        )
    weights = torch.softmax(alpha.detach().float(), dim=-1)
    usable = [k for k, op in enumerate(operations) if op != "zero"]
    if not usable:
        raise StudentConfigError("the operations must include one other than 'zero'")
    edges = cell_edges(nodes_per_cell)
    cell = []
    for node in range(2, nodes_per_cell + 2):
        incoming = []
        for e, (source, target) in enumerate(edges):
            if target != node:
                continue
            best = max(usable, key=lambda k: (float(weights[e, k]), -k))
            incoming.append((float(weights[e, best]), source, operations[best]))
        incoming.sort(key=lambda item: (-item[0], item[1]))
        kept = sorted(incoming[:edges_per_node], key=lambda item: item[1])
        cell.append({"node": node, "inputs": [[source, op] for _, source, op in kept]})
    if fixed_cells is not None:
        num_cells = fixed_cells
    else:
        num_cells = int(torch.argmax(depth.detach())) + 1
    return {"num_cells": num_cells, "nodes_per_cell": nodes_per_cell, "cell": cell}


# --------------------------------------------------------------------------------------------------
# the search


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
    steps: int = 300
    warmup_steps: int = 50
    batch_size: int = 32
    arch_fraction: float = 0.2
    weight_lr: float = 1e-3
    arch_lr: float = 3e-3
    weight_decay: float = 0.0
    gamma: float = 0.5
    beta: float = 0.1
    temperature: float = 1.0
    tau_start: float = 1.0
    tau_end: float = 0.1
    hard: bool = False
    probes: bool = False
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


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Mean over the batch of ``-sum_c softmax(t / T)_c log softmax(s / T)_c``."""
    target = torch.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


@dataclass
class SearchData:
    """The target domain's training split, tokenised, with the teacher's outputs, cut in two."""

    dataset: Any
    collate: Any
    teacher_logits: Tensor  # (N, C) in dataset order
    weight_rows: list[int]
    arch_rows: list[int]
    probe_features: Tensor | None = None  # (L, N, H) mean-pooled teacher layers 1..L
    example_ids: list[int] = field(default_factory=list)

    def batches(self, rows: list[int], batch_size: int, generator: torch.Generator):
        """Endless shuffled batches of ``rows`` (positions in ``dataset``), with their positions."""
        while True:
            order = torch.randperm(len(rows), generator=generator).tolist()
            for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                chunk = [rows[k] for k in order[start : start + batch_size]]
                yield self.collate([self.dataset[i] for i in chunk]), torch.tensor(chunk)


def split_rows(labels: list[int], arch_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified, seeded ``(weight rows, architecture rows)`` of a training split."""
    from datamodules.base import stratified_split

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


def run_search(
    settings: SearchSettings,
    datamodule: Any,
    teacher_ckpt: str,
    out_dir: str | Path,
    seed: int = 42,
    rosearch: Any = None,
) -> dict[str, Any]:
    """Search one target domain (module docstring); writes ``<out>/architecture.json`` and
    ``<out>/search.json`` (settings, final alphas as probabilities, losses, timing) and returns the
    architecture."""
    from metakd.backbones import check_same_tokenizer, pretrained_word_embeddings
    from metakd.students.adabert import architecture_cost, check_architecture, write_architecture
    from metakd.teachers import FrozenTeacher
    from metakd.utils import write_json

    settings.check()
    if datamodule.target_domain is None:
        raise StudentConfigError("search: set data.init_args.target_domain (the search is per domain)")
    start_time = time.monotonic()
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule.setup("fit")
    check_same_tokenizer(settings.embedding, "search.embedding", datamodule.backbone, "data")
    teacher = FrozenTeacher(
        teacher_ckpt, datamodule.label_names, datamodule.domain_names, datamodule.target_domain
    )
    teacher.check_tokenizer(datamodule.backbone)
    dataset = datamodule.train_dataset
    labels = torch.as_tensor([int(dataset[i]["labels"]) for i in range(len(dataset))])
    weight_rows, arch_rows = split_rows(labels.tolist(), settings.arch_fraction, seed)
    log.info(
        "search %s: %d weight rows, %d architecture rows",
        datamodule.target_domain,
        len(weight_rows),
        len(arch_rows),
    )
    teacher_logits, layers = teacher_outputs(teacher, datamodule, settings.probes)
    probe_probs = probe_weights = None
    if settings.probes:
        probe_probs, probe_accuracy = train_probes(
            layers, labels, weight_rows, arch_rows, settings.probe_steps, seed
        )
        probe_weights = probe_accuracy / probe_accuracy.sum().clamp_min(1e-8)
    data = SearchData(
        dataset, datamodule.train_eval_dataloader().collate_fn, teacher_logits, weight_rows, arch_rows
    )

    tokenizer = datamodule.tokenizer
    net = SuperNet(
        pretrained_word_embeddings(settings.embedding),
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
    weight_batches = data.batches(weight_rows, settings.batch_size, generator)
    arch_batches = data.batches(arch_rows, settings.batch_size, generator)
    history: list[dict[str, float]] = []

    def objective(
        batch: dict[str, Tensor], rows: Tensor, tau: float, with_cost: bool
    ) -> tuple[Tensor, dict[str, float]]:
        edges, depth = net.sample(tau, settings.hard, noise)
        logits, pooled = net(batch["input_ids"], batch["attention_mask"], edges, depth)
        ce = F.cross_entropy(logits, batch["labels"])
        kd = soft_cross_entropy(logits, data.teacher_logits[rows], settings.temperature)
        if settings.probes:
            probe = logits.new_zeros(())
            for k, state in enumerate(pooled, start=1):
                layer = layer_for_cell(k, settings.max_cells, probe_probs.shape[0])
                target = probe_probs[layer - 1, rows]
                student = F.log_softmax(net.heads[k - 1](state), -1)
                probe = probe - probe_weights[layer - 1] * (target * student).sum(-1).mean()
            kd = kd + probe
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
            history.append({"step": step, "tau": round(tau, 4), "loss": loss.item(), **parts})

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
    candidates_report = None
    if rosearch is not None and rosearch.enabled:
        from metakd.search.rosearch import evolve

        architecture, candidates_report = evolve(architecture, settings, rosearch, datamodule, data, seed)
    cost = architecture_cost(architecture, len(tokenizer), datamodule.num_labels)
    edge_probs = torch.softmax(net.alpha.detach(), -1)
    architecture["derived_from"] = {
        "target_domain": datamodule.target_domain,
        "teacher": str(teacher_ckpt),
        "seed": seed,
        "steps": settings.steps,
        "selected_by": "rosearch fitness" if candidates_report else "alphas",
    }
    architecture["cost"] = cost
    write_architecture(architecture, out_dir / "architecture.json")
    report = {
        "architecture": architecture,
        "settings": asdict(settings),
        "edges": [
            {
                "from": s,
                "to": t,
                "probabilities": {
                    op: round(float(p), 4) for op, p in zip(settings.operations, edge_probs[e])
                },
            }
            for e, (s, t) in enumerate(cell_edges(settings.nodes_per_cell))
        ],
        "depth_probabilities": torch.softmax(net.depth.detach(), -1).tolist(),
        "split": {"weight": len(weight_rows), "architecture": len(arch_rows)},
        "history": history,
        "rosearch": candidates_report,
        "seconds": round(time.monotonic() - start_time, 1),
    }
    if probe_weights is not None:
        report["probe_weights"] = probe_weights.tolist()
    write_json(out_dir / "search.json", report)
    return architecture


def describe(architecture: dict[str, Any]) -> str:
    """One line: cells, and each node's inputs, e.g. ``2 cells; n2 = conv5(0) + maxpool3(1); ...``."""
    nodes = "; ".join(
        f"n{node['node']} = " + " + ".join(f"{op}({src})" for src, op in node["inputs"])
        for node in architecture["cell"]
    )
    return f"{architecture['num_cells']} cell(s) x {architecture['hidden_size']}; {nodes}"


__all__ = [
    "SearchSettings",
    "SuperNet",
    "derive",
    "describe",
    "expected_cost",
    "gumbel_softmax",
    "run_search",
    "temperature_at",
]
