"""A word-substitution attack with a bounded budget, greedy by word importance (TextFooler, Jin et al.
AAAI 2020, simplified), that every student and teacher can run.

For one example ``(text, gold label y)`` and a classifier ``p(. | text)``:

1. **Clean prediction.** An example the model already gets wrong is *skipped* (it counts as wrong under
   attack, and not in the success rate).
2. **Importance by deletion.** Every word (a run of letters, optionally with an apostrophe) that the model
   sees (within its ``max_length``, when ``predict`` tells: ``predict.visible_chars(text, pair)``) and
   that is not a stop word gets ``I_i = p_y(text) - p_y(text without word i)``; words are visited by
   decreasing ``I_i`` (ties: earlier word first).
3. **Greedy substitution within the budget.** At most ``floor(max_fraction * n_words)`` words (and at most
   ``max_substitutions``) are replaced, ``n_words`` counting the words the model sees. For the next word,
   every candidate of the synonym source (at most ``max_candidates``; the word's capitalisation is kept)
   that the ``constraints`` allow (:mod:`metakd.robustness.constraints`: the same part of speech in the
   sentence, a word-similarity threshold; none by default here, both on in ``python -m metakd
   robustness`` and RoSearch) is scored in one batch. If some candidates flip the prediction away from
   ``y``, the one with the lowest ``p_y`` is taken and the attack *succeeds*; otherwise the candidate
   with the lowest ``p_y`` is kept if it lowers ``p_y``, and the next word is tried. The attack *fails*
   when the words or the budget run out.

The gold label is never changed: the perturbed text is always scored against the original ``y``, and
the substitution sources offer synonyms only (WordNet synonyms; or, where WordNet is missing,
nearest neighbours in the model's input-embedding space with WordNet antonyms and stop words removed).
For a sentence pair (MNLI) only the second text (the hypothesis) is perturbed, as TextAttack does.

Metrics over the attacked examples (TextAttack's definitions): clean accuracy; accuracy under attack =
failed attacks / examples; attack success rate = successes / (successes + failures). Everything is
deterministic given the model, the example subset (drawn with ``seed``) and the source.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from torch import Tensor

from metakd.robustness.constraints import Constraint, Substitution, filter_substitutions

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves isn't wasn't don't doesn't didn't won't can't couldn't shouldn't aren't
    weren't hasn't haven't hadn't it's i'm i've i'd i'll you're you've he's she's we're they're that's
    there's s t""".split()
)
"""Words never substituted (function words and negations: replacing them changes meaning, not wording)."""


class SynonymSource(Protocol):
    """Where substitution candidates come from."""

    name: str

    def candidates(self, word: str) -> list[str]:
        """Lower-case single-word substitutes of the lower-case ``word``, best first."""
        ...


Predict = Callable[[list[str], list[str] | None], Tensor]
"""``(texts, pairs or None) -> (N, C)`` class probabilities."""


@dataclass(frozen=True)
class AttackBudget:
    """How much the attack may change: a fraction of the words, a count, candidates per word."""

    max_fraction: float = 0.2
    max_substitutions: int | None = None
    max_candidates: int = 8

    def __post_init__(self) -> None:
        if not 0.0 < self.max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction}")
        if self.max_substitutions is not None and self.max_substitutions < 1:
            raise ValueError(f"max_substitutions must be >= 1 or None, got {self.max_substitutions}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")

    def allowed(self, num_words: int) -> int:
        """Substitutions allowed in a text of ``num_words`` words."""
        limit = math.floor(self.max_fraction * num_words + 1e-9)
        return limit if self.max_substitutions is None else min(limit, self.max_substitutions)


@dataclass
class AttackResult:
    """The attack on one example."""

    index: int
    label: int
    original: str
    perturbed: str
    status: str  # "skipped" (already wrong), "success" or "failed"
    clean_prediction: int
    final_prediction: int
    num_words: int
    substitutions: list[tuple[int, str, str]] = field(default_factory=list)  # (word index, old, new)
    queries: int = 0
    refused: int = 0  # candidates the constraints refused


def words_of(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the words of ``text``."""
    return [match.span() for match in WORD.finditer(text)]


def _with_case(candidate: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return candidate.upper()
    if original[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate


def render(text: str, spans: list[tuple[int, int]], replaced: dict[int, str | None]) -> str:
    """``text`` with the words at ``replaced``'s indices replaced (None: deleted with one adjacent space)."""
    return render_tracking(text, spans, replaced)[0]


def render_tracking(
    text: str, spans: list[tuple[int, int]], replaced: dict[int, str | None], track: int | None = None
) -> tuple[str, tuple[int, int] | None]:
    """:func:`render`, and the character span of the new word at index ``track`` in the result."""
    out, cursor, length, tracked = [], 0, 0, None
    for index, (start, end) in enumerate(spans):
        if index not in replaced:
            continue
        new = replaced[index]
        if new is None:  # deletion: drop the word and the space before it (or after, at the start)
            if start > cursor and text[start - 1] == " ":
                start -= 1
            elif end < len(text) and text[end] == " ":
                end += 1
        out.append(text[cursor:start])
        length += start - cursor
        if index == track:
            tracked = (length, length + len(new or ""))
        out.append(new or "")
        length += len(new or "")
        cursor = end
    out.append(text[cursor:])
    return "".join(out), tracked


def attack_example(
    predict: Predict,
    text: str,
    label: int,
    source: SynonymSource,
    budget: AttackBudget,
    pair: str | None = None,
    index: int = 0,
    constraints: Sequence[Constraint] = (),
) -> AttackResult:
    """Attack one example (module docstring); with ``pair`` the pair's second text is perturbed; a
    candidate is tried only if every one of ``constraints`` allows it
    (:mod:`metakd.robustness.constraints`)."""
    target = text if pair is None else pair

    def score(variants: list[str]) -> Tensor:
        if pair is None:
            return predict(variants, None)
        return predict([text] * len(variants), variants)

    spans = words_of(target)
    visible = getattr(predict, "visible_chars", None)
    if visible is not None:  # words cut off by the model's max_length can neither matter nor count
        limit = visible(text, pair)
        spans = [span for span in spans if span[1] <= limit]
    probs = score([target])[0]
    queries = 1
    clean = int(probs.argmax())
    result = AttackResult(index, label, target, target, "skipped", clean, clean, len(spans))
    if clean != label:
        result.queries = queries
        return result
    allowed = budget.allowed(len(spans))
    words = [target[s:e] for s, e in spans]
    positions = [i for i, w in enumerate(words) if w.lower() not in STOPWORDS]
    current_p = float(probs[label])
    if positions and allowed > 0:
        deleted = score([render(target, spans, {i: None}) for i in positions])
        queries += len(positions)
        drops = [current_p - float(p) for p in deleted[:, label]]
        order = sorted(range(len(positions)), key=lambda k: (-drops[k], positions[k]))
        positions = [positions[k] for k in order]
    else:
        positions = []
    replaced: dict[int, str | None] = {}
    for position in positions:
        if len(replaced) >= allowed:
            break
        word = words[position]
        options = [c for c in source.candidates(word.lower()) if c != word.lower()][: budget.max_candidates]
        if not options:
            continue
        options = [_with_case(c, word) for c in options]
        if constraints:
            before = render_tracking(target, spans, replaced, None)[0]
            before_span = render_tracking(target, spans, {**replaced, position: word}, position)[1]
            proposed = []
            for c in options:
                new_text, new_span = render_tracking(target, spans, {**replaced, position: c}, position)
                proposed.append(Substitution(before, before_span, word, c, new_text, new_span))
            allowed_options = {s.candidate for s in filter_substitutions(constraints, proposed)}
            result.refused += len(options) - len(allowed_options)
            options = [c for c in options if c in allowed_options]
            if not options:
                continue
        variants = [render(target, spans, {**replaced, position: c}) for c in options]
        scores = score(variants)
        queries += len(variants)
        p_label = scores[:, label]
        predictions = scores.argmax(-1)
        flipped = [k for k in range(len(options)) if int(predictions[k]) != label]
        if flipped:
            best = min(flipped, key=lambda k: (float(p_label[k]), k))
            replaced[position] = options[best]
            result.status = "success"
            result.final_prediction = int(predictions[best])
            break
        best = min(range(len(options)), key=lambda k: (float(p_label[k]), k))
        if float(p_label[best]) < current_p:
            replaced[position] = options[best]
            current_p = float(p_label[best])
    if result.status != "success":
        result.status = "failed"
    result.perturbed = render(target, spans, replaced)
    result.substitutions = [(i, words[i], str(replaced[i])) for i in sorted(replaced)]
    result.queries = queries
    return result


def sample_indices(total: int, max_examples: int | None, seed: int) -> list[int]:
    """A seeded subset of ``range(total)`` (all when ``max_examples`` is None or >= total), in order."""
    if max_examples is None or max_examples >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), max_examples))


def attack_dataset(
    predict: Predict,
    texts: Sequence[str],
    labels: Sequence[int],
    source: SynonymSource,
    budget: AttackBudget,
    pairs: Sequence[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    constraints: Sequence[Constraint] = (),
) -> dict[str, Any]:
    """Attack a seeded subset of the examples; returns the metrics (module docstring) and every result."""
    indices = sample_indices(len(texts), max_examples, seed)
    results = [
        attack_example(
            predict,
            texts[i],
            int(labels[i]),
            source,
            budget,
            None if pairs is None else pairs[i],
            index=i,
            constraints=constraints,
        )
        for i in indices
    ]
    return {**summarise_attack(results), "results": [asdict(r) for r in results]}


def summarise_attack(results: Sequence[AttackResult]) -> dict[str, Any]:
    """Clean accuracy, accuracy under attack, attack success rate, perturbed-word share and queries."""
    n = len(results)
    success = sum(r.status == "success" for r in results)
    failed = sum(r.status == "failed" for r in results)
    attacked = success + failed
    changed = [len(r.substitutions) / r.num_words for r in results if r.status == "success" and r.num_words]
    return {
        "examples": n,
        "clean_accuracy": attacked / n if n else float("nan"),
        "accuracy_under_attack": failed / n if n else float("nan"),
        "attack_success_rate": success / attacked if attacked else float("nan"),
        "successes": success,
        "failures": failed,
        "skipped": n - attacked,
        "mean_perturbed_fraction": sum(changed) / len(changed) if changed else 0.0,
        "mean_queries": sum(r.queries for r in results) / n if n else 0.0,
        "refused_candidates": sum(r.refused for r in results),
    }
