"""The attack's constraints: a substitute keeps the word's part of speech in its sentence, passes a
word-similarity threshold, and the budget caps the changed words; the attack refuses what they refuse."""

from __future__ import annotations

import math

import pytest
import torch

from metakd.robustness.attack import AttackBudget, attack_example, render_tracking, words_of
from metakd.robustness.constraints import PartOfSpeech, Substitution, WordSimilarity, filter_substitutions
from metakd.robustness.synonyms import TableSynonyms


def substitutions(text: str, position: int, candidates: list[str]) -> list[Substitution]:
    spans = words_of(text)
    word = text[slice(*spans[position])]
    out = []
    for candidate in candidates:
        new_text, new_span = render_tracking(text, spans, {position: candidate}, position)
        out.append(Substitution(text, spans[position], word, candidate, new_text, new_span))
    return out


def test_render_tracks_the_new_words_span() -> None:
    text = "it was a good movie"
    spans = words_of(text)
    new_text, span = render_tracking(text, spans, {0: "this", 3: "wonderful"}, 3)
    assert new_text == "this was a wonderful movie" and new_text[slice(*span)] == "wonderful"
    deleted, _ = render_tracking(text, spans, {1: None}, None)
    assert deleted == "it a good movie"


@pytest.fixture(scope="module")
def pos() -> PartOfSpeech:
    return PartOfSpeech()


def test_a_substitute_of_another_part_of_speech_is_refused(pos: PartOfSpeech) -> None:
    text = "The movie was good and the plot moved fast."
    # "good" is an adjective here: "fine" (adjective) passes, "goodness" (noun) does not
    verdicts = pos.allows(substitutions(text, 3, ["fine", "goodness", "nice"]))
    assert verdicts == [True, False, True]
    # "fast" is an adverb here; WordNet also offers its noun sense "fasting"
    assert pos.allows(substitutions(text, 8, ["quickly", "fasting"])) == [True, False]


def test_word_similarity_threshold_by_hand() -> None:
    vectors = {
        "good": torch.tensor([1.0, 0.0]),
        "fine": torch.tensor([0.8, 0.6]),
        "bad": torch.tensor([0.0, 1.0]),
    }
    similarity = WordSimilarity(vectors.get, min_similarity=0.5)
    assert math.isclose(similarity.similarity("Good", "fine"), 0.8, rel_tol=1e-6)  # cos = 0.8 * 1 / (1 * 1)
    subs = substitutions("a good book", 1, ["fine", "bad", "unknown"])
    assert similarity.allows(subs) == [True, False, False]  # 0.8 >= 0.5; 0 < 0.5; no vector: refused
    assert [s.candidate for s in filter_substitutions([similarity], subs)] == ["fine"]


def test_the_attack_refuses_what_the_constraints_refuse(pos: PartOfSpeech) -> None:
    text = "The movie was good"

    def predict(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        # positive unless the text contains "goodness" (a noun in an adjective's place)
        return torch.tensor([[0.9, 0.1] if "goodness" in t else [0.1, 0.9] for t in texts])

    source = TableSynonyms({"good": ["goodness"], "movie": ["film"]})
    budget = AttackBudget(max_fraction=1.0)
    free = attack_example(predict, text, 1, source, budget)
    assert free.status == "success" and free.perturbed == "The movie was goodness"
    constrained = attack_example(predict, text, 1, source, budget, constraints=[pos])
    assert constrained.status == "failed" and constrained.perturbed == text and constrained.refused == 1


def test_the_budget_caps_the_changed_words() -> None:
    text = "good good good good good good good good good good"
    calls = []

    def predict(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        calls.append(len(texts))
        return torch.tensor([[0.0 + 0.05 * t.count("fine"), 1.0 - 0.05 * t.count("fine")] for t in texts])

    result = attack_example(
        predict, text, 1, TableSynonyms({"good": ["fine"]}), AttackBudget(max_fraction=0.3)
    )
    assert result.status == "failed" and len(result.substitutions) == 3  # floor(0.3 * 10)
