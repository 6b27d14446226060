"""L2A: the selector's policy gradient and baseline by hand, its state features by hand, a selector that
learns which candidates help on a tiny model; the candidate generator (EDA edits, substituted source
examples and source-target mixes, features by hand, no dev/test text), bad input, and a fit with the
selector callback that filters the batches and writes its selection probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_student, tiny_teacher, tiny_trainer
from test_datamodules import write_jsonl
from test_eda import write_wordnet

from datamodules import DataError, JsonlDataModule
from datamodules.augment import AugmentContext
from datamodules.l2a_generator import EDIT_KINDS, salient_words, splice
from metakd.l2a_selector import (
    FEATURES,
    L2ASelector,
    advantage,
    candidate_features,
    policy_inputs,
    policy_probabilities,
    reinforce_update,
)
from metakd.teachers import TeacherRequest

# ------------------------------------------------------------------------------------------ selector


def test_reinforce_update_by_hand() -> None:
    features = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])
    weights, bias = torch.zeros(2), torch.tensor(0.0)
    # pi = (0.5, 0.5); a = (1, 0): residuals (0.5, -0.5); A = 2, lr = 0.5:
    # weights += 0.5 * 2 * mean(0.5 * [1, 0], -0.5 * [-1, 2]) = [0.5, -0.5]; bias += 1 * mean(0.5, -0.5) = 0
    new_weights, new_bias = reinforce_update(weights, bias, features, torch.tensor([1, 0]), 2.0, 0.5)
    torch.testing.assert_close(new_weights, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(new_bias, torch.tensor(0.0))
    torch.testing.assert_close(
        policy_probabilities(new_weights, new_bias, features), torch.sigmoid(torch.tensor([0.5, -1.5]))
    )


def test_the_first_reward_moves_the_policy() -> None:
    # b starts at 0: d = 0.2, v = 0.04, A = 1; b' = 0.9 * 0 + 0.1 * 0.2 = 0.02
    assert advantage(0.2, 0.0, None, 0.9) == pytest.approx((1.0, 0.02, 0.04))
    # then r = 0.1: d = 0.08, v = 0.9 * 0.04 + 0.1 * 0.0064 = 0.03664, A = 0.08 / sqrt(0.03664)
    scaled, baseline, square = advantage(0.1, 0.02, 0.04, 0.9)
    assert square == pytest.approx(0.03664) and scaled == pytest.approx(0.08 / math.sqrt(0.03664))
    assert baseline == pytest.approx(0.9 * 0.02 + 0.1 * 0.1)

    selector = L2ASelector(select_fraction=0.5, lr=0.5)
    zeros = [0.0] * (len(FEATURES) - 1)
    selector.inputs = torch.tensor([[1.0, *zeros], [-1.0, *zeros]])
    selector.pending = [(torch.tensor([0, 1]), torch.tensor([1.0, 0.0]))]
    record = selector.update(0.2, step=0)
    # A = 1: weights[0] += 0.5 * 1 * mean(0.5 * 1, -0.5 * -1) = 0.25; the bias: mean(0.5, -0.5) = 0
    assert record["advantage"] == pytest.approx(1.0) and record["baseline"] == 0.0
    assert float(selector.weights[0]) == pytest.approx(0.25) and float(selector.bias) == pytest.approx(0.0)
    assert selector.baseline == pytest.approx(0.02) and selector.pending == []


def test_candidate_state_by_hand() -> None:
    rows = [
        {"kind": "sr", "features": {"source_share": 0.0, "closeness": 0.5, "length": 10.0}},
        {"kind": "substitute", "features": {"source_share": 1.0, "closeness": 0.25, "length": 20.0}},
        {"kind": "mix", "features": {"source_share": 0.5, "closeness": 0.0, "length": 30.0}},
    ]
    raw = candidate_features(rows, torch.tensor([0.9, 0.6, 0.75]))
    assert FEATURES[:4] == ("source_share", "closeness", "teacher_confidence", "length")
    one_hot = [[float(k == kind) for k in EDIT_KINDS] for kind in ("sr", "substitute", "mix")]
    expected = [
        [0.0, 0.5, 0.9, 10.0] + one_hot[0],
        [1.0, 0.25, 0.6, 20.0] + one_hot[1],
        [0.5, 0.0, 0.75, 30.0] + one_hot[2],
    ]
    torch.testing.assert_close(raw, torch.tensor(expected))
    z = policy_inputs(raw)
    # each numeric column is an arithmetic sequence in some order: mean the middle value, population std
    # sqrt(2/3) of the step, so the values are (-1.2247, 0, 1.2247) in that order
    s = math.sqrt(1.5)
    torch.testing.assert_close(z[:, 0], torch.tensor([-s, s, 0.0]))
    torch.testing.assert_close(z[:, 1], torch.tensor([s, 0.0, -s]))
    torch.testing.assert_close(z[:, 2], torch.tensor([s, -s, 0.0]))
    torch.testing.assert_close(z[:, 3], torch.tensor([-s, 0.0, s]))
    torch.testing.assert_close(z[:, 4:], raw[:, 4:])  # the edit type stays one-hot


def learn_on_a_tiny_task(seed: int, steps: int = 40) -> tuple[float, float, L2ASelector]:
    """A linear classifier of two Gaussian blobs, 2 target examples per class; 40 candidates of which the
    odd ones carry the wrong label (they hurt) and a lower teacher confidence. Each step draws 8
    candidates, keeps those the policy selects, takes one SGD step on the target examples plus them, and
    rewards the decrease of the dev loss. Returns the mean selection probability of the helpful and the
    harmful candidates."""
    g = torch.Generator().manual_seed(seed)

    def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(2 * n) % 2
        centres = torch.tensor([[-1.5, 0.0], [1.5, 0.0]])[labels]
        return centres + torch.randn(2 * n, 2, generator=g), labels

    (x_target, y_target), (x_dev, y_dev), (x_cand, y_cand) = blobs(2), blobs(32), blobs(20)
    harmful = torch.arange(40) % 2 == 1
    y_cand = torch.where(harmful, 1 - y_cand, y_cand)
    rows = [
        {"kind": "mix" if bad else "sr",
         "features": {"source_share": float(torch.rand(1, generator=g)),
                      "closeness": float(torch.rand(1, generator=g)), "length": float(5 + i % 7)}}
        for i, bad in enumerate(harmful.tolist())
    ]  # fmt: skip
    confidence = torch.where(harmful, 0.55, 0.9) + 0.05 * torch.randn(40, generator=g)
    selector = L2ASelector(select_fraction=0.5, lr=0.5, seed=seed)
    selector.kinds = [r["kind"] for r in rows]
    selector.inputs = policy_inputs(candidate_features(rows, confidence))
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)

    def dev_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x_dev), y_dev))

    previous = dev_loss()
    for step in range(steps):
        drawn = torch.randperm(40, generator=g)[:8]
        chosen = drawn[selector.act(drawn).bool()]
        optimiser.zero_grad()
        x, y = torch.cat([x_target, x_cand[chosen]]), torch.cat([y_target, y_cand[chosen]])
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
        loss = dev_loss()
        selector.update(previous - loss, step)
        previous = loss
    p = selector.probabilities()
    return float(p[~harmful].mean()), float(p[harmful].mean()), selector


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_selector_learns_which_candidates_help(seed: int) -> None:
    helpful, harmful, selector = learn_on_a_tiny_task(seed)
    assert helpful > 0.5 > 0.35 > harmful  # from 0.5 both ways, in 40 steps of a linear model
    assert float(selector.weights[FEATURES.index("teacher_confidence")]) > 0
    assert len(selector.history) == 40 and selector.history[0]["advantage"] != 0.0


# -------------------------------------------------------------------------------------- candidates

MARK = {"train": "trn", "val": "devsecret", "test": "testsecret"}


def corpus(tmp_path: Path) -> dict[str, str]:
    """Books and dvd reviews in explicit train/dev/test files; every text carries its split's marker and a
    unique number, so a dev or test text that became a candidate would show."""
    files = {}
    for split, per in (("train", 12), ("val", 4), ("test", 4)):
        rows = []
        for domain, noun in (("books", "novel"), ("dvd", "film")):
            for i in range(per):
                label = "pos" if i % 2 else "neg"
                word = "good" if label == "pos" else "bad"
                text = f"this {noun} is {word} {noun} {MARK[split]}{domain}{i}"
                rows.append({"text": text, "label": label, "domain": domain})
        files[split] = write_jsonl(tmp_path / f"{split}.jsonl", rows)
    return files


def data(tmp_path: Path, files: dict[str, str], **kwargs) -> JsonlDataModule:
    return JsonlDataModule(
        train_file=files["train"], val_file=files["val"], test_file=files["test"], max_length=16,
        batch_size=4, cache_dir=str(tmp_path / "cache"), **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    tmp_path = tmp_path_factory.mktemp("l2a")
    files = corpus(tmp_path)
    dm = data(tmp_path, files)
    trainer = tiny_trainer()
    trainer.fit(tiny_teacher(dm), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    return tmp_path, files, str(tmp_path / "teacher.ckpt")


def l2a(ckpt: str | None, wordnet: Path, per_example: int = 2, **init_args) -> dict:
    args = {"teacher_ckpt": ckpt, "wordnet_dir": str(wordnet), "min_similarity": -1.0, "salient_words": 1}
    return {"class_path": "l2a", "per_example": per_example, "init_args": {**args, **init_args}}


class Draws:
    """``randrange`` answers given in advance (a splice's two positions)."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)

    def randrange(self, stop: int) -> int:
        answer = self.answers.pop(0)
        assert 0 <= answer < stop
        return answer


def test_splice_by_hand() -> None:
    # 4 target words, fraction 0.5: a span of 2 from position 1, replaced by the source's words 2..3
    assert splice("a b c d".split(), "s t u v w".split(), 0.5, Draws(1, 2)) == (["a", "u", "v", "d"], 2)
    # a source shorter than the span gives all its words; at least one word is replaced
    assert splice("a b c d".split(), ["s"], 0.75, Draws(0, 0)) == (["s", "d"], 1)
    assert splice("a b".split(), "s t".split(), 0.1, Draws(1, 0)) == (["a", "s"], 1)


def test_candidates_by_hand_and_from_training_text_only(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    augment = l2a(ckpt, wordnet, source_per_example=1, mix_per_example=1, mix_fraction=0.5)
    dm = data(tmp_path, files, target_domain="books", augment=augment)
    dm.setup()
    rows = dm.augmented_train
    assert {r["kind"] for r in rows} >= {"substitute", "mix"} and {r["kind"] for r in rows} <= set(EDIT_KINDS)
    raw = dm.raw_splits()
    generator = dm.augment.augmenter
    assert generator.substitution_map == {"dvd": {"film": "novel"}}  # the only candidate at min_similarity -1
    for row in rows:
        assert MARK["val"] not in row["text"] and MARK["test"] not in row["text"]
        source = raw["train"][row["source_example_id"]]
        assert row["domain"] == source["domain"] and row["label"] == source["label"]
        assert set(row["features"]) == {"source_share", "closeness", "length"}
        assert row["features"]["length"] == len(row["text"].split())
        if row["kind"] == "substitute":  # a dvd example with "film" replaced by "novel"
            assert row["text"] == source["text"].replace("film", "novel") and source["domain"] == "dvd"
            assert row["features"]["source_share"] == 1.0
        elif row["kind"] == "mix":  # a books example with half its words from a same-class dvd example
            words, original = row["text"].split(), source["text"].split()
            from_source = [w for w in words if w.startswith("trndvd")]
            assert source["domain"] == "books" and len(words) == 6 and "film" not in words
            assert len([w for w in words if w.startswith("trnbooks")]) <= 1 and len(from_source) <= 1
            assert words[0] == original[0] or words[-1] == original[-1]  # a span of 3 of 6 words replaced
            assert {"good", "bad"} & set(words) <= set(original)  # the partner is of the same class
            assert row["features"]["source_share"] == 0.5
        else:  # an EDA edit of a books example: its words, a synonym or a deletion
            assert source["domain"] == "books" and row["features"]["source_share"] == 0.0
            assert set(row["text"].split()) <= set(source["text"].split()) | {"full"}
    # closeness: cos(h of the candidate's own text, the teacher's books prototype)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = checkpoint["hyper_parameters"]
    prototype = checkpoint["state_dict"]["prototypes"].float()[hp["domain_names"].index("books")]
    context = AugmentContext(
        raw["train"], [], dm.domain_names, dm.label_names, "books", dm.seed, dm.cache_dir
    )
    h = generator.representations(context, [(r["text"], None) for r in rows[:5]], hp)
    for row, vector in zip(rows[:5], h):
        p = prototype if prototype.dim() == 1 else prototype[row["label"]]
        cosine = float(F.cosine_similarity(vector, p, dim=0))
        assert row["features"]["closeness"] == pytest.approx(cosine, abs=1e-6)
    # the substituted source examples are the dvd examples closest to the books prototype
    pool = [i for i, r in enumerate(raw["train"]) if r["domain"] == "dvd"]
    items = [(raw["train"][i]["text"], None, raw["train"][i]["label"]) for i in pool]
    closeness = dict(zip(pool, generator.closeness(context, items)))
    taken = {r["source_example_id"] for r in rows if r["kind"] == "substitute"}
    loaded = [i for i in dm.train_dataset.with_format(None)["example_ids"] if i < dm.num_pooled_train]
    assert len(taken) == len(loaded)  # source_per_example 1
    assert min(closeness[i] for i in taken) >= max([closeness[i] for i in pool if i not in taken], default=-2)


def test_ablations_and_bad_input(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    only_edits = data(tmp_path, files, target_domain="books",
                      augment=l2a(ckpt, wordnet, source_per_example=0, mix_per_example=0))  # fmt: skip
    only_edits.setup()
    assert {r["kind"] for r in only_edits.augmented_train} <= {"sr", "ri", "rs", "rd"}
    no_edits = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, per_example=0))
    no_edits.setup()
    assert {r["kind"] for r in no_edits.augmented_train} == {"substitute", "mix"}
    only_books = data(tmp_path, files, domains=["books"], target_domain="books", augment=l2a(ckpt, wordnet))
    with pytest.raises(DataError, match="source candidates and mixes need source domains"):
        only_books.setup()
    with pytest.raises(DataError, match="needs data.init_args.target_domain"):
        data(tmp_path, files, augment=l2a(ckpt, wordnet)).setup()
    with pytest.raises(DataError, match="need init_args.teacher_ckpt"):
        data(tmp_path, files, augment=l2a(None, wordnet, source_per_example=0))
    with pytest.raises(DataError, match="mix_fraction must be in"):
        data(tmp_path, files, augment=l2a(ckpt, wordnet, mix_fraction=0.0))


def test_salient_words_by_hand() -> None:
    texts = {"a": ["novel novel novel author"], "b": ["film film film author"]}
    # "novel": log(4/(4+3)) - log(4/(8+3)) > 0 in a; "author" is as frequent in both, lower
    assert salient_words(texts, top=1, min_count=1) == {"a": ["novel"], "b": ["film"]}


# -------------------------------------------------------------------------------------------- fit


def test_selector_in_a_fit(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    dm = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, source_per_example=1))
    selector = L2ASelector(select_fraction=0.5, seed=3, reward_examples=3)
    served: list[tuple[set[int], set[int], set[int]]] = []  # (seen by training, candidates, selected)

    class Served(__import__("pytorch_lightning").Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            rows, actions = selector.pending[-1] if selector.pending else (torch.zeros(0), torch.zeros(0))
            first = selector.first_id
            candidates = {int(r) + first for r in rows}
            served.append(
                (
                    {int(i) for i in batch["example_ids"]},
                    candidates,
                    {int(r) + first for r in rows[actions.bool()]},
                )
            )

    student = tiny_student(ckpt, dm, distillation="tinybert", intermediate_epochs=1)
    trainer = tiny_trainer(
        max_epochs=2, max_steps=-1, callbacks=[selector, Served()], default_root_dir=str(tmp_path / "run")
    )
    trainer.fit(student, datamodule=dm)
    # each step trained on its originals and exactly the candidates the policy kept
    for ids, candidates, selected in served:
        assert ids & candidates == selected
    # the intermediate epoch does not learn (its classifier is not trained); the prediction epoch learns
    # at every step, from the first one
    steps_per_epoch = trainer.global_step // 2
    assert len(selector.history) == steps_per_epoch  # "step": optimiser steps done, the first one included
    assert [r["step"] for r in selector.history] == list(range(steps_per_epoch + 1, 2 * steps_per_epoch + 1))
    assert abs(selector.history[0]["advantage"]) == pytest.approx(1.0)
    assert len(selector.reward_batches) == 1 and len(selector.reward_batches[0]["labels"]) == 3
    # the teacher's confidence in the state is max_c p_T(c | x) of the student's teacher
    batch = next(b for b in dm.train_eval_dataloader() if bool((b["example_ids"] >= selector.first_id).any()))
    keep = batch["example_ids"] >= selector.first_id
    logits = student.teacher_source.forward({k: v[keep] for k, v in batch.items()}, TeacherRequest()).logits
    rows = batch["example_ids"][keep] - selector.first_id
    torch.testing.assert_close(selector.raw[rows, 2], torch.softmax(logits, -1).max(-1).values)
    saved = json.loads((tmp_path / "run" / "l2a_selection.json").read_text())
    assert saved["updates"] == steps_per_epoch and saved["learn"] is True
    assert saved["probabilities"]["mean"] == pytest.approx(float(selector.probabilities().mean()))
    assert saved["probabilities"]["n"] == len(dm.augmented_train)
    assert set(saved["probabilities"]["by_kind"]) == {r["kind"] for r in dm.augmented_train}

    random_selector = L2ASelector(learn=False, seed=3)
    tiny_trainer(
        max_epochs=1, max_steps=-1, callbacks=[random_selector], default_root_dir=str(tmp_path / "random")
    ).fit(tiny_student(ckpt, dm, distillation="vanilla"), datamodule=dm)
    saved = json.loads((tmp_path / "random" / "l2a_selection.json").read_text())
    assert saved["updates"] == 0 and torch.equal(random_selector.weights, torch.zeros(len(FEATURES)))
    assert saved["probabilities"]["mean"] == pytest.approx(0.5) and saved["probabilities"]["std"] == 0.0
