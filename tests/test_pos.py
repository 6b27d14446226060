"""The offline part-of-speech tagger (datamodules/pos.py): context decides the tag, character offsets
line up with the text, spans of another tokenisation map to their tokens, batches equal single calls,
and a missing model is a clear error."""

from __future__ import annotations

import pytest

from datamodules.pos import PosTagger, PosTaggerError, TaggedToken, find_model, spans_tags


@pytest.fixture(scope="module")
def tagger() -> PosTagger:
    return PosTagger()


def test_context_decides_the_tag(tagger: PosTagger) -> None:
    tokens = tagger.tag("They book a room and read the book.")
    assert [(t.text, t.pos) for t in tokens if t.text == "book"] == [("book", "VERB"), ("book", "NOUN")]
    saw = [t for t in tagger.tag("I saw the saw on the table.") if t.text == "saw"]
    assert [(t.pos, t.tag) for t in saw] == [("VERB", "VBD"), ("NOUN", "NN")]


def test_offsets_are_the_characters_of_the_text(tagger: PosTagger) -> None:
    text = "The  quick movie was terribly boring, don't watch it!"
    tokens = tagger.tag(text)
    assert all(text[t.start : t.end] == t.text for t in tokens)
    assert [t.pos for t in tokens if t.text in ("quick", "terribly", "movie")] == ["ADJ", "NOUN", "ADV"]


def test_spans_of_another_tokenisation_take_the_first_overlapping_token(tagger: PosTagger) -> None:
    text = "don't watch it"
    # the attack's words: "don't" (spaCy splits it into do + n't), "watch", "it"
    assert tagger.span_tags(text, [(0, 5), (6, 11), (12, 14)]) == ["AUX", "VERB", "PRON"]
    tokens = [TaggedToken("a", 0, 1, "DET", "DT"), TaggedToken("cat", 2, 5, "NOUN", "NN")]
    assert spans_tags(tokens, [(2, 5), (3, 4), (0, 1), (6, 9)]) == ["NOUN", "NOUN", "DET", "X"]


def test_a_batch_is_the_single_calls(tagger: PosTagger) -> None:
    texts = ["a fine book", "It broke after two days.", ""]
    assert tagger.tag_many(texts) == [tagger.tag(t) for t in texts]
    assert tagger.tag_many([]) == []


def test_a_missing_model_is_a_clear_error() -> None:
    with pytest.raises(PosTaggerError, match="no spaCy English model installed .*metakd\\[pos\\]"):
        find_model(("no_such_spacy_model_xyz",))
    with pytest.raises(PosTaggerError, match="cannot load the spaCy model 'json'"):
        PosTagger("json")  # an importable module that is no spaCy pipeline
