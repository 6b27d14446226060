"""The discrete search space of AdaBERT's cells, as the evolutionary search (RoSearch) walks it.

An architecture is the JSON mapping of :class:`metakd.students.adabert.AdaBERTStudent` (``num_cells``
and one ``cell``: node j >= 2 takes ``edges_per_node`` distinct earlier nodes, each through a non-zero
operation). :class:`Space` draws random architectures, mutates and crosses them, and bounds their
cost; :func:`architecture_key` names an architecture for the candidate cache (the same wiring, the same
key, whatever the order of a node's inputs).

- **Mutation** (one change, seeded): a kept edge's operation (another non-zero operation), a kept
  edge's source (another earlier node not already an input of that node), or the number of cells by one
  (probability ``depth_probability`` when a neighbouring count exists).
- **Crossover**: each node's inputs from one parent or the other (uniform), the number of cells from
  either.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Any

from metakd.students.adabert import ARCHITECTURE_FORMAT, op_cost


@dataclass(frozen=True)
class Space:
    """The cell space: ``operations`` (``zero`` is never kept), ``nodes_per_cell``, ``edges_per_node``,
    1..``max_cells`` cells of width ``hidden_size``, over ``embedding_dim``-wide word embeddings."""

    operations: tuple[str, ...]
    nodes_per_cell: int
    edges_per_node: int
    max_cells: int
    hidden_size: int
    embedding_dim: int
    depth_probability: float = 0.25

    @property
    def usable(self) -> list[str]:
        return [op for op in self.operations if op != "zero"]

    def inputs_of(self, node: int) -> int:
        """How many inputs node ``node`` keeps (it has ``node`` earlier nodes to choose from)."""
        return min(self.edges_per_node, node)

    def random_architecture(self, rng: random.Random, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """A uniformly drawn architecture (sources, operations, cells); other keys from ``base``."""
        cell = []
        for node in range(2, self.nodes_per_cell + 2):
            sources = sorted(rng.sample(range(node), self.inputs_of(node)))
            cell.append({"node": node, "inputs": [[s, rng.choice(self.usable)] for s in sources]})
        return {**(base or {}), **self.skeleton(), "num_cells": rng.randint(1, self.max_cells), "cell": cell}

    def skeleton(self) -> dict[str, Any]:
        return {
            "format": ARCHITECTURE_FORMAT,
            "search_space": "adabert",
            "hidden_size": self.hidden_size,
            "nodes_per_cell": self.nodes_per_cell,
        }

    def mutate(self, architecture: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """A copy of ``architecture`` with one change (module docstring)."""
        child = copy.deepcopy(architecture)
        depth_moves = [
            n for n in (child["num_cells"] - 1, child["num_cells"] + 1) if 1 <= n <= self.max_cells
        ]
        if depth_moves and rng.random() < self.depth_probability:
            child["num_cells"] = rng.choice(depth_moves)
            return child
        edges = [(i, j) for i, node in enumerate(child["cell"]) for j in range(len(node["inputs"]))]
        i, j = rng.choice(edges)
        node = child["cell"][i]
        source, op = node["inputs"][j]
        free_sources = [s for s in range(node["node"]) if s not in {src for src, _ in node["inputs"]}]
        other_ops = [o for o in self.usable if o != op]
        if free_sources and (not other_ops or rng.random() < 0.5):
            node["inputs"][j][0] = rng.choice(free_sources)
            node["inputs"].sort(key=lambda pair: pair[0])
        elif other_ops:
            node["inputs"][j][1] = rng.choice(other_ops)
        return child

    def crossover(self, first: dict[str, Any], second: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Each node's inputs from ``first`` or ``second``; the number of cells from either."""
        child = copy.deepcopy(first)
        child["cell"] = [copy.deepcopy(rng.choice([a, b])) for a, b in zip(first["cell"], second["cell"])]
        child["num_cells"] = rng.choice([first["num_cells"], second["num_cells"]])
        return child

    def max_flops(self) -> float:
        """FLOPs per token of the costliest architecture of the space (every kept edge the costliest
        operation, ``max_cells`` cells), the efficiency term's denominator."""
        worst = max(op_cost(op, self.hidden_size)[1] for op in self.operations)
        edges = self.nodes_per_cell * self.edges_per_node
        return float(2 * self.embedding_dim * self.hidden_size + self.max_cells * edges * worst)


def architecture_key(architecture: dict[str, Any]) -> str:
    """The wiring of an architecture as a canonical string: cells, width, and each node's inputs
    sorted (the candidate cache's key)."""
    cell = [
        {"node": node["node"], "inputs": sorted([int(s), str(op)] for s, op in node["inputs"])}
        for node in architecture["cell"]
    ]
    wiring = {
        "num_cells": architecture["num_cells"],
        "hidden_size": architecture["hidden_size"],
        "cell": cell,
    }
    return json.dumps(wiring, sort_keys=True, separators=(",", ":"))


__all__ = ["Space", "architecture_key"]
