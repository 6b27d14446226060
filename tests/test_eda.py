"""EDA (datamodules/eda.py): each operation on a fixed seed against hand-worked examples, the WordNet
reader on a hand-written database (and on Debian's when installed), the missing-WordNet error and its
fallback, and a real `python -m metakd fit` with EDA on a tiny corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from helpers import run_metakd, tiny_encoder_config, tiny_student_config
from test_cli import TRAINER
from test_datamodules import col, toy_records, write_jsonl

from datamodules import EDA, DataError, JsonlDataModule
from datamodules.eda import random_deletion, random_insertion, random_swap, synonym_replacement
from datamodules.wordnet import WordNet, find_wordnet

SYNONYMS = {"good": ["fine", "great"], "movie": ["film"], "plot": ["game", "secret plan"]}
WORDS = "a good movie with a good plot".split()  # 7 words; "a" and "with" are stop words


def synonyms(word: str) -> list[str]:
    return SYNONYMS.get(word, [])


def test_synonym_replacement_by_hand() -> None:
    # Random(0).shuffle(["good", "movie", "plot"]) -> ["good", "plot", "movie"]; n = 2:
    # good -> choice(["fine", "great"]) = "fine" (both occurrences), plot -> choice(...) = "secret plan".
    out = synonym_replacement(WORDS, 2, synonyms, random.Random(0))
    assert out == ["a", "fine", "movie", "with", "a", "fine", "secret plan"]
    # Random(1).shuffle -> ["movie", "plot", "good"]; n = 1: movie -> "film", then stop.
    assert synonym_replacement(WORDS, 1, synonyms, random.Random(1)) == "a good film with a good plot".split()
    # Punctuation around a token stays; the look-up uses the lower-case core.
    assert synonym_replacement(["(Movie!)"], 1, synonyms, random.Random(0)) == ["(film!)"]
    # Stop words and words without synonyms are never replaced.
    assert synonym_replacement(["the", "a", "cat"], 3, synonyms, random.Random(0)) == ["the", "a", "cat"]


def test_random_insertion_by_hand() -> None:
    # Random(0): randint(0, 6) = 6 picks "plot"; randint(0, 6) = 3 is the position; choice -> "secret plan".
    out = random_insertion(WORDS, 1, synonyms, random.Random(0))
    assert out == ["a", "good", "movie", "secret plan", "with", "a", "good", "plot"]
    # No word has synonyms: 10 tries, then the text is returned unchanged.
    assert random_insertion(["the", "cat"], 1, synonyms, random.Random(0)) == ["the", "cat"]


def test_random_swap_by_hand() -> None:
    # Random(0): randint(0, 6) = 6, then 3: positions 6 and 3 swap ("plot" <-> "with").
    assert random_swap(WORDS, 1, random.Random(0)) == ["a", "good", "movie", "plot", "a", "good", "with"]
    assert random_swap(["alone"], 1, random.Random(0)) == ["alone"]  # no second position after 3 tries


def test_random_deletion_by_hand() -> None:
    # Random(0).uniform draws 0.844, 0.758, 0.421, 0.259, 0.511, 0.405, 0.784: only the 4th (<= 0.3) goes.
    assert random_deletion(WORDS, 0.3, random.Random(0)) == ["a", "good", "movie", "a", "good", "plot"]
    assert random_deletion(["alone"], 0.9, random.Random(0)) == ["alone"]
    # p = 1 deletes everything, then one random word is kept: Random(0) draws 7 uniforms, then randint(0, 6).
    rng = random.Random(0)
    [rng.uniform(0, 1) for _ in WORDS]
    assert random_deletion(WORDS, 1.0, random.Random(0)) == [WORDS[rng.randint(0, 6)]]


# --------------------------------------------------------------------------------------------- WordNet


def write_wordnet(directory: Path) -> Path:
    """A hand-written WordNet database in the wndb(5WN) format: 'book'/'volume' (noun), 'good'/'full'
    (adjective, with a syntactic marker), 'run'/'go_away' (verb, irregular 'ran')."""
    synsets = {
        "noun": [["book", "volume"]],
        "verb": [["run", "go_away"]],
        "adj": [["good(a)", "full"]],
        "adv": [["well"]],
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, sets in synsets.items():
        header = "  1 This is a licence line of the real files\n"
        data, offsets = header, []
        for words in sets:
            offsets.append(len(data.encode()))
            listed = " ".join(f"{w} 0" for w in words)
            data += f"{offsets[-1]:08d} 00 {name[0]} {len(words):02x} {listed} 000 | a gloss\n"
        (directory / f"data.{name}").write_text(data, encoding="utf-8")
        index = header
        for words, offset in zip(sets, offsets):
            for word in sorted(w.split("(")[0] for w in words):
                index += f"{word} {name[0]} 1 0 1 0 {offset:08d}\n"
        (directory / f"index.{name}").write_text(index, encoding="utf-8")
    (directory / "verb.exc").write_text("ran run\n", encoding="utf-8")
    return directory


def test_wordnet_reader_on_a_hand_written_database(tmp_path: Path) -> None:
    wordnet = WordNet(write_wordnet(tmp_path / "wn"))
    assert wordnet.synonyms("book") == ["volume"]
    assert wordnet.synonyms("Books") == ["book", "volume"]  # morphy: books -> book (noun rule s -> "")
    assert wordnet.synonyms("ran") == ["go away", "run"]  # the exception list; "_" becomes a space
    assert wordnet.synonyms("good") == ["full"]  # the adjective marker "(a)" is dropped
    assert wordnet.synonyms("well") == [] and wordnet.synonyms("zebra") == []


def test_debian_wordnet_when_installed() -> None:
    """scripts/setup.sh installs Debian's wordnet-base where apt is available (CI)."""
    try:
        find_wordnet()
    except FileNotFoundError:
        pytest.skip("no WordNet database on this machine (apt-get install wordnet-base)")
    wordnet = WordNet()
    assert "film" in wordnet.synonyms("movie") and "book" in wordnet.synonyms("books")
    assert wordnet.synonyms("the") == []


def test_missing_wordnet_is_an_error_or_the_documented_fallback(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"no WordNet 3.0 database .* wordnet-base.*without_wordnet: swap_delete"
    ):
        EDA(wordnet_dir=str(tmp_path / "nowhere"))
    fallback = EDA(wordnet_dir=str(tmp_path / "nowhere"), without_wordnet="swap_delete")
    assert fallback.operations == ["rs", "rd"] and fallback.fingerprint()["wordnet"] is None
    with pytest.raises(DataError, match="all need synonyms"):
        EDA(operations=["sr"], wordnet_dir=str(tmp_path / "nowhere"), without_wordnet="swap_delete")
    assert EDA(operations=["rs"], wordnet_dir=str(tmp_path / "nowhere")).operations == ["rs"]  # no look-up
    for bad, message in (({"alpha": 0}, "alpha must be in"), ({"operations": ["xx"]}, "operations must be")):
        with pytest.raises(DataError, match=message):
            EDA(wordnet_dir=str(tmp_path / "nowhere"), without_wordnet="swap_delete", **bad)


def test_eda_versions_per_example(tmp_path: Path) -> None:
    eda = EDA(alpha=0.2, wordnet_dir=str(write_wordnet(tmp_path / "wn")))
    record = {"text": "the good book", "text_pair": "a good run"}
    versions = eda.augment(record, 4, random.Random(5))
    assert len(versions) == 4 and all(set(v) == {"text", "text_pair", "operation"} for v in versions)
    for v in versions:  # each version names its operation (L2A's edit type): a swap permutes the words
        assert v["operation"] in ("sr", "ri", "rs", "rd")
        if v["operation"] == "rs":
            assert sorted(v["text"].split()) == sorted(record["text"].split())
    # 4 // 4 + 1 = 2 texts per operation were made, shuffled, 4 kept: the same draws give the same texts
    assert versions == eda.augment(record, 4, random.Random(5))
    assert eda.augment(record, 0, random.Random(5)) == []
    words = {w for v in versions for w in v["text"].split()}
    assert words <= {"the", "good", "book", "full", "volume"}


def test_eda_in_the_datamodule(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "c.jsonl", toy_records(10))
    augment = {"class_path": "eda", "init_args": {"wordnet_dir": str(write_wordnet(tmp_path / "wn"))},
               "per_example": 2}  # fmt: skip
    dm = JsonlDataModule(train_file=train, max_length=24, target_domain="beta", train_fraction=0.5,
                         augment=augment, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm.setup()
    loaded = [i for i in col(dm.train_dataset, "example_ids") if i < dm.num_pooled_train]
    assert 0 < len(dm.augmented_train) <= 2 * len(loaded)  # versions equal to their source are dropped
    raw = dm.raw_splits()["train"]
    for row in dm.augmented_train:
        source = raw[row["source_example_id"]]
        assert row["label"] == source["label"] and row["domain"] == "beta" and row["text"] != source["text"]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_fit_with_eda(tmp_path: Path) -> None:
    """`python -m metakd fit` of a vanilla-KD student with EDA on a tiny corpus; the teacher is a tiny HF
    classifier built here, and its cached logits cover the augmented examples too."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    lines = []
    for domain in ("books", "dvd"):
        for i in range(24):
            label = "pos" if i % 2 else "neg"
            word = ["good", "great", "fine"][i % 3] if label == "pos" else ["bad", "poor", "awful"][i % 3]
            lines.append(
                json.dumps({"text": f"the {domain} is a {word} book", "label": label, "domain": domain})
            )
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = BertConfig(**tiny_encoder_config(), num_labels=2, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1})  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "teacher")
    student = {
        "seed_everything": 1,
        "trainer": {**TRAINER, "default_root_dir": str(tmp_path / "run")},
        "model": {
            "class_path": "metakd.Student",
            "init_args": {
                "teacher_ckpt": str(tmp_path / "teacher"),
                "distillation": "vanilla",
                "student_config": tiny_student_config(),
                "cache_dir": str(tmp_path / "logits"),
            },
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {
                "train_file": str(tmp_path / "corpus.jsonl"),
                "backbone": "minilm-l6",
                "max_length": 24,
                "batch_size": 8,
                "target_domain": "books",
                "cache_dir": str(tmp_path / "cache"),
                "augment": {
                    "class_path": "eda",
                    "per_example": 3,
                    "init_args": {"wordnet_dir": str(write_wordnet(tmp_path / "wn"))},
                },
            },
        },
    }
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student), encoding="utf-8")
    run_metakd("fit", "--config", str(tmp_path / "student.yaml"), cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    [logits_file] = (tmp_path / "logits").glob("teacher-logits-*.pt")
    cached = torch.load(logits_file, weights_only=True)
    [augmented] = (tmp_path / "cache").glob("*/augmented.jsonl")
    rows = [json.loads(line) for line in augmented.read_text().splitlines()]
    assert rows and bool(cached["filled"][[r["example_id"] for r in rows]].all())
