"""AdaBERT as published (the ten operations, probes on, the entropy of the operation distribution) and
RoSearch as a search: hand-computed entropy and fitness, the discrete space (random draws, mutation,
crossover, the cache key), the evolutionary loop on a space small enough to enumerate, and the
candidate cache (a second request does not retrain, also in a new run)."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from metakd.search.adabert import SearchSettings
from metakd.search.evolution import evolve
from metakd.search.relaxation import max_entropy, mean_entropy
from metakd.search.rosearch import CandidateCache, CandidateEvaluator, RoSearchSettings, fitness, run_rosearch
from metakd.search.space import Space, architecture_key
from metakd.students.adabert import OPERATIONS, AdaBERTStudent, check_architecture, op_cost

BASE = {"embedding": {"source": None, "dim": 6, "freeze": False}, "dropout": 0.0}


# ---------------------------------------------------------------------------------- AdaBERT


def test_the_papers_ten_operations_with_dilated_convolutions_3_5_7() -> None:
    assert sorted(OPERATIONS) == sorted(
        [
            "conv3",
            "conv5",
            "conv7",
            "dilconv3",
            "dilconv5",
            "dilconv7",
            "maxpool3",
            "avgpool3",
            "identity",
            "zero",
        ]
    )
    # width 4: a dilated conv of width 7 has 7*4*4 + 4 + 2*4 = 124 parameters, 2*7*4*4 = 224 FLOPs/token
    assert op_cost("dilconv7", 4) == (124, 224)
    settings = SearchSettings()
    assert settings.operations == list(OPERATIONS) and settings.probes  # the published search by default


def test_a_dilated_convolution_of_width_7_spans_13_positions_with_dilation_2() -> None:
    torch.manual_seed(0)
    arch = {**BASE, "format": 1, "hidden_size": 16, "num_cells": 1, "nodes_per_cell": 1,
            "cell": [{"node": 2, "inputs": [[0, "dilconv7"]]}]}  # fmt: skip
    model = AdaBERTStudent(arch, num_labels=2, vocab_size=30).eval()
    ids = torch.randint(1, 30, (1, 21))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] % 29) + 1  # a different token at position 0
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = model(ids, mask, need=frozenset({"hidden"})).hidden_states[1][0]
        b = model(changed, mask, need=frozenset({"hidden"})).hidden_states[1][0]
    moved = [t for t in range(21) if not torch.allclose(a[t], b[t])]
    assert moved == [0, 2, 4, 6]  # taps at offsets -6, -4, ..., 6: positions 0, 2, 4, 6 see position 0


def test_entropy_of_the_operation_distribution_by_hand() -> None:
    assert math.isclose(mean_entropy(torch.zeros(5, 10)), math.log(10), rel_tol=1e-12)
    assert math.isclose(max_entropy(10), math.log(10))
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; a one-hot-like row: ~0
    half_quarter = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    assert math.isclose(mean_entropy(half_quarter.unsqueeze(0)), 1.5 * math.log(2), rel_tol=1e-9)
    peaked = torch.tensor([[60.0, 0.0, 0.0]])
    rows = torch.stack([half_quarter, peaked[0]])
    assert math.isclose(mean_entropy(rows), 0.75 * math.log(2), rel_tol=1e-9)


# ---------------------------------------------------------------------------------- RoSearch


def test_fitness_by_hand() -> None:
    # (1 - 0.1) * (0.5 * 0.8 + 0.5 * 0.4) + 0.1 * (1 - 0.25) = 0.9 * 0.6 + 0.075
    assert math.isclose(fitness(0.8, 0.4, 0.25, 0.5, 0.1), 0.615)
    assert math.isclose(fitness(0.8, 0.4, 0.25, 0.0, 0.0), 0.8)  # clean accuracy only
    assert math.isclose(fitness(0.8, 0.4, 0.25, 1.0, 0.0), 0.4)  # robustness only
    assert math.isclose(fitness(0.8, 0.4, 0.25, 0.5, 1.0), 0.75)  # efficiency only


SPACE = Space(("conv3", "maxpool3", "identity", "zero"), nodes_per_cell=2, edges_per_node=2, max_cells=3,
              hidden_size=4, embedding_dim=6)  # fmt: skip


def test_space_draws_mutates_and_crosses_valid_architectures() -> None:
    rng = random.Random(0)
    drawn = [SPACE.random_architecture(rng, BASE) for _ in range(50)]
    for arch in drawn:
        check_architecture(arch)
        assert all(op != "zero" for node in arch["cell"] for _, op in node["inputs"])
        assert [len(node["inputs"]) for node in arch["cell"]] == [2, 2]
    for parent in drawn[:20]:
        child = SPACE.mutate(parent, rng)
        check_architecture(child)
        changes = sum(a != b for a, b in zip(parent["cell"], child["cell"])) + (
            parent["num_cells"] != child["num_cells"]
        )
        assert changes == 1  # one edge's operation or source, or the depth
        mixed = SPACE.crossover(parent, drawn[-1], rng)
        check_architecture(mixed)
        assert all(node in (a, b) for node, a, b in zip(mixed["cell"], parent["cell"], drawn[-1]["cell"]))
    # the key ignores the order of a node's inputs and anything outside the wiring
    arch = drawn[0]
    swapped = {**arch, "cost": {}, "cell": [{**n, "inputs": n["inputs"][::-1]} for n in arch["cell"]]}
    assert architecture_key(swapped) == architecture_key(arch)
    assert architecture_key({**arch, "num_cells": arch["num_cells"] % 3 + 1}) != architecture_key(arch)


def _enumerate(space: Space) -> list[dict[str, Any]]:
    """Every architecture of a space with nodes_per_cell 1 (node 2 takes nodes 0 and 1)."""
    ops = [op for op in space.operations if op != "zero"]
    return [
        {**BASE, **space.skeleton(), "num_cells": n, "cell": [{"node": 2, "inputs": [[0, a], [1, b]]}]}
        for n, a, b in itertools.product(range(1, space.max_cells + 1), ops, ops)
    ]


def test_evolution_finds_the_optimum_of_a_space_it_can_enumerate() -> None:
    space = Space(("conv3", "maxpool3", "avgpool3", "identity", "zero"), 1, 2, 4, 4, 6)
    every = _enumerate(space)
    assert len(every) == 4 * 4 * 4

    def score(arch: dict[str, Any]) -> float:  # a cheap, known fitness: avgpool3 from node 1, 3 cells
        ops = dict((src, op) for src, op in arch["cell"][0]["inputs"])
        return (ops[1] == "avgpool3") + 0.5 * (ops[0] == "identity") - 0.1 * abs(arch["num_cells"] - 3)

    calls: list[str] = []

    def counted(arch: dict[str, Any]) -> float:
        calls.append(architecture_key(arch))
        return score(arch)

    rng = random.Random(1)
    initial = [space.random_architecture(rng, BASE) for _ in range(10)]
    result = evolve(initial, counted, space.mutate, space.crossover, architecture_key, 5, rng, population=10)
    best = max(every, key=score)
    assert (
        architecture_key(result.best) == architecture_key(best) and result.best_fitness == score(best) == 1.5
    )
    assert len(result.generations) == 5 and all(len(g) == 10 for g in result.generations)
    assert len(calls) == len(set(calls)) == len(result.scored)  # each architecture scored once
    bests = [g[0][1] for g in result.generations]
    assert bests == sorted(bests)  # elitism: the best never gets worse
    assert len(calls) < len(every)  # it did not simply try everything


class FakeTrainer:
    """A cheap stand-in for KD training: builds the real (untrained) student and counts the trainings."""

    def __init__(self) -> None:
        self.trained: list[str] = []

    def __call__(self, arch: dict[str, Any]) -> AdaBERTStudent:
        self.trained.append(architecture_key(arch))
        return AdaBERTStudent(arch, num_labels=2, vocab_size=20)


def fake_measure(arch: dict[str, Any], model: AdaBERTStudent) -> dict[str, Any]:
    """Accuracy from the wiring (known values), robustness from the depth, cost from the real count."""
    convs = sum(op == "conv3" for node in arch["cell"] for _, op in node["inputs"])
    parameters = sum(p.numel() for p in model.parameters())
    return {"accuracy": 0.5 + 0.1 * convs, "accuracy_under_attack": 0.1 * arch["num_cells"],
            "cost_ratio": min(1.0, parameters / 5000), "parameters": parameters}  # fmt: skip


def test_the_cache_trains_an_architecture_once(tmp_path: Path) -> None:
    ro = RoSearchSettings(enabled=True)
    arch = SPACE.random_architecture(random.Random(3), BASE)
    trainer = FakeTrainer()
    context = {"seed": 1, "candidate_steps": 150}
    evaluator = CandidateEvaluator(trainer, fake_measure, ro, CandidateCache(tmp_path, context))
    first = evaluator(arch)
    again = evaluator({**arch, "cell": [{**n, "inputs": n["inputs"][::-1]} for n in arch["cell"]]})
    assert len(trainer.trained) == 1 and evaluator.trained == 1 and again == first
    measured = fake_measure(arch, AdaBERTStudent(arch, num_labels=2, vocab_size=20))
    expected = fitness(
        measured["accuracy"], measured["accuracy_under_attack"], measured["cost_ratio"], 0.5, 0.1
    )
    assert math.isclose(first["fitness"], expected)
    # a new run (a new evaluator) with the same cache folder and context reuses the result ...
    later = CandidateEvaluator(FakeTrainer(), fake_measure, ro, CandidateCache(tmp_path, context))
    assert later(arch)["fitness"] == first["fitness"] and later.trained == 0 and later.reused == 1
    # ... another seed or candidate budget trains again
    other = CandidateEvaluator(
        FakeTrainer(), fake_measure, ro, CandidateCache(tmp_path, {**context, "seed": 2})
    )
    other(arch)
    assert other.trained == 1


@pytest.mark.parametrize("initial", ["adabert", "random"])
def test_rosearch_runs_a_population_of_10_for_5_generations(initial: str, tmp_path: Path) -> None:
    ro = RoSearchSettings(enabled=True, initial=initial)
    assert (ro.population, ro.generations) == (10, 5)  # the defaults the issue asks for
    derived = {**BASE, **SPACE.skeleton(), "num_cells": 1,
               "cell": [{"node": 2, "inputs": [[0, "maxpool3"], [1, "identity"]]},
                        {"node": 3, "inputs": [[0, "identity"], [2, "maxpool3"]]}]}  # fmt: skip
    trainer = FakeTrainer()
    evaluator = CandidateEvaluator(trainer, fake_measure, ro, CandidateCache(tmp_path, {"seed": 0}))
    chosen, report = run_rosearch(SPACE, ro, evaluator, seed=0, base=BASE, derived=derived)
    assert len(report["generations"]) == 5 and all(len(g["fitness"]) == 10 for g in report["generations"])
    assert report["trained"] == len(trainer.trained) == len(set(trainer.trained)) == len(report["candidates"])
    assert chosen["embedding"] == BASE["embedding"]
    AdaBERTStudent(chosen, num_labels=2, vocab_size=20)  # a valid student
    best = max(report["candidates"], key=lambda c: c["fitness"])
    assert (chosen["num_cells"], chosen["cell"]) == (best["num_cells"], best["cell"])
    assert report["best_fitness"] == best["fitness"]
    derived_seen = any(c["cell"] == derived["cell"] and c["num_cells"] == 1 for c in report["candidates"])
    assert derived_seen == (initial == "adabert")
    # the same search again: every candidate comes from the cache, none is trained
    again = CandidateEvaluator(FakeTrainer(), fake_measure, ro, CandidateCache(tmp_path, {"seed": 0}))
    chosen_again, report_again = run_rosearch(SPACE, ro, again, seed=0, base=BASE, derived=derived)
    assert report_again["trained"] == 0 and report_again["reused_from_cache"] == report["trained"]
    assert chosen_again == chosen


def test_rosearch_settings_are_checked() -> None:
    from metakd.errors import StudentConfigError

    with pytest.raises(StudentConfigError, match="rosearch.initial must be one of"):
        RoSearchSettings(initial="grid").check()
    with pytest.raises(StudentConfigError, match="rosearch.robustness_weight must be in"):
        RoSearchSettings(robustness_weight=1.5).check()
