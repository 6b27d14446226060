"""The word-substitution attack: its budget, the gold label it never changes, seeded reproducibility, the
substitution sources (a WordNet database written here, and the real one when installed), and
``python -m metakd robustness`` on a Student checkpoint and a MetaTeacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_metakd

from metakd.robustness.attack import AttackBudget, attack_dataset, attack_example, render, words_of
from metakd.robustness.synonyms import EmbeddingNeighbours, TableSynonyms, WordNetError, WordNetSynonyms

POSITIVE = {"good": 3.0, "great": 3.0, "fine": 1.0}


def keyword_model(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
    """A transparent classifier: P(positive) rises with positive keywords (labels: 0 neg, 1 pos)."""
    scores = []
    for text in texts if pairs is None else pairs:
        score = sum(POSITIVE.get(w.lower(), 0.0) for w in text.split()) - 2.0
        scores.append([0.0, score])
    return torch.softmax(torch.tensor(scores), dim=-1)


SYNONYMS = TableSynonyms({"good": ["decent", "fine", "great"], "great": ["big", "large"], "movie": ["film"]})


def test_greedy_attack_follows_importance_and_flips_the_prediction() -> None:
    text = "A good movie with a great cast"
    result = attack_example(keyword_model, text, 1, SYNONYMS, AttackBudget(max_fraction=0.5))
    # importance by deletion: good (3) and great (3) first, the earlier one on a tie; good -> decent
    # (lowest P(pos) without a flip: "decent" 0 < "fine" 1 < "great" 3), then great -> big flips it
    assert result.status == "success" and result.final_prediction == 0
    assert result.substitutions == [(1, "good", "decent"), (5, "great", "big")]
    assert result.perturbed == "A decent movie with a big cast"
    assert result.label == 1  # the gold label is kept: the perturbed text is scored against it


def test_the_attack_respects_its_budget() -> None:
    text = "A good movie with a great cast"  # 7 words
    for fraction, allowed in ((0.2, 1), (0.5, 3), (0.1, 0)):
        budget = AttackBudget(max_fraction=fraction)
        assert budget.allowed(7) == allowed
        result = attack_example(keyword_model, text, 1, SYNONYMS, budget)
        assert len(result.substitutions) <= allowed
        changed = [a != b for a, b in zip(text.split(), result.perturbed.split())]
        assert sum(changed) == len(result.substitutions)
    capped = attack_example(
        keyword_model, text, 1, SYNONYMS, AttackBudget(max_fraction=1.0, max_substitutions=1)
    )
    assert capped.status == "failed" and len(capped.substitutions) == 1
    one = attack_example(keyword_model, text, 1, SYNONYMS, AttackBudget(max_fraction=1.0, max_candidates=1))
    assert all(new in ("decent", "big", "film") for _, _, new in one.substitutions)  # first candidates only
    with pytest.raises(ValueError, match="max_fraction"):
        AttackBudget(max_fraction=0.0)


def test_already_wrong_examples_are_skipped_and_metrics_follow_textattack() -> None:
    texts = ["a good movie with a great cast", "a fine plot", "a dull plot", "good good great"]
    labels = [1, 1, 0, 1]  # "a fine plot" is predicted negative: skipped
    report = attack_dataset(keyword_model, texts, labels, SYNONYMS, AttackBudget(max_fraction=0.5))
    statuses = [r["status"] for r in report["results"]]
    assert statuses == ["success", "skipped", "failed", "failed"]
    assert report["clean_accuracy"] == 3 / 4 and report["accuracy_under_attack"] == 2 / 4
    assert report["attack_success_rate"] == 1 / 3
    assert [r["label"] for r in report["results"]] == labels  # never changed


def test_the_attack_reproduces_on_a_fixed_seed() -> None:
    texts = [f"a good movie number {i} with a great cast" for i in range(20)]
    labels = [1] * 20
    runs = [attack_dataset(keyword_model, texts, labels, SYNONYMS, AttackBudget(0.3), max_examples=6, seed=s)
            for s in (7, 7, 8)]  # fmt: skip
    assert runs[0] == runs[1]
    assert [r["index"] for r in runs[0]["results"]] != [r["index"] for r in runs[2]["results"]]
    assert len(runs[0]["results"]) == 6


def test_pairs_perturb_the_second_text_and_rendering_keeps_the_rest() -> None:
    result = attack_example(
        keyword_model, "premise stays", 1, SYNONYMS, AttackBudget(1.0), pair="good good film"
    )
    assert result.original == "good good film" and result.status == "success"
    text = "Good, the movie's end."
    spans = words_of(text)
    assert [text[s:e] for s, e in spans] == ["Good", "the", "movie's", "end"]
    assert render(text, spans, {0: "Decent", 3: None}) == "Decent, the movie's."


def write_wordnet(directory: Path) -> Path:
    """A two-synset WordNet 3.0 database: good/well (adj, antonym bad), bad/big... in the real format."""
    directory.mkdir()
    header = "  1 This is a test WordNet database.\n"
    data_lines = [
        "{good} 00 a 02 good 0 well 0 001 ! {bad} a 0101 | having desirable qualities  \n",
        "{bad} 00 a 02 bad 0 big(p) 0 001 ! {good} a 0101 | having undesirable qualities  \n",
    ]
    good_offset = len(header.encode())
    bad_offset = good_offset + len(data_lines[0].format(good="00000000", bad="00000000").encode())
    text = header + "".join(
        line.format(good=f"{good_offset:08d}", bad=f"{bad_offset:08d}") for line in data_lines
    )
    (directory / "data.adj").write_text(text)
    (directory / "index.adj").write_text(
        header + f"bad a 1 1 ! 1 0 {bad_offset:08d}  \ngood a 1 1 ! 1 0 {good_offset:08d}  \n"
        f"well a 1 0 1 0 {good_offset:08d}  \n"
    )
    for pos in ("noun", "verb", "adv"):
        (directory / f"index.{pos}").write_text(header)
        (directory / f"data.{pos}").write_text(header)
    return directory


def test_wordnet_reader_on_a_database_written_here(tmp_path: Path) -> None:
    wordnet = WordNetSynonyms(write_wordnet(tmp_path / "dict"))
    assert wordnet.candidates("good") == ["well"]
    assert wordnet.antonyms("good") == {"bad"} and wordnet.antonyms("bad") == {"good"}
    assert wordnet.candidates("bad") == ["big"]  # "(p)" markers are stripped
    with pytest.raises(WordNetError, match="wordnet-base"):
        WordNetSynonyms(tmp_path / "nowhere")


def test_embedding_neighbours_drop_antonyms_and_far_words(tmp_path: Path) -> None:
    vocabulary = ["[PAD]", "good", "bad", "well", "table", "##ing", "the"]
    vectors = torch.tensor(
        [[0, 0, 1.0], [1, 0, 0], [0.99, 0.1, 0], [0.9, 0.3, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]]
    )
    plain = EmbeddingNeighbours(vocabulary, vectors, min_similarity=0.5)
    assert plain.candidates("good") == ["bad", "well"]  # the nearest neighbour is an antonym ...
    filtered = EmbeddingNeighbours(
        vocabulary, vectors, 0.5, antonyms=WordNetSynonyms(write_wordnet(tmp_path / "d"))
    )
    assert filtered.candidates("good") == ["well"]  # ... which the WordNet filter removes
    assert filtered.candidates("unknownword") == []  # (subwords, stop words and far words never appear)


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.adj").is_file(), reason="wordnet-base not installed")
def test_the_installed_wordnet_gives_synonyms_without_antonyms() -> None:
    wordnet = WordNetSynonyms()
    good = wordnet.candidates("good")
    assert {"beneficial", "dear"} & set(good) and "bad" not in good and "evil" not in good
    assert "movie" in wordnet.candidates("film")


def test_robustness_command_on_a_student_and_a_teacher(tmp_path: Path) -> None:
    from helpers import tiny_student, tiny_trainer, train_tiny_teacher
    from test_adabert import tiny_corpus, tiny_data

    from datamodules import JsonlDataModule

    corpus = tiny_corpus(tmp_path)
    data = tiny_data(tmp_path, corpus)
    dm = JsonlDataModule(**{**data["init_args"], "target_domain": "dvd"})
    teacher = train_tiny_teacher(str(tmp_path / "teacher.ckpt"), JsonlDataModule(**data["init_args"]))
    student = tiny_student(teacher, dm, distillation="vanilla")
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump({"data": data}))
    reports = {}
    for name, ckpt in (("student", tmp_path / "student.ckpt"), ("teacher", teacher)):
        out = tmp_path / f"{name}.json"
        options = ["--domain", "dvd", "--split", "train", "--max-examples", "4", "--source", "embedding"]
        result = run_metakd(
            "robustness", "--ckpt", ckpt, "--config", tmp_path / "cell.yaml", *options, "--out", out
        )
        assert "under attack" in result.stdout
        reports[name] = json.loads(out.read_text())
    for report in reports.values():
        assert (
            report["domain"] == "dvd" and report["examples"] == 4 and report["source"]["name"] == "embedding"
        )
        assert report["accuracy_under_attack"] <= report["clean_accuracy"]
        for example in report["results"]:
            assert len(example["substitutions"]) <= int(0.2 * example["num_words"])
    failed = run_metakd("robustness", "--ckpt", teacher, "--config", tmp_path / "cell.yaml", check=False)
    assert failed.returncode != 0 and "--domain" in failed.stderr


def test_only_the_words_the_model_sees_are_attacked_and_counted() -> None:
    from metakd.backbones import load_tokenizer
    from metakd.inference import TextPredictor

    classify = TextPredictor(
        lambda b: torch.zeros(b["input_ids"].shape[0], 2), load_tokenizer("minilm-l6"), 8
    )
    text = "good movie " * 20
    limit = classify.visible_chars(text)
    assert text[:limit].split() == [
        "good",
        "movie",
        "good",
        "movie",
        "good",
        "movie",
    ]  # 8 tokens - [CLS] [SEP]

    def model(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        return keyword_model([" ".join(t.split()[:6]) for t in texts])

    model.visible_chars = classify.visible_chars  # type: ignore[attr-defined]
    result = attack_example(model, text, 1, SYNONYMS, AttackBudget(max_fraction=0.5))
    assert result.num_words == 6 and all(index < 6 for index, _, _ in result.substitutions)
    assert result.perturbed.endswith("good movie " * 17)  # the unseen rest is untouched
