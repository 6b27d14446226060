"""The discrete architecture of a finished AdaBERT search (:func:`derive`: DARTS's rule on the operation
and depth logits) and its one-line description (:func:`describe`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metakd.errors import StudentConfigError
from metakd.search.supernet import cell_edges


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


def describe(architecture: dict[str, Any]) -> str:
    """One line: cells, and each node's inputs, e.g. ``2 cells; n2 = conv5(0) + maxpool3(1); ...``."""
    nodes = "; ".join(
        f"n{node['node']} = " + " + ".join(f"{op}({src})" for src, op in node["inputs"])
        for node in architecture["cell"]
    )
    return f"{architecture['num_cells']} cell(s) x {architecture['hidden_size']}; {nodes}"


__all__ = ["derive", "describe"]
