"""Robustness in the search objective: RoSearch's accuracy-robustness-efficiency fitness (Guo et al.
2021, "RoSearch: Search for Robust Student Architectures When Distilling Pre-trained Language Models")
over AdaBERT's derived architecture and its mutants, a small evolutionary search.

Fitness of a candidate architecture ``a`` (every term in [0, 1], larger is better)::

    F(a) = (1 - lambda_e) * ((1 - lambda_r) * acc(a) + lambda_r * acc_attack(a)) + lambda_e * (1 - c(a))

``acc`` and ``acc_attack`` are the clean accuracy and the accuracy under the word-substitution attack
(:mod:`metakd.robustness.attack`) of the candidate after ``candidate_steps`` steps of KD training on the
weight split, both measured on the search's *architecture split* of the training data (never on dev or
test); ``c(a)`` is its FLOPs per token over the costliest architecture of the search space. RoSearch
ranks candidates by robustness, accuracy and efficiency together; we could not check its exact
weighting offline, so the weights are ours and explicit (``robustness_weight``, ``efficiency_weight``).

Evolution: generation 0 is the derived architecture and ``population - 1`` mutants of it; each next
generation keeps the better half and refills with mutants of the survivors. A mutation (seeded) changes
one kept edge's operation to another non-zero operation of the space, or the number of cells by one.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from metakd.errors import StudentConfigError


@dataclass
class RoSearchSettings:
    """``rosearch:`` of the search config (module docstring)."""

    enabled: bool = False
    population: int = 4
    generations: int = 1
    candidate_steps: int = 150
    robustness_weight: float = 0.5
    efficiency_weight: float = 0.1
    attack_examples: int = 40
    max_fraction: float = 0.2
    max_candidates: int = 8
    source: str = "wordnet"
    wordnet_dir: str = "/usr/share/wordnet"

    def check(self) -> None:
        if self.population < 1 or self.generations < 1 or self.candidate_steps < 1:
            raise StudentConfigError("rosearch: population, generations and candidate_steps must be >= 1")
        for name in ("robustness_weight", "efficiency_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise StudentConfigError(f"rosearch.{name} must be in [0, 1], got {getattr(self, name)}")


def fitness(
    accuracy: float,
    accuracy_under_attack: float,
    cost_ratio: float,
    robustness_weight: float,
    efficiency_weight: float,
) -> float:
    """RoSearch-style fitness (module docstring)."""
    quality = (1.0 - robustness_weight) * accuracy + robustness_weight * accuracy_under_attack
    return (1.0 - efficiency_weight) * quality + efficiency_weight * (1.0 - cost_ratio)


def mutate(
    architecture: dict[str, Any], operations: list[str], max_cells: int, rng: random.Random
) -> dict[str, Any]:
    """A copy of ``architecture`` with one edge's operation or the number of cells changed."""
    child = copy.deepcopy(architecture)
    usable = [op for op in operations if op != "zero"]
    depth_moves = [n for n in (child["num_cells"] - 1, child["num_cells"] + 1) if 1 <= n <= max_cells]
    edges = [(i, j) for i, node in enumerate(child["cell"]) for j in range(len(node["inputs"]))]
    if depth_moves and rng.random() < 0.25:
        child["num_cells"] = rng.choice(depth_moves)
        return child
    i, j = rng.choice(edges)
    current = child["cell"][i]["inputs"][j][1]
    choices = [op for op in usable if op != current]
    if choices:
        child["cell"][i]["inputs"][j][1] = rng.choice(choices)
    return child


def _key(architecture: dict[str, Any]) -> str:
    return json.dumps({"n": architecture["num_cells"], "cell": architecture["cell"]}, sort_keys=True)


def evaluate(
    architecture: dict[str, Any],
    settings: Any,
    ro: RoSearchSettings,
    datamodule: Any,
    data: Any,
    seed: int,
    embeddings: torch.Tensor,
) -> dict[str, Any]:
    """Train a candidate for ``candidate_steps`` (KD on the weight split) and measure it on the
    architecture split: clean accuracy, accuracy under attack, cost ratio, fitness."""
    from metakd.distill.losses import soft_cross_entropy
    from metakd.inference import TextPredictor
    from metakd.robustness.attack import AttackBudget, attack_dataset
    from metakd.robustness.synonyms import make_source
    from metakd.students.adabert import AdaBERTStudent, architecture_cost

    torch.manual_seed(seed)
    tokenizer = datamodule.tokenizer
    model = AdaBERTStudent(
        architecture,
        datamodule.num_labels,
        len(tokenizer),
        int(tokenizer.pad_token_id or 0),
        pretrained=False,
    )
    with torch.no_grad():
        model.embeddings.weight[: embeddings.shape[0]] = embeddings
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.weight_lr)
    batches = data.batches(data.weight_rows, settings.batch_size, torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(ro.candidate_steps):
        batch, rows = next(batches)
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        kd = soft_cross_entropy(logits, data.teacher_logits[rows], settings.temperature).mean()
        loss = (1 - settings.gamma) * F.cross_entropy(logits, batch["labels"]) + settings.gamma * kd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    records = datamodule.raw_splits()["train"]
    rows = data.arch_rows
    example_ids = [int(data.dataset[i]["example_ids"]) for i in rows]
    texts = [records[e]["text"] for e in example_ids]
    pairs = (
        [records[e]["text_pair"] for e in example_ids]
        if records[example_ids[0]].get("text_pair") is not None
        else None
    )
    labels = [records[e]["label"] for e in example_ids]
    classify = TextPredictor(
        lambda b: model(b["input_ids"], b["attention_mask"]).logits, tokenizer, datamodule.max_length
    )
    with torch.no_grad():
        probs = classify(texts, pairs)
    accuracy = float((probs.argmax(-1) == torch.tensor(labels)).float().mean())
    budget = AttackBudget(ro.max_fraction, None, ro.max_candidates)
    source = make_source(ro.source, datamodule.backbone, ro.wordnet_dir, 0.5, ro.max_candidates)
    with torch.no_grad():
        attacked = attack_dataset(classify, texts, labels, source, budget, pairs, ro.attack_examples, seed)
    attacked.pop("results")
    cost = architecture_cost(architecture, len(tokenizer), datamodule.num_labels)
    worst = max_flops(settings, int(embeddings.shape[1]))
    ratio = cost["flops_per_token"] / worst
    return {
        "num_cells": architecture["num_cells"],
        "cell": architecture["cell"],
        "accuracy": accuracy,
        "attack": attacked,
        "cost": cost,
        "cost_ratio": ratio,
        "fitness": fitness(
            accuracy, attacked["accuracy_under_attack"], ratio, ro.robustness_weight, ro.efficiency_weight
        ),
    }


def max_flops(settings: Any, embedding_dim: int) -> float:
    """FLOPs per token of the costliest architecture of the space (every kept edge the costliest op)."""
    from metakd.students.adabert import op_cost

    worst = max(op_cost(op, settings.hidden_size)[1] for op in settings.operations)
    edges = settings.nodes_per_cell * settings.edges_per_node
    return float(2 * embedding_dim * settings.hidden_size + settings.max_cells * edges * worst)


def evolve(
    architecture: dict[str, Any], settings: Any, ro: RoSearchSettings, datamodule: Any, data: Any, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fittest of the derived architecture and its mutants (module docstring), and the report."""
    from metakd.backbones import pretrained_word_embeddings

    ro.check()
    rng = random.Random(seed)
    embeddings = pretrained_word_embeddings(settings.embedding)
    population = [architecture]
    seen = {_key(architecture)}

    def refill(parents: list[dict[str, Any]]) -> None:
        tries = 0
        while len(population) < ro.population and tries < 50 * ro.population:
            tries += 1
            child = mutate(rng.choice(parents), settings.operations, settings.max_cells, rng)
            if _key(child) not in seen:
                seen.add(_key(child))
                population.append(child)

    refill([architecture])
    scored: dict[str, dict[str, Any]] = {}
    generations = []
    for generation in range(ro.generations):
        for candidate in population:
            if _key(candidate) not in scored:
                scored[_key(candidate)] = {
                    **evaluate(candidate, settings, ro, datamodule, data, seed, embeddings),
                    "generation": generation,
                }
        ranked = sorted(population, key=lambda a: -scored[_key(a)]["fitness"])
        generations.append([scored[_key(a)]["fitness"] for a in ranked])
        survivors = ranked[: max(1, len(ranked) // 2)]
        population[:] = list(survivors)
        if generation + 1 < ro.generations:
            refill(survivors)
    best = max(scored.values(), key=lambda r: r["fitness"])
    chosen = copy.deepcopy(architecture)
    chosen["num_cells"], chosen["cell"] = best["num_cells"], best["cell"]
    report = {
        "settings": asdict(ro),
        "candidates": list(scored.values()),
        "generations": generations,
        "derived_rank": sorted(scored.values(), key=lambda r: -r["fitness"]).index(
            scored[_key(architecture)]
        ),
    }
    return chosen, report
