"""``embedding_init: model2vec``: static embeddings distilled from a (tiny, local) backbone with model2vec,
matched to the data's token ids by string, cached on disk and never recomputed by a rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("model2vec")

from metakd.students import StudentContext, build_student, rebuild_student  # noqa: E402


def textcnn(tokenizer_dir: str, backbone: str, **overrides: Any) -> Any:
    from metakd.backbones import load_tokenizer

    vocab_size = len(load_tokenizer(tokenizer_dir))
    spec = {"class_path": "textcnn", "init_args": {"embedding_init": "model2vec", "backbone": backbone,
            "embedding_dim": 4, "filters": 3, "widths": [2], "mlp_size": 0, **overrides}}  # fmt: skip
    return build_student(spec, StudentContext(2, ("neg", "pos"), tokenizer_dir, vocab_size, 0))


def test_model2vec_rows_by_token_cached_and_not_recomputed(
    tiny_tokenizer_dir: str, tiny_backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model2vec.distill import distill

    from metakd.backbones import load_tokenizer

    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    model = textcnn(tiny_tokenizer_dir, tiny_backbone)
    table = model.embeddings.weight.detach()
    vocabulary = load_tokenizer(tiny_tokenizer_dir).get_vocab()
    assert table.shape == (len(vocabulary), 4) and model.embeddings.weight.requires_grad
    # model2vec's own distillation of the same backbone, row by row through its own vocabulary
    static = distill(tiny_backbone, pca_dims=4, quantize_to="float32")
    ids = static.tokenizer.get_vocab()
    for token, data_id in vocabulary.items():
        expected = torch.as_tensor(static.embedding[ids[token]]) if token in ids else torch.zeros(4)
        torch.testing.assert_close(table[data_id], expected, atol=1e-5, rtol=1e-4)
    assert any(token in ids for token in ("good", "book")) and table.abs().sum() > 0
    cached = [p for p in (tmp_path / "cache" / "model2vec").iterdir() if (p / "config.json").is_file()]
    assert len(cached) == 1

    # A second student reads the cache: model2vec is not run again. Another width is another entry.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("model2vec ran again")

    monkeypatch.setattr("model2vec.distill.distill", refuse)
    again = textcnn(tiny_tokenizer_dir, tiny_backbone)
    torch.testing.assert_close(again.embeddings.weight.detach(), table)
    with pytest.raises(AssertionError, match="model2vec ran again"):
        textcnn(tiny_tokenizer_dir, tiny_backbone, embedding_dim=3)
    # An export's rebuild never distils: the table comes from the state dict.
    rebuilt = rebuild_student(model.payload())
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.embeddings.weight.detach(), table)


def test_model2vec_needs_a_backbone_with_the_datas_tokenizer(tiny_backbone: str, tmp_path: Path) -> None:
    from metakd.errors import StudentConfigError

    with pytest.raises(StudentConfigError, match="tokenizer mismatch"):
        textcnn("minilm-l6", tiny_backbone)


def test_model2vec_peer_script_trains_scores_and_writes_pipeline_shaped_results(
    tiny_backbone: str, tmp_path: Path
) -> None:
    import gzip
    import json

    import yaml
    from helpers import REPO, SENTIMENT_WORDS, run_python, write_jsonl, write_tiny_corpus

    corpus = write_tiny_corpus(tmp_path / "corpus.jsonl", per_domain=30)
    # a further labelled test set, domains interleaved (dvd, books, ...): books' example ids are 1, 3, ..., 11
    labels = ["neg", "pos"] * 3
    large = [
        {"text": f"large {d} {i} is {SENTIMENT_WORDS[labels[i]][i % 4]}", "label": labels[i], "domain": d}
        for i in range(6)
        for d in ("dvd", "books")
    ]
    write_jsonl(tmp_path / "large.jsonl", large)
    config = {"name": "tiny", "domains": ["books", "dvd"], "seeds": [1],  # test_large: scored by default
              "data": {"class_path": "datamodules.JsonlDataModule",
                       "init_args": {"train_file": str(corpus), "backbone": "minilm-l6",
                                     "extra_test_files": {"test_large": str(tmp_path / "large.jsonl")},
                                     "cache_dir": str(tmp_path / "cache")}}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_python(REPO / "benchmarks" / "model2vec_peer.py", "--config", str(tmp_path / "config.yaml"),
               "--domains", "books", "--backbone", tiny_backbone, "--pca-dims", "4", "--max-epochs", "2",
               "--out", str(tmp_path / "out"), extra_env={"METAKD_CACHE": str(tmp_path / "m2v")})  # fmt: skip
    report = json.loads((tmp_path / "out" / "tiny_model2vec_peer.json").read_text(encoding="utf-8"))
    books = report["main"]["student_model2vec_peer"]["books"]
    assert books["n"] == 1 and report["main"]["student_model2vec_peer"]["average"]["mean"] == books["mean"]

    def predictions(name: str) -> list[dict[str, Any]]:
        with gzip.open(tmp_path / "out" / name, "rt") as handle:
            return [json.loads(line) for line in handle]

    rows = predictions("tiny_model2vec_peer_predictions.jsonl.gz")
    from datamodules import JsonlDataModule

    test = JsonlDataModule(train_file=str(corpus), target_domain="books").loaded_records("test")
    assert sorted(r["example_id"] for r in rows) == sorted(r["example_id"] for r in test)
    assert {r["cell"] for r in rows} == {"student/model2vec_peer/books"} and all(
        len(r["logits"]) == 2 for r in rows
    )
    assert books["mean"] == pytest.approx(sum(r["pred"] == r["label"] for r in rows) / len(rows))
    metrics = report["metrics"]
    assert metrics["texts_per_second"]["books"]["mean"] > 0 and metrics["size_mb"]["books"]["mean"] > 0

    # the same classifier scored on the large test set, with the ids and labels the pipeline's cells use
    assert report["test_sets"] == ["test", "test_large"]
    assert report["predictions"] == {
        "test": "tiny_model2vec_peer_predictions.jsonl.gz",
        "test_large": "tiny_model2vec_peer_predictions_test_large.jsonl.gz",
    }
    large_rows = predictions("tiny_model2vec_peer_predictions_test_large.jsonl.gz")
    assert [r["example_id"] for r in large_rows] == [1, 3, 5, 7, 9, 11]
    assert [r["label"] for r in large_rows] == [0, 1, 0, 1, 0, 1]  # neg, pos: the sorted label names
    assert {r["cell"] for r in large_rows} == {"student/model2vec_peer/books"}
    large_books = report["by_test_set"]["test_large"]["main"]["student_model2vec_peer"]["books"]
    assert large_books == metrics["test_large"]["books"] and large_books["n"] == 1
    assert large_books["mean"] == pytest.approx(sum(r["pred"] == r["label"] for r in large_rows) / 6)
    assert report["by_test_set"]["test"]["main"] == report["main"]
    assert "test accuracy" in result.stdout and "test_large accuracy" in result.stdout
