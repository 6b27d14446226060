"""The AdaBERT student (Chen et al., IJCAI 2020): a stack of searched convolution/pooling cells over word
embeddings, built from the human-readable architecture JSON that ``python -m metakd search`` writes.

The architecture (``architecture``: a path to the JSON, or the mapping itself)::

    {"format": 1, "hidden_size": 128, "num_cells": 2, "nodes_per_cell": 3,
     "embedding": {"source": "minilm-l6", "dim": 384, "freeze": true},
     "cell": [{"node": 2, "inputs": [[0, "conv5"], [1, "maxpool3"]]},
              {"node": 3, "inputs": [[2, "dilconv3"], [0, "identity"]]},
              {"node": 4, "inputs": [[3, "conv3"], [1, "avgpool3"]]}],
     "dropout": 0.1}

Forward: token embeddings (``embedding.dim`` wide; initialised from ``embedding.source``'s word
embeddings, the teacher's WordPiece table, and frozen when ``freeze``) -> a linear projection to
``hidden_size`` -> ``num_cells`` cells -> masked mean pooling -> a linear classifier. Every cell has the
same wiring (one genotype, as in DARTS and AdaBERT): nodes 0 and 1 are the outputs of the two previous
cells (both the projected embeddings for the first cell), node j >= 2 sums its ``inputs`` (each an
operation on an earlier node), and the cell's output is LayerNorm(mean of its intermediate nodes).

Operations (width d; ``x`` is masked so that padding never changes a real position's value):
``conv{3,5,7}`` = ReLU(LayerNorm(Conv1d_k(x))), ``dilconv{3,5,7}`` = the same with dilation 2,
``maxpool3`` / ``avgpool3`` over the real positions of a window of 3, ``identity``, ``zero``.
Their cost (:func:`op_cost`): a convolution of width k has k*d*d + d weights and biases plus 2d LayerNorm
parameters and 2*k*d*d FLOPs per token (a multiply-add counts 2); a pooling of width k has no parameters
and k*d FLOPs per token; identity and zero cost nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.prototypes import masked_mean_pool
from metakd.students.base import STUDENTS, StudentModel, StudentOutput

ARCHITECTURE_FORMAT = 1

# name -> (kind, kernel width, dilation)
OPERATIONS: dict[str, tuple[str, int, int]] = {
    "conv3": ("conv", 3, 1),
    "conv5": ("conv", 5, 1),
    "conv7": ("conv", 7, 1),
    "dilconv3": ("conv", 3, 2),
    "dilconv5": ("conv", 5, 2),
    "dilconv7": ("conv", 7, 2),
    "maxpool3": ("maxpool", 3, 1),
    "avgpool3": ("avgpool", 3, 1),
    "identity": ("identity", 0, 1),
    "zero": ("zero", 0, 1),
}
"""AdaBERT's candidate operations on an edge of a cell: the paper's ten (Chen et al. 2020:
standard and dilated convolutions of width 3, 5 and 7, max and average pooling of width 3, identity and
zero)."""


def op_cost(name: str, width: int) -> tuple[int, int]:
    """``(parameters, FLOPs per token)`` of operation ``name`` at ``width`` channels (module docstring)."""
    kind, kernel, _ = _operation(name)
    if kind == "conv":
        return kernel * width * width + width + 2 * width, 2 * kernel * width * width
    if kind in ("maxpool", "avgpool"):
        return 0, kernel * width
    return 0, 0


def _operation(name: str) -> tuple[str, int, int]:
    if name not in OPERATIONS:
        raise StudentConfigError(f"unknown AdaBERT operation {name!r}; known: {sorted(OPERATIONS)}")
    return OPERATIONS[name]


class Operation(nn.Module):
    """One candidate operation on (B, T, d) token states with a (B, T) mask."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__()
        self.name = name
        self.kind, self.kernel, self.dilation = _operation(name)
        if self.kind == "conv":
            padding = self.dilation * (self.kernel // 2)
            self.conv = nn.Conv1d(width, width, self.kernel, padding=padding, dilation=self.dilation)
            self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        if self.kind == "zero":
            return torch.zeros_like(x)
        if self.kind == "identity":
            return x
        if self.kind == "conv":
            y = self.conv((x * m).transpose(1, 2)).transpose(1, 2)
            return torch.relu(self.norm(y)) * m
        pad = self.kernel // 2
        if self.kind == "maxpool":
            filled = x.masked_fill(m == 0, float("-inf")).transpose(1, 2)
            y = F.max_pool1d(filled, self.kernel, stride=1, padding=pad).transpose(1, 2)
            return y.masked_fill(m == 0, 0.0)
        # average over the real positions of the window (padding never counts)
        summed = F.avg_pool1d((x * m).transpose(1, 2), self.kernel, 1, pad, count_include_pad=True)
        counts = F.avg_pool1d(m.transpose(1, 2), self.kernel, 1, pad, count_include_pad=True)
        return (summed / counts.clamp_min(1e-6)).transpose(1, 2) * m


# --------------------------------------------------------------------------------------------------
# the architecture JSON


def load_architecture(architecture: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The architecture mapping of a JSON path or a mapping, checked (errors name the key)."""
    where = "architecture"
    if isinstance(architecture, (str, Path)):
        path = Path(architecture)
        where = str(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StudentConfigError(
                f"AdaBERT architecture file not found: {str(path)!r} "
                "(write one with `python -m metakd search`)"
            ) from None
        except (OSError, json.JSONDecodeError) as err:
            raise StudentConfigError(f"cannot read the AdaBERT architecture {str(path)!r}: {err}") from err
    elif isinstance(architecture, Mapping):
        spec = json.loads(json.dumps(dict(architecture)))  # a plain, JSON-able copy
    else:
        raise StudentConfigError(
            f"architecture must be a path to an AdaBERT architecture JSON or a mapping, got {architecture!r}"
        )
    check_architecture(spec, where)
    return spec


def check_architecture(spec: Mapping[str, Any], where: str = "architecture") -> None:
    """Refuse a malformed architecture with the key and what was expected."""
    if not isinstance(spec, Mapping):
        raise StudentConfigError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != ARCHITECTURE_FORMAT:
        raise StudentConfigError(
            f"{where}: 'format' must be {ARCHITECTURE_FORMAT}, got {spec.get('format')!r}"
        )
    for key in ("hidden_size", "num_cells", "nodes_per_cell"):
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StudentConfigError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    embedding = spec.get("embedding")
    if not isinstance(embedding, Mapping) or not isinstance(embedding.get("dim"), int):
        raise StudentConfigError(
            f"{where}: 'embedding' must be an object with an integer 'dim' (and 'source', 'freeze'), "
            f"got {embedding!r}"
        )
    cell = spec.get("cell")
    nodes = spec["nodes_per_cell"]
    if not isinstance(cell, list) or len(cell) != nodes:
        raise StudentConfigError(f"{where}: 'cell' must list {nodes} nodes (nodes_per_cell), got {cell!r}")
    for position, node in enumerate(cell):
        expected = position + 2
        if not isinstance(node, Mapping) or node.get("node") != expected:
            raise StudentConfigError(
                f"{where}: cell[{position}] must be {{'node': {expected}, 'inputs': ...}}"
            )
        inputs = node.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise StudentConfigError(f"{where}: cell[{position}].inputs must be a non-empty list")
        for source, op in inputs:
            if not isinstance(source, int) or not 0 <= source < expected:
                raise StudentConfigError(
                    f"{where}: node {expected} takes input from node {source!r}; expected 0..{expected - 1}"
                )
            _operation(op)


def architecture_cost(spec: Mapping[str, Any], vocab_size: int, num_labels: int) -> dict[str, int]:
    """Parameters of the whole student and FLOPs per token of its projection and cells (hand-countable:
    see :func:`op_cost`); the embedding lookup and the classifier (once per sentence) add no per-token
    FLOPs."""
    d, e = spec["hidden_size"], spec["embedding"]["dim"]
    cell_params = cell_flops = 0
    for node in spec["cell"]:
        for _, op in node["inputs"]:
            params, flops = op_cost(op, d)
            cell_params, cell_flops = cell_params + params, cell_flops + flops
    cell_params += 2 * d  # the cell's output LayerNorm
    cells = spec["num_cells"]
    params = vocab_size * e + (e * d + d) + cells * cell_params + (d * num_labels + num_labels)
    return {"parameters": params, "flops_per_token": 2 * e * d + cells * cell_flops}


KEY_ORDER = ("format", "search_space", "num_cells", "hidden_size", "nodes_per_cell", "cell", "embedding",
             "dropout", "cost", "derived_from")  # fmt: skip


def architecture_json(spec: Mapping[str, Any]) -> str:
    """The architecture as readable JSON: known keys first, one line per node (``[source, op]`` pairs)."""
    ordered = {key: spec[key] for key in KEY_ORDER if key in spec}
    ordered.update({key: value for key, value in spec.items() if key not in ordered})
    text = json.dumps(ordered, indent=2)
    # [\n  0,\n  "conv5"\n] -> [0, "conv5"]: an edge per line
    return re.sub(r"\[\s+(\d+),\s+(\"\w+\")\s+\]", r"[\1, \2]", text) + "\n"


def write_architecture(spec: Mapping[str, Any], path: str | Path) -> None:
    """Write :func:`architecture_json` atomically."""
    from metakd.utils import atomic_write_bytes

    atomic_write_bytes(path, architecture_json(spec).encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# the student


class Cell(nn.Module):
    """One cell of a fixed (derived) architecture; see the module docstring."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        width = spec["hidden_size"]
        self.wiring = [[(int(src), str(op)) for src, op in node["inputs"]] for node in spec["cell"]]
        self.ops = nn.ModuleList(
            nn.ModuleList(Operation(op, width) for _, op in inputs) for inputs in self.wiring
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, previous: Tensor, current: Tensor, mask: Tensor) -> Tensor:
        states = [previous, current]
        for inputs, ops in zip(self.wiring, self.ops):
            states.append(sum(op(states[src], mask) for (src, _), op in zip(inputs, ops)))
        output = torch.stack(states[2:]).mean(0)
        return self.norm(output) * mask.unsqueeze(-1).to(output.dtype)


@STUDENTS.register("adabert")
class AdaBERTStudent(StudentModel):
    """A searched AdaBERT architecture (module docstring). Provides ``hidden`` (the projected embeddings,
    then each cell's output) and ``pooled`` (masked mean of the last cell).

    Args:
        architecture: path to the architecture JSON of ``python -m metakd search``, or the mapping.
        num_labels, vocab_size, pad_token_id: from the data.
        pretrained: initialise the embeddings from ``embedding.source`` (False when the weights come from a
            checkpoint, e.g. on export).
    """

    provides = frozenset({"hidden", "pooled"})

    def __init__(
        self,
        architecture: str | dict[str, Any],
        num_labels: int,
        vocab_size: int,
        pad_token_id: int = 0,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        spec = load_architecture(architecture)
        self.spec = spec
        embedding = spec["embedding"]
        self.embeddings = nn.Embedding(vocab_size, embedding["dim"], padding_idx=pad_token_id)
        source = embedding.get("source")
        if pretrained and source:
            from metakd.backbones import pretrained_word_embeddings

            table = pretrained_word_embeddings(source)
            if table.shape[1] != embedding["dim"] or table.shape[0] > vocab_size:
                raise StudentConfigError(
                    f"architecture.embedding: {source!r} has a {tuple(table.shape)} embedding table; "
                    "expected "
                    f"dim {embedding['dim']} and at most the tokenizer's {vocab_size} rows"
                )
            with torch.no_grad():
                self.embeddings.weight[: table.shape[0]] = table
        self.embeddings.weight.requires_grad_(not embedding.get("freeze", True))
        width = spec["hidden_size"]
        self.projection = nn.Linear(embedding["dim"], width)
        self.cells = nn.ModuleList(Cell(spec) for _ in range(spec["num_cells"]))
        self.dropout = nn.Dropout(float(spec.get("dropout", 0.1)))
        self.classifier = nn.Linear(width, num_labels)

    @property
    def num_layers(self) -> int:
        return int(self.spec["num_cells"])

    @property
    def hidden_size(self) -> int:
        return int(self.spec["hidden_size"])

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        mask = attention_mask
        x = self.projection(self.embeddings(input_ids)) * mask.unsqueeze(-1).to(torch.float32)
        states = [x]
        previous, current = x, x
        for cell in self.cells:
            previous, current = current, cell(previous, current, mask)
            states.append(current)
        pooled = masked_mean_pool(current, mask)
        return StudentOutput(
            logits=self.classifier(self.dropout(pooled)),
            hidden_states=tuple(states) if "hidden" in need else None,
            pooled=pooled if "pooled" in need else None,
        )

    def payload(self) -> dict[str, Any]:
        # The resolved architecture travels with the checkpoint/export (not the path it was read from).
        init_args = {**self.init_args, "architecture": self.spec, "pretrained": False}
        return {**super().payload(), "init_args": init_args}
