"""Every cache is invalidated when one of its inputs changes and reused when none does.

Three caches, one test per key:

* tokenised data (``datamodules/base.py``): ``cache_dir/<data_fingerprint>/<split>.arrow``;
* transferability scores (``metakd/prototypes.py``): ``<cache_dir>/<key>.pt``;
* teacher outputs of the ``Student`` (``metakd/student.py``): ``<cache_dir>/teacher-logits-<key>.pt``.

A recompute is proven by counting calls (the tokenizer map function, the encoder forward, the teacher
forward) and by a new cache file; a reuse by zero calls and no new file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    ToyMultiDomainDataModule,
    tiny_encoder_config,
    tiny_student,
    tiny_trainer,
    train_tiny_teacher,
)

import metakd.prototypes as P
from datamodules import JsonlDataModule
from datamodules.base import MultiDomainDataModule


def corpus_records() -> list[dict[str, Any]]:
    """2 domains x 2 labels x 8 examples, deterministic text of varying length."""
    records = []
    for domain in ("books", "dvd"):
        for label in ("neg", "pos"):
            for i in range(8):
                words = " ".join(["good" if label == "pos" else "bad"] * (1 + i % 5))
                records.append({"text": f"the {domain} is {words} {i}", "label": label, "domain": domain})
    return records


def write_corpus(path: Path, records: list[dict[str, Any]] | None = None) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records or corpus_records()), encoding="utf-8")
    return str(path)


def edit_one_line(path: str) -> None:
    """Change the text of the first record (one line of the file)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    record["text"] += " edited"
    lines[0] = json.dumps(record) + "\n"
    Path(path).write_text("".join(lines), encoding="utf-8")


def arrow_files(cache_dir: Path) -> set[Path]:
    return set(cache_dir.glob("*/*.arrow"))


# ============================================================================================ tokenised data
@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the tokenising map function (``MultiDomainDataModule._encode``), all instances."""
    calls: list[int] = []
    real = MultiDomainDataModule._encode

    def counting(self: MultiDomainDataModule, batch: dict[str, list]) -> Any:
        calls.append(len(batch["text"]))
        return real(self, batch)

    monkeypatch.setattr(MultiDomainDataModule, "_encode", counting)
    return calls


def setup_data(calls: list[int], **kwargs: Any) -> tuple[JsonlDataModule, int]:
    """A set-up JsonlDataModule and the number of examples it tokenised."""
    before = sum(calls)
    dm = JsonlDataModule(**{"max_length": 16, **kwargs})
    dm.setup()
    return dm, sum(calls) - before


def test_tokenised_cache_key_data_content(tmp_path: Path, encode_calls: list[int]) -> None:
    path = write_corpus(tmp_path / "corpus.jsonl")
    cache = tmp_path / "cache"
    first, tokenised = setup_data(encode_calls, train_file=path, cache_dir=str(cache))
    assert tokenised == 32  # train + val + test
    files = arrow_files(cache)
    assert {f.parent.name for f in files} == {first.data_fingerprint}

    same, tokenised = setup_data(encode_calls, train_file=path, cache_dir=str(cache))
    assert tokenised == 0 and same.data_fingerprint == first.data_fingerprint and arrow_files(cache) == files

    edit_one_line(path)
    edited, tokenised = setup_data(encode_calls, train_file=path, cache_dir=str(cache))
    assert tokenised == 32
    assert edited.split_fingerprint != first.split_fingerprint
    assert edited.data_fingerprint != first.data_fingerprint
    assert {f.parent.name for f in arrow_files(cache) - files} == {edited.data_fingerprint}
    # the old entry is intact: the original file again is read from it, nothing re-tokenised
    write_corpus(Path(path))
    again, tokenised = setup_data(encode_calls, train_file=path, cache_dir=str(cache))
    assert tokenised == 0 and again.data_fingerprint == first.data_fingerprint
    assert [r["input_ids"].tolist() for r in again.train_dataset] == [
        r["input_ids"].tolist() for r in first.train_dataset
    ]


def test_tokenised_cache_key_backbone(
    tmp_path: Path, encode_calls: list[int], tiny_tokenizer_dir: str
) -> None:
    path = write_corpus(tmp_path / "corpus.jsonl")
    kwargs = {"train_file": path, "cache_dir": str(tmp_path / "cache")}
    minilm, tokenised = setup_data(encode_calls, backbone="minilm-l6", **kwargs)
    assert tokenised == 32
    tiny, tokenised = setup_data(encode_calls, backbone=tiny_tokenizer_dir, **kwargs)
    assert tokenised == 32 and tiny.data_fingerprint != minilm.data_fingerprint
    assert tiny.split_fingerprint == minilm.split_fingerprint  # the split does not depend on the tokenizer
    # the tiny vocabulary maps most words to [UNK] (id 1); MiniLM's does not
    assert tiny.train_dataset[0]["input_ids"].tolist() != minilm.train_dataset[0]["input_ids"].tolist()
    for backbone, expected in (("minilm-l6", minilm), (tiny_tokenizer_dir, tiny)):
        again, tokenised = setup_data(encode_calls, backbone=backbone, **kwargs)
        assert tokenised == 0 and again.data_fingerprint == expected.data_fingerprint
    assert len({f.parent for f in arrow_files(tmp_path / "cache")}) == 2


def test_tokenised_cache_key_max_length(tmp_path: Path, encode_calls: list[int]) -> None:
    path = write_corpus(tmp_path / "corpus.jsonl")
    kwargs = {"train_file": path, "cache_dir": str(tmp_path / "cache")}
    long, tokenised = setup_data(encode_calls, max_length=16, **kwargs)
    assert tokenised == 32
    short, tokenised = setup_data(encode_calls, max_length=6, **kwargs)
    assert tokenised == 32 and short.data_fingerprint != long.data_fingerprint
    assert max(len(ids) for ids in short.train_dataset["input_ids"]) == 6
    assert max(len(ids) for ids in long.train_dataset["input_ids"]) > 6
    again, tokenised = setup_data(encode_calls, max_length=6, **kwargs)
    assert tokenised == 0 and again.data_fingerprint == short.data_fingerprint


# ============================================================================================ transferability
def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(**tiny_encoder_config()), add_pooling_layer=False).eval()


class ForwardCounter:
    """Counts the encoder's forward calls (wraps ``forward`` on the instance)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._forward = module.forward
        module.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._forward(*args, **kwargs)


def transferability(
    encoder: torch.nn.Module, dm: MultiDomainDataModule, cache_dir: Path, **options: Any
) -> tuple[torch.Tensor, bool]:
    """``load_or_compute_transferability`` as the MetaTeacher calls it (metakd/teacher.py)."""
    dm.setup()
    kwargs: dict[str, Any] = {
        "split_fingerprint": dm.split_fingerprint,
        "backbone": dm.backbone,
        "max_length": dm.max_length,
        "num_examples": dm.num_pooled_train,
        "num_domains": dm.num_domains,
        "num_labels": dm.num_labels,
        "cache_dir": cache_dir,
    }
    kwargs.update(options)
    t, _, from_cache = P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), **kwargs)
    return t, from_cache


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    return write_corpus(tmp_path / "corpus.jsonl")


def data(path: str, tmp_path: Path, **kwargs: Any) -> JsonlDataModule:
    return JsonlDataModule(train_file=path, cache_dir=str(tmp_path / "tok"), **{"max_length": 16, **kwargs})


def test_transferability_cache_key_data_content(tmp_path: Path, corpus: str) -> None:
    cache, encoder = tmp_path / "t", tiny_encoder()
    counter = ForwardCounter(encoder)
    t1, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert not cached and counter.calls > 0
    calls = counter.calls
    t2, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert cached and counter.calls == calls and torch.equal(t1, t2)
    edit_one_line(corpus)
    _, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert not cached and counter.calls == 2 * calls
    assert len(list(cache.glob("*.pt"))) == 2


def test_transferability_cache_key_backbone_and_encoder_weights(
    tmp_path: Path, corpus: str, tiny_tokenizer_dir: str
) -> None:
    cache, encoder = tmp_path / "t", tiny_encoder()
    counter = ForwardCounter(encoder)
    _, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert not cached
    calls = counter.calls
    # another backbone (tokenizer) over the same split: recomputed
    _, cached = transferability(encoder, data(corpus, tmp_path, backbone=tiny_tokenizer_dir), cache)
    assert not cached and counter.calls == 2 * calls
    # an encoder with the same weights (a fresh module, same seed): reused
    twin = tiny_encoder()
    twin_counter = ForwardCounter(twin)
    _, cached = transferability(twin, data(corpus, tmp_path), cache)
    assert cached and twin_counter.calls == 0
    # other weights: recomputed (one changed embedding row is enough)
    with torch.no_grad():
        twin.embeddings.word_embeddings.weight[7] += 0.5
    _, cached = transferability(twin, data(corpus, tmp_path), cache)
    assert not cached and twin_counter.calls == calls
    # another initialisation seed: recomputed
    _, cached = transferability(tiny_encoder(seed=1), data(corpus, tmp_path), cache)
    assert not cached
    assert len(list(cache.glob("*.pt"))) == 4


def test_transferability_cache_key_max_length(tmp_path: Path, corpus: str) -> None:
    cache, encoder = tmp_path / "t", tiny_encoder()
    counter = ForwardCounter(encoder)
    _, cached = transferability(encoder, data(corpus, tmp_path, max_length=16), cache)
    calls = counter.calls
    assert not cached and calls > 0
    _, cached = transferability(encoder, data(corpus, tmp_path, max_length=6), cache)
    assert not cached and counter.calls == 2 * calls
    for max_length in (16, 6):
        _, cached = transferability(encoder, data(corpus, tmp_path, max_length=max_length), cache)
        assert cached
    assert counter.calls == 2 * calls


def test_transferability_cache_key_options(tmp_path: Path, corpus: str) -> None:
    cache, encoder = tmp_path / "t", tiny_encoder()
    counter = ForwardCounter(encoder)
    dm = data(corpus, tmp_path)
    _, cached = transferability(encoder, dm, cache)  # granularity "domain", masked_mean
    calls = counter.calls
    assert not cached
    by_class, cached = transferability(encoder, dm, cache, by_class=True)  # granularity "domain_class"
    assert not cached and counter.calls == 2 * calls
    _, cached = transferability(encoder, dm, cache, pooling="padded_mean_skip_cls")
    assert not cached and counter.calls == 3 * calls
    again, cached = transferability(encoder, dm, cache, by_class=True)
    assert cached and counter.calls == 3 * calls and torch.equal(again, by_class)
    assert len(list(cache.glob("*.pt"))) == 3


def test_transferability_cache_key_loaded_subset(tmp_path: Path, corpus: str) -> None:
    """``train_fraction`` / ``target_domain`` keep the split fingerprint but load fewer examples; scores
    computed on a subset (NaN elsewhere, prototypes of the subset) must not be served to the full data."""
    cache, encoder = tmp_path / "t", tiny_encoder()
    counter = ForwardCounter(encoder)
    half, cached = transferability(encoder, data(corpus, tmp_path, train_fraction=0.5), cache)
    assert not cached and bool(torch.isnan(half).any())
    calls = counter.calls
    full, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert not cached and counter.calls > calls
    assert bool(torch.isfinite(full).all())
    _, cached = transferability(encoder, data(corpus, tmp_path, target_domain="dvd"), cache)
    assert not cached
    again, cached = transferability(encoder, data(corpus, tmp_path), cache)
    assert cached and torch.equal(again, full)


# ============================================================================================ teacher outputs
@pytest.fixture(scope="module")
def teacher_ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A tiny teacher checkpoint, a byte-identical copy at another path, and one with other weights."""
    directory = tmp_path_factory.mktemp("teachers")
    first = train_tiny_teacher(str(directory / "teacher.ckpt"))
    copy = directory / "copy.ckpt"
    copy.write_bytes(Path(first).read_bytes())
    state = torch.load(first, map_location="cpu", weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("classifier.weight"))
    state["state_dict"][name] = state["state_dict"][name] + 0.25
    other = directory / "other.ckpt"
    torch.save(state, other)
    return first, str(copy), str(other)


def fit_student(teacher_ckpt: str, dm: ToyMultiDomainDataModule, cache_dir: Path) -> tuple[int, torch.Tensor]:
    """One epoch of vanilla KD with a disk cache; the teacher-forward count and the cached logits."""
    student = tiny_student(teacher_ckpt, dm, distillation="vanilla", cache_dir=str(cache_dir))
    tiny_trainer(max_steps=-1, max_epochs=1).fit(student, datamodule=dm)
    return student.teacher_source.forward_calls, student.teacher_source.cache.logits.clone()


def toy(**overrides: Any) -> ToyMultiDomainDataModule:
    return ToyMultiDomainDataModule(**{"backbone": "minilm-l6", "target_domain": "dom1", **overrides})


def cached_files(cache: Path) -> set[Path]:
    return set(cache.glob("teacher-logits-*.pt"))


def test_teacher_output_cache_key_teacher_checkpoint(
    tmp_path: Path, teacher_ckpts: tuple[str, str, str]
) -> None:
    first, copy, other = teacher_ckpts
    cache = tmp_path / "cache"
    calls, logits = fit_student(first, toy(), cache)
    assert calls == 2  # 12 target-domain examples, 2 batches: the prefill pass
    files = cached_files(cache)
    assert len(files) == 1
    # unchanged inputs: zero teacher calls, the same logits
    calls, again = fit_student(first, toy(), cache)
    assert calls == 0 and torch.equal(again, logits) and cached_files(cache) == files
    # the same bytes under another path: the key is the file's sha256, so reused
    calls, _ = fit_student(copy, toy(), cache)
    assert calls == 0 and cached_files(cache) == files
    # a different checkpoint file: recomputed into a new entry, with the new teacher's logits
    calls, changed = fit_student(other, toy(), cache)
    assert calls == 2 and len(cached_files(cache) - files) == 1
    filled = changed.abs().sum(dim=1) > 0
    assert filled.any() and not torch.equal(changed[filled], logits[filled])


def test_teacher_output_cache_key_data(tmp_path: Path, teacher_ckpts: tuple[str, str, str]) -> None:
    first = teacher_ckpts[0]
    cache = tmp_path / "cache"
    dm = toy()
    calls, _ = fit_student(first, dm, cache)
    assert calls == 2
    files = cached_files(cache)
    other_data = toy(seed=1)  # other examples, same sizes: another data_fingerprint
    calls, _ = fit_student(first, other_data, cache)
    assert other_data.data_fingerprint != dm.data_fingerprint
    assert calls == 2 and len(cached_files(cache) - files) == 1
    other_target = toy(target_domain="dom2")  # the same pooled split, another loaded subset
    calls, _ = fit_student(first, other_target, cache)
    assert calls == 2 and len(cached_files(cache)) == 3
    for same in (toy(), toy(seed=1), toy(target_domain="dom2")):
        calls, _ = fit_student(first, same, cache)
        assert calls == 0
    assert len(cached_files(cache)) == 3
