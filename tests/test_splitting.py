"""The splitting part of the datamodules (datamodules/splitting.py): the split rules, the record checks,
the split fingerprint, the loaded positions and the domain choice, on records built here."""

from __future__ import annotations

import pytest

from datamodules.errors import DataError
from datamodules.splitting import (
    check_records,
    chosen_domains,
    domain_counts,
    selected_positions,
    split_fingerprint,
    stratified_split,
    stratified_subset,
)

HEADER = {"corpus": "toy", "rule": "given", "domains": ["a", "b"], "labels": ["neg", "pos"]}


def records(domain: str, labels: list[int], pair: bool = False) -> list[dict]:
    out = [{"text": f"{domain} text {i}", "label": label, "domain": domain} for i, label in enumerate(labels)]
    for r in out if pair else []:
        r["text_pair"] = r["text"] + " pair"
    return out


def pooled(pair: bool = False) -> dict[str, list[dict]]:
    return {
        "train": records("a", [0, 1, 0, 1], pair) + records("b", [1, 1, 0], pair),
        "val": records("a", [0, 1], pair),
        "test": records("b", [1, 0], pair),
    }


def test_stratified_subset_keeps_the_rounded_share_of_every_label() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2]
    kept = stratified_subset(labels, 0.5, seed=3)
    # round(0.5 * 4) = 2 zeros, round(0.5 * 2) = 1 one, max(1, round(0.5 * 1)) = 1 two
    assert sorted(labels[i] for i in kept) == [0, 0, 1, 2] and kept == sorted(kept)
    assert stratified_subset(labels, 0.5, seed=3) == kept
    assert {tuple(stratified_subset(labels, 0.5, seed=s)) for s in range(20)} != {tuple(kept)}
    assert stratified_subset(labels, 1.0, seed=3) == list(range(7))


def test_stratified_split_sizes_and_strata() -> None:
    labels = [0] * 10 + [1] * 10
    rest, test = stratified_split(labels, 0.1, seed=11, what="toy")
    assert len(test) == 2 and sorted(labels[i] for i in test) == [0, 1]  # ceil(0.1 * 20), one per label
    assert sorted(rest + test) == list(range(20))
    assert stratified_split(labels, 0.1, seed=11, what="toy") == (rest, test)
    with pytest.raises(DataError, match=r"toy: cannot split off a stratified 10%: it has 3 examples"):
        stratified_split([0, 0, 1], 0.1, seed=11, what="toy")


def test_selected_positions_take_the_target_domain_then_the_fraction() -> None:
    train = pooled()["train"]
    assert selected_positions(train, None) == list(range(7))
    assert selected_positions(train, "b") == [4, 5, 6]
    half = selected_positions(train, "a", train_fraction=0.5, seed=1)
    assert len(half) == 2 and {train[i]["label"] for i in half} == {0, 1} and set(half) <= {0, 1, 2, 3}
    assert domain_counts([train[i] for i in half], ["a", "b", "c"]) == {"a": 2, "b": 0, "c": 0}


def test_split_fingerprint_follows_every_field_and_the_header() -> None:
    base = split_fingerprint(pooled(), HEADER)
    assert len(base) == 16 and split_fingerprint(pooled(), dict(HEADER)) == base
    changed = []
    for field, value in (("text", "other"), ("label", 0), ("domain", "a"), ("text_pair", "p")):
        data = pooled()
        data["test"][0][field] = value
        changed.append(split_fingerprint(data, HEADER))
    moved = pooled()
    moved["val"].append(moved["test"].pop())  # the same records in another split
    changed.append(split_fingerprint(moved, HEADER))
    changed.append(split_fingerprint(pooled(), {**HEADER, "rule": "seed=2"}))
    assert len(set(changed)) == len(changed) and base not in changed
    extra = pooled()
    extra["train"][0]["id"] = "r17"  # fields besides text, pair, label and domain do not count
    assert split_fingerprint(extra, HEADER) == base


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["val"][1].update(text="  "), "toy val example 1: 'text' is empty ('  ')"),
        (
            lambda p: p["train"][2].update(label=2),
            "toy train example 2: label 2 is not an index",
        ),
        (lambda p: p["train"][3].update(label=True), "toy train example 3: label True is not an index"),
        (
            lambda p: p["test"][1].update(text_pair="x"),
            "toy test example 1: some examples have a",
        ),
        (lambda p: p["train"].pop(), None),  # fine: b keeps training examples
        (lambda p: [p["train"].pop() for _ in range(3)], "toy: domain 'b' has no training examples"),
        (lambda p: p["test"].clear(), "toy: the test split has no examples"),
    ],
)
def test_check_records_names_the_example_and_the_fault(edit, message) -> None:
    data = pooled()
    edit(data)
    if message is None:
        check_records(data, "toy", ["neg", "pos"], ["a", "b"])
        return
    with pytest.raises(DataError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_records(data, "toy", ["neg", "pos"], ["a", "b"])
    check_records(pooled(pair=True), "toy", ["neg", "pos"], ["a", "b"])  # pairs throughout are fine


def test_chosen_domains_keep_the_corpus_order() -> None:
    corpus = ["books", "dvd", "kitchen"]
    assert chosen_domains("c", corpus, None, None) == corpus
    assert chosen_domains("c", corpus, ["kitchen", "books"], "books") == ["books", "kitchen"]
    assert chosen_domains("c", corpus, "dvd", None) == ["dvd"]
    with pytest.raises(DataError, match=r"^c: no examples for domain\(s\) \['toys'\]; the corpus's domains"):
        chosen_domains("c", corpus, ["toys"], None)
    with pytest.raises(DataError, match="^c: domains must not be empty"):
        chosen_domains("c", corpus, [], None)
    with pytest.raises(
        DataError, match=r"unknown target_domain 'dvd' \(it is in the corpus but not in `domains`\)"
    ):
        chosen_domains("c", corpus, ["books"], "dvd")
