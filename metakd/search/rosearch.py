"""RoSearch as a search (Guo et al. 2021, "RoSearch: Search for Robust Student Architectures When
Distilling Pre-trained Language Models"): an evolutionary search over a DAG cell space whose candidates
are trained by knowledge distillation and ranked by a robustness-, accuracy- and efficiency-aware
fitness.

**Space.** AdaBERT's cells (:mod:`metakd.search.space`, the ``search:`` settings: operations, nodes,
edges per node, 1..``max_cells`` cells of width ``hidden_size``).

**Evolution** (:mod:`metakd.search.evolution`): generation 0 is AdaBERT's derived architecture and
``population - 1`` random ones (``initial: adabert``, the default: AdaBERT's search runs first), or
``population`` random architectures (``initial: random``, as the paper starts; AdaBERT's search is
skipped); ``generations`` generations; each keeps the best ``survivor_fraction`` and refills
with mutated children (crossover of two tournament-selected survivors with ``crossover_probability``).
The fittest architecture ever scored is the result.

**Candidates.** Each is built from scratch (the teacher's frozen WordPiece embeddings), trained
``candidate_steps`` steps of ``(1 - gamma) CE + gamma KD`` on the search's weight split (the logits'
soft cross-entropy to the teacher at ``temperature``; the same split, teacher outputs and batches as
AdaBERT's search), then measured on the search's *architecture split* (never dev or test): clean
accuracy on all its rows and accuracy under the word-substitution attack on ``attack_examples`` of them
(:mod:`metakd.robustness`: WordNet synonyms; a substitute keeps its part of speech and a word
similarity >= ``min_word_similarity``; at most ``max_fraction`` of the words changed). Results are
cached by architecture (:class:`CandidateCache`): an architecture is trained once per seed, candidate
settings, attack settings, teacher and domain, also across runs that share the cache folder.

**Fitness** (every term in [0, 1], larger is better)::

    F(a) = (1 - lambda_e) * ((1 - lambda_r) * acc(a) + lambda_r * acc_attack(a)) + lambda_e * (1 - c(a))

with ``c(a)`` the candidate's FLOPs per token over the costliest architecture of the space. The paper
names the three terms of its environmental fitness; we could not read its exact weighting offline, so
the weights are ours and explicit: ``robustness_weight`` lambda_r = 0.5 (clean accuracy and accuracy
under attack count alike) and ``efficiency_weight`` lambda_e = 0.1. Its retraining uses its own
adversarial distillation; ours retrains the chosen student with the ordinary KD of ``python -m metakd
fit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metakd.errors import StudentConfigError
from metakd.search.evolution import evolve
from metakd.search.space import Space, architecture_key

log = logging.getLogger(__name__)

INITIAL = ("random", "adabert")


@dataclass
class RoSearchSettings:
    """``rosearch:`` of the search config (module docstring). ``cache_dir``: the candidate cache
    (default ``<out>/candidates``)."""

    enabled: bool = False
    initial: str = "adabert"
    population: int = 10
    generations: int = 5
    survivor_fraction: float = 0.5
    crossover_probability: float = 0.5
    candidate_steps: int = 150
    robustness_weight: float = 0.5
    efficiency_weight: float = 0.1
    attack_examples: int = 40
    max_fraction: float = 0.2
    max_candidates: int = 8
    source: str = "wordnet"
    wordnet_dir: str = "/usr/share/wordnet"
    pos_check: bool = True
    min_word_similarity: float | None = 0.2
    cache_dir: str | None = None

    def check(self) -> None:
        if self.initial not in INITIAL:
            raise StudentConfigError(f"rosearch.initial must be one of {list(INITIAL)}, got {self.initial!r}")
        for name in ("population", "generations", "candidate_steps", "attack_examples"):
            if getattr(self, name) < 1:
                raise StudentConfigError(f"rosearch.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("robustness_weight", "efficiency_weight", "crossover_probability", "max_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise StudentConfigError(f"rosearch.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.survivor_fraction <= 1.0:
            raise StudentConfigError(
                f"rosearch.survivor_fraction must be in (0, 1], got {self.survivor_fraction}"
            )

    def attack_settings(self) -> dict[str, Any]:
        keys = (
            "attack_examples",
            "max_fraction",
            "max_candidates",
            "source",
            "pos_check",
            "min_word_similarity",
        )
        return {key: getattr(self, key) for key in keys}


def fitness(
    accuracy: float,
    accuracy_under_attack: float,
    cost_ratio: float,
    robustness_weight: float,
    efficiency_weight: float,
) -> float:
    """RoSearch's fitness with our explicit weights (module docstring)."""
    quality = (1.0 - robustness_weight) * accuracy + robustness_weight * accuracy_under_attack
    return (1.0 - efficiency_weight) * quality + efficiency_weight * (1.0 - cost_ratio)


class CandidateCache:
    """Measured candidates on disk, one JSON per architecture and ``context`` (seed, settings, teacher,
    domain): ``<directory>/<sha256 of both>.json``."""

    def __init__(self, directory: str | Path, context: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.context = json.dumps(context, sort_keys=True, default=str)

    def path(self, architecture: dict[str, Any]) -> Path:
        digest = hashlib.sha256((self.context + architecture_key(architecture)).encode("utf-8")).hexdigest()
        return self.directory / f"{digest[:32]}.json"

    def get(self, architecture: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(architecture)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def put(self, architecture: dict[str, Any], result: dict[str, Any]) -> None:
        from metakd.utils import write_json

        self.directory.mkdir(parents=True, exist_ok=True)
        write_json(self.path(architecture), result)


class CandidateEvaluator:
    """Fitness of an architecture: trained by ``train`` (architecture -> model) and measured by
    ``measure`` (architecture, model -> ``{"accuracy", "accuracy_under_attack", "cost_ratio", ...}``),
    once per architecture: a result in memory or in ``cache`` is reused. ``trained`` counts the
    trainings."""

    def __init__(
        self,
        train: Callable[[dict[str, Any]], Any],
        measure: Callable[[dict[str, Any], Any], dict[str, Any]],
        settings: RoSearchSettings,
        cache: CandidateCache | None = None,
    ) -> None:
        self.train, self.measure, self.settings, self.cache = train, measure, settings, cache
        self.results: dict[str, dict[str, Any]] = {}
        self.trained = 0
        self.reused = 0

    def __call__(self, architecture: dict[str, Any]) -> dict[str, Any]:
        key = architecture_key(architecture)
        if key in self.results:
            return self.results[key]
        cached = self.cache.get(architecture) if self.cache is not None else None
        if cached is not None:
            self.reused += 1
            result = {**cached, "cached": True}
        else:
            start = time.monotonic()
            model = self.train(architecture)
            self.trained += 1
            measured = self.measure(architecture, model)
            result = {
                "num_cells": architecture["num_cells"],
                "cell": architecture["cell"],
                **measured,
                "fitness": fitness(
                    measured["accuracy"],
                    measured["accuracy_under_attack"],
                    measured["cost_ratio"],
                    self.settings.robustness_weight,
                    self.settings.efficiency_weight,
                ),
                "seconds": round(time.monotonic() - start, 1),
            }
            if self.cache is not None:
                self.cache.put(architecture, result)
            result = {**result, "cached": False}
        self.results[key] = result
        return result

    def fitness_of(self, architecture: dict[str, Any]) -> float:
        return float(self(architecture)["fitness"])


def run_rosearch(
    space: Space,
    ro: RoSearchSettings,
    evaluator: CandidateEvaluator,
    seed: int,
    base: dict[str, Any],
    derived: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evolutionary search (module docstring): ``(the fittest architecture, the report)``. ``base``
    holds the architecture keys outside the cell (embedding, dropout); ``derived`` is AdaBERT's
    architecture (generation 0's first member with ``initial: adabert``)."""
    ro.check()
    rng = random.Random(seed)
    initial = [derived] if ro.initial == "adabert" and derived is not None else []
    seen = {architecture_key(a) for a in initial}
    for _ in range(50 * ro.population):
        if len(initial) >= ro.population:
            break
        candidate = space.random_architecture(rng, base)
        if architecture_key(candidate) not in seen:
            seen.add(architecture_key(candidate))
            initial.append(candidate)

    def report_generation(index: int, ranked: list[tuple[str, float]]) -> None:
        log.info("rosearch generation %d: best fitness %.4f of %d", index, ranked[0][1], len(ranked))

    result = evolve(
        initial,
        evaluator.fitness_of,
        space.mutate,
        space.crossover,
        architecture_key,
        ro.generations,
        rng,
        population=ro.population,
        survivor_fraction=ro.survivor_fraction,
        crossover_probability=ro.crossover_probability,
        on_generation=report_generation,
    )
    first_generation = {}
    for index, ranked in enumerate(result.generations):
        for key, _ in ranked:
            first_generation.setdefault(key, index)
    candidates = [{**evaluator.results[key], "generation": first_generation[key]} for key in result.scored]
    report = {
        "settings": asdict(ro),
        "candidates": candidates,
        "generations": [
            {
                "fitness": [round(f, 4) for _, f in ranked],
                "best": ranked[0][1],
                "mean": sum(f for _, f in ranked) / len(ranked),
            }
            for ranked in result.generations
        ],  # fmt: skip
        "trained": evaluator.trained,
        "reused_from_cache": evaluator.reused,
        "best_fitness": result.best_fitness,
    }
    if derived is not None and architecture_key(derived) in evaluator.results:
        ranked_all = sorted(result.scored, key=lambda k: -evaluator.results[k]["fitness"])
        report["derived_rank"] = ranked_all.index(architecture_key(derived))
    chosen = {**base, **result.best}
    return chosen, report


# --------------------------------------------------------------------------------------------------
# the real candidate: KD training and measurement on the search's split


def kd_trainer(
    settings: Any, ro: RoSearchSettings, datamodule: Any, data: Any, embeddings: torch.Tensor, seed: int
):
    """``architecture -> trained AdaBERTStudent``: ``candidate_steps`` of ``(1 - gamma) CE + gamma KD`` on
    the weight split (AdamW, ``weight_lr``), seeded the same way for every candidate."""
    from metakd.distill.losses import soft_cross_entropy
    from metakd.students.adabert import AdaBERTStudent

    tokenizer = datamodule.tokenizer

    def train(architecture: dict[str, Any]) -> Any:
        torch.manual_seed(seed)
        model = AdaBERTStudent(
            architecture,
            datamodule.num_labels,
            len(tokenizer),
            int(tokenizer.pad_token_id or 0),
            pretrained=False,
        )
        with torch.no_grad():
            model.embeddings.weight[: embeddings.shape[0]] = embeddings
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.weight_lr)
        batches = data.batches(data.weight_rows, settings.batch_size, torch.Generator().manual_seed(seed))
        model.train()
        with torch.enable_grad():
            for _ in range(ro.candidate_steps):
                batch, rows = next(batches)
                logits = model(batch["input_ids"], batch["attention_mask"]).logits
                kd = soft_cross_entropy(logits, data.teacher_logits[rows], settings.temperature).mean()
                loss = (1 - settings.gamma) * F.cross_entropy(logits, batch["labels"]) + settings.gamma * kd
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model.eval()

    return train


def attack_measurer(space: Space, ro: RoSearchSettings, datamodule: Any, data: Any, seed: int):
    """``(architecture, model) -> measures``: clean accuracy and accuracy under the constrained attack on
    the architecture split, and the cost ratio."""
    from metakd.inference import TextPredictor
    from metakd.robustness.attack import AttackBudget, attack_dataset
    from metakd.robustness.constraints import make_constraints
    from metakd.robustness.synonyms import make_source
    from metakd.students.adabert import architecture_cost

    records = datamodule.raw_splits()["train"]
    example_ids = [int(data.dataset[i]["example_ids"]) for i in data.arch_rows]
    texts = [records[e]["text"] for e in example_ids]
    has_pairs = records[example_ids[0]].get("text_pair") is not None
    pairs = [records[e]["text_pair"] for e in example_ids] if has_pairs else None
    labels = [records[e]["label"] for e in example_ids]
    budget = AttackBudget(ro.max_fraction, None, ro.max_candidates)
    source = make_source(ro.source, datamodule.backbone, ro.wordnet_dir, 0.5, ro.max_candidates)
    constraints = make_constraints(datamodule.backbone, ro.pos_check, ro.min_word_similarity)
    worst = space.max_flops()

    def measure(architecture: dict[str, Any], model: Any) -> dict[str, Any]:
        predict = TextPredictor(
            lambda b: model(b["input_ids"], b["attention_mask"]).logits,
            datamodule.tokenizer,
            datamodule.max_length,
        )
        with torch.no_grad():
            probs = predict(texts, pairs)
            accuracy = float((probs.argmax(-1) == torch.tensor(labels)).float().mean())
            attacked = attack_dataset(
                predict, texts, labels, source, budget, pairs, ro.attack_examples, seed, constraints
            )
        attacked.pop("results")
        cost = architecture_cost(architecture, len(datamodule.tokenizer), datamodule.num_labels)
        return {
            "accuracy": accuracy,
            "accuracy_under_attack": attacked["accuracy_under_attack"],
            "attack": attacked,
            "cost": cost,
            "cost_ratio": cost["flops_per_token"] / worst,
        }

    return measure


__all__ = [
    "CandidateCache",
    "CandidateEvaluator",
    "RoSearchSettings",
    "attack_measurer",
    "fitness",
    "kd_trainer",
    "run_rosearch",
]
