"""A seeded evolutionary search over any genomes, the loop under RoSearch (:mod:`metakd.search.rosearch`).

Generation 0 is the given initial population. Every generation scores its members (a genome whose
``key`` was scored before is not scored again: its fitness is remembered), ranks them by fitness (ties:
the earlier-scored first), and, unless it is the last, keeps the best ``ceil(survivor_fraction * P)``
(elitism) and refills the population to ``P`` with children: with probability ``crossover_probability``
a child is the crossover of two survivors drawn by a binary tournament, else a copy of one; then it is
mutated once. A child whose key is already in the new population is drawn again (up to ``max_tries``
times per slot; a search space too small to fill the population leaves it smaller). The result is the
fittest genome ever scored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Genome = TypeVar("Genome")


@dataclass
class Evolution(Generic[Genome]):
    """The outcome: the fittest genome, its fitness, and per generation the members' keys and fitness
    (ranked), plus every scored key in scoring order."""

    best: Genome
    best_fitness: float
    generations: list[list[tuple[str, float]]] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)


def evolve(
    initial: list[Genome],
    score: Callable[[Genome], float],
    mutate: Callable[[Genome, random.Random], Genome],
    crossover: Callable[[Genome, Genome, random.Random], Genome],
    key: Callable[[Genome], str],
    generations: int,
    rng: random.Random,
    population: int | None = None,
    survivor_fraction: float = 0.5,
    crossover_probability: float = 0.5,
    max_tries: int = 50,
    on_generation: Callable[[int, list[tuple[str, float]]], Any] | None = None,
) -> Evolution[Genome]:
    """Evolve ``initial`` for ``generations`` (module docstring); ``population`` defaults to
    ``len(initial)``. ``on_generation(index, ranked (key, fitness))`` is called after each generation."""
    if not initial:
        raise ValueError("evolve needs at least one initial genome")
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    size = population or len(initial)
    fitness: dict[str, float] = {}
    order: list[str] = []
    genomes: dict[str, Genome] = {}
    members = _unique(initial, key)[:size]
    history: list[list[tuple[str, float]]] = []
    for generation in range(generations):
        for genome in members:
            name = key(genome)
            if name not in fitness:
                fitness[name] = float(score(genome))
                order.append(name)
                genomes[name] = genome
        rank = {name: position for position, name in enumerate(order)}
        members.sort(key=lambda g: (-fitness[key(g)], rank[key(g)]))
        ranked = [(key(g), fitness[key(g)]) for g in members]
        history.append(ranked)
        if on_generation is not None:
            on_generation(generation, ranked)
        if generation + 1 == generations:
            break
        survivors = members[: max(1, math.ceil(survivor_fraction * len(members)))]
        members = list(survivors)
        taken = {key(g) for g in members}
        while len(members) < size:
            child = None
            for _ in range(max_tries):
                first = _tournament(survivors, fitness, key, rng)
                if len(survivors) > 1 and rng.random() < crossover_probability:
                    second = _tournament(survivors, fitness, key, rng)
                    candidate = mutate(crossover(first, second, rng), rng)
                else:
                    candidate = mutate(first, rng)
                if key(candidate) not in taken:
                    child = candidate
                    break
            if child is None:
                break  # the space has no new genome near the survivors
            members.append(child)
            taken.add(key(child))
    best_key = min(order, key=lambda name: (-fitness[name], order.index(name)))
    return Evolution(genomes[best_key], fitness[best_key], history, order)


def _unique(genomes: list[Genome], key: Callable[[Genome], str]) -> list[Genome]:
    seen: set[str] = set()
    out = []
    for genome in genomes:
        if key(genome) not in seen:
            seen.add(key(genome))
            out.append(genome)
    return out


def _tournament(
    pool: list[Genome], fitness: dict[str, float], key: Callable[[Genome], str], rng: random.Random
) -> Genome:
    """The fitter of two members drawn at random (binary tournament selection)."""
    a, b = rng.choice(pool), rng.choice(pool)
    return a if fitness[key(a)] >= fitness[key(b)] else b


__all__ = ["Evolution", "evolve"]
