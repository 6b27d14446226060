"""Robustness of any student or teacher under a bounded word-substitution attack (TextFooler-style):
the attack (:mod:`~metakd.robustness.attack`), its offline substitution sources
(:mod:`~metakd.robustness.synonyms`) and ``python -m metakd robustness``
(:mod:`~metakd.robustness.command`)."""

from metakd.robustness.attack import (
    AttackBudget,
    AttackResult,
    attack_dataset,
    attack_example,
    summarise_attack,
)

__all__ = ["AttackBudget", "AttackResult", "attack_dataset", "attack_example", "summarise_attack"]
