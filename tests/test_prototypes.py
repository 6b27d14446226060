"""Pooling, prototypes and transferability scores against hand-computed values; the disk cache."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ToyMultiDomainDataModule, tiny_encoder_config

from metakd import prototypes as P


def test_masked_mean_pool_variants() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[2.0, 0.0], [4.0, 8.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert P.masked_mean_pool(hidden, mask).tolist() == [[3.0, 4.0], [3.0, 4.0]]
    assert P.masked_mean_pool(hidden, mask, skip_cls=True).tolist() == [[4.0, 5.0], [4.0, 8.0]]
    # The originals: after [CLS], padding included.
    padded = P.masked_mean_pool(hidden, mask, skip_cls=True, include_padding=True)
    assert padded.tolist() == [[4.0, 5.0], [6.5, 8.5]]
    assert P.pool(hidden, mask, "padded_mean_skip_cls").tolist() == padded.tolist()
    with pytest.raises(ValueError, match="unknown prototype pooling"):
        P.pool(hidden, mask, "max")  # type: ignore[arg-type]


def test_domain_prototypes_with_empty_domain() -> None:
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    protos = P.domain_prototypes(h, torch.tensor([0, 0, 2]), num_domains=3)
    assert protos.tolist() == [[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]]
    assert P.prototype_present(protos).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="domain_ids must lie in"):
        P.domain_prototypes(h, torch.tensor([0, 0, 3]), num_domains=3)


def test_domain_class_prototypes() -> None:
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0]])
    protos = P.domain_class_prototypes(h, torch.tensor([0, 0, 1, 0]), torch.tensor([1, 1, 0, 0]), 2, 2)
    assert protos.shape == (2, 2, 2)
    assert protos[0, 1].tolist() == [2.0, 1.0]
    assert protos[0, 0].tolist() == [2.0, 2.0]
    assert protos[1, 0].tolist() == [0.0, 4.0]
    assert protos[1, 1].tolist() == [0.0, 0.0]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_transferability_scores_by_hand() -> None:
    protos = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]])
    h = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    t = P.transferability_scores(h, torch.tensor([0, 2]), protos)
    expected_0 = 0.5 * _cos([1, 0], [1, 1]) + 0.5 * _cos([1, 0], [-0.5, 1.0])
    expected_1 = 0.5 * _cos([2, 1], [-1, 1]) + 0.5 * _cos([2, 1], [0.5, 1.0])
    assert t.tolist() == pytest.approx([expected_0, expected_1], abs=1e-6)


def test_transferability_absent_prototypes() -> None:
    # Domain 1 is empty: left out of the "other" mean.
    protos = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]])
    t = P.transferability_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), protos)
    assert t.item() == pytest.approx(0.5 * _cos([1, 0], [1, 1]) + 0.5 * _cos([1, 0], [-1, 1]), abs=1e-6)
    # One domain only: the own-domain cosine alone.
    single = P.transferability_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), protos[:1])
    assert single.item() == pytest.approx(_cos([1, 0], [1, 1]), abs=1e-6)
    # Own domain absent (a domain the teacher never saw): the other-domain cosine alone.
    unseen = P.transferability_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), protos)
    assert unseen.item() == pytest.approx(_cos([1, 0], [0.0, 1.0]), abs=1e-6)
    with pytest.raises(ValueError, match="no prototype to compare with"):
        P.transferability_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.zeros(2, 2))


def test_transferability_within_class() -> None:
    protos = torch.zeros(2, 2, 2)
    protos[0, 0] = torch.tensor([1.0, 0.0])
    protos[1, 0] = torch.tensor([0.0, 1.0])
    protos[0, 1] = torch.tensor([1.0, 1.0])  # class 1 only in domain 0
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = P.transferability_scores(h, torch.tensor([0, 0]), protos, labels=torch.tensor([0, 1]))
    expected_0 = 0.5 * _cos([3, 4], [1, 0]) + 0.5 * _cos([3, 4], [0, 1])
    assert t.tolist() == pytest.approx([expected_0, _cos([1, 0], [1, 1])], abs=1e-6)
    with pytest.raises(ValueError, match="need the instances' labels"):
        P.transferability_scores(h, torch.tensor([0, 0]), protos)


def _tiny_encoder() -> torch.nn.Module:
    from transformers import AutoModel, BertConfig

    torch.manual_seed(0)
    return AutoModel.from_config(BertConfig(**tiny_encoder_config()), add_pooling_layer=False)


def test_compute_transferability_matches_direct_pooling() -> None:
    dm = ToyMultiDomainDataModule(target_domain="dom1")
    dm.setup("fit")
    encoder = _tiny_encoder()
    t, protos = P.compute_transferability(encoder, dm.train_eval_dataloader(), dm.num_pooled_train, 3, 2)
    assert t.shape == (dm.num_pooled_train,)
    kept = [row["example_ids"] for row in dm.train_dataset.rows]
    missing = sorted(set(range(dm.num_pooled_train)) - set(kept))
    assert torch.isnan(t[missing]).all() and torch.isfinite(t[kept]).all()
    # Only dom1 has data: t_i = cos(h_i, p_1); recompute h for one batch directly.
    batch = next(iter(dm.train_eval_dataloader()))
    with torch.no_grad():
        hidden = encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    h = P.masked_mean_pool(hidden, batch["attention_mask"])
    expected = torch.nn.functional.cosine_similarity(h, protos[1].unsqueeze(0), dim=-1)
    assert torch.allclose(t[batch["example_ids"]], expected, atol=1e-5)
    assert P.prototype_present(protos).tolist() == [False, True, False]


def test_padded_pooling_pads_to_max_length() -> None:
    batch = {"input_ids": torch.tensor([[101, 7, 102]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    padded = P._pad_batch_to(batch, 5, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[101, 7, 102, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]
    dm = ToyMultiDomainDataModule()
    dm.setup("fit")
    t, protos = P.compute_transferability(
        _tiny_encoder(), dm.train_eval_dataloader(), dm.num_pooled_train, 3, 2,
        by_class=True, pooling="padded_mean_skip_cls", pad_to_length=dm.max_length,
    )  # fmt: skip
    assert protos.shape == (3, 2, 32) and torch.isfinite(t).all()


def test_cache_reused_on_second_run(tmp_path, monkeypatch) -> None:
    dm = ToyMultiDomainDataModule()
    dm.setup("fit")
    encoder = _tiny_encoder()
    calls = []
    real = P.compute_transferability

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "compute_transferability", counting)
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path))
    kwargs = dict(
        split_fingerprint=dm.split_fingerprint, backbone="tiny", max_length=dm.max_length,
        num_examples=dm.num_pooled_train, num_domains=3, num_labels=2,
    )  # fmt: skip
    t1, p1, cached1 = P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), **kwargs)
    t2, p2, cached2 = P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), **kwargs)
    assert (cached1, cached2) == (False, True) and len(calls) == 1
    assert torch.equal(t1, t2) and torch.equal(p1, p2)
    assert len(list((tmp_path / "transferability").glob("*.pt"))) == 1
    # Other options, another split or other weights: a new entry.
    P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), by_class=True, **kwargs)
    P.load_or_compute_transferability(_tiny_encoder().train(), dm.train_eval_dataloader(), **kwargs)
    assert len(calls) == 2  # same seed, same weights: the fresh encoder hits the cache
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight[5] += 1.0
    P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), **kwargs)
    assert len(calls) == 3
    # A corrupt file is recomputed, not trusted.
    for path in (tmp_path / "transferability").glob("*.pt"):
        path.write_bytes(b"not a torch file")
    _, _, cached = P.load_or_compute_transferability(encoder, dm.train_eval_dataloader(), **kwargs)
    assert not cached and len(calls) == 4
