"""AdaBERT's relaxed search space, the *supernet* (formulas in :mod:`metakd.search.adabert`): frozen word
embeddings, a projection, ``max_cells`` super cells whose edges mix every candidate operation by sampled
weights, a classifier over the depth-weighted pooled cells, optional per-cell probe heads; its
architecture parameters ``alpha`` (edges x operations) and ``depth``, and the expected cost behind the
efficiency loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metakd.prototypes import masked_mean_pool
from metakd.search.relaxation import gumbel_softmax
from metakd.students.adabert import Operation, op_cost


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


__all__ = ["MixedEdge", "SuperCell", "SuperNet", "cell_edges", "expected_cost"]
