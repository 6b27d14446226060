"""L2A: the selector's policy gradient (by hand and on a toy reward with a known optimum), the candidate
generator (target and source candidates, word substitution, no dev/test text), bad input, and a fit with
the selector callback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_student, tiny_teacher, tiny_trainer
from test_datamodules import write_jsonl
from test_eda import write_wordnet

from datamodules import DataError, JsonlDataModule
from datamodules.l2a import salient_words
from metakd.l2a import L2ASelector, policy_probabilities, reinforce_update

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


def test_policy_moves_to_the_known_optimum_of_a_toy_reward() -> None:
    """20 candidates, half useful (feature +1), half harmful (-1); the reward of a subset is (useful
    selected - harmful selected) / 20, so the optimum selects exactly the useful ones. REINFORCE with a
    moving-average baseline must get there from the uniform initial policy."""
    generator = torch.Generator().manual_seed(0)
    features = torch.tensor([[1.0]] * 10 + [[-1.0]] * 10)
    useful = features[:, 0] > 0
    weights, bias, baseline = torch.zeros(1), torch.tensor(0.0), None
    start = policy_probabilities(weights, bias, features)
    for _ in range(300):
        actions = torch.bernoulli(policy_probabilities(weights, bias, features), generator=generator)
        reward = float(actions[useful].sum() - actions[~useful].sum()) / 20
        baseline = reward if baseline is None else baseline
        weights, bias = reinforce_update(weights, bias, features, actions, reward - baseline, lr=2.0)
        baseline = 0.5 * baseline + 0.5 * reward
    end = policy_probabilities(weights, bias, features)
    assert torch.allclose(start, torch.full((20,), 0.5))
    assert float(end[useful].min()) > 0.9 and float(end[~useful].max()) < 0.1
    assert float(weights[0]) > 0


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


def l2a(ckpt: str, wordnet: Path, per_example: int = 2, **init_args) -> dict:
    args = {"teacher_ckpt": ckpt, "wordnet_dir": str(wordnet), "min_similarity": -1.0, "salient_words": 1}
    return {"class_path": "l2a", "per_example": per_example, "init_args": {**args, **init_args}}


def test_candidates_come_from_training_text_only(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    dm = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, source_per_example=1))
    dm.setup()
    rows = dm.augmented_train
    kinds = {r["kind"] for r in rows}
    assert kinds == {"target", "source"}
    raw = dm.raw_splits()
    for row in rows:
        assert MARK["val"] not in row["text"] and MARK["test"] not in row["text"]
        source = raw["train"][row["source_example_id"]]
        # every word comes from this TRAINING text, or is a synonym (EDA) or a books word (substitution)
        assert set(row["text"].split()) <= set(source["text"].split()) | {"full", "novel"}
        if row["kind"] == "source":
            assert source["text"].split()[-1] in row["text"].split()  # substitution keeps the marker
        assert row["domain"] == source["domain"] and row["label"] == source["label"]
        assert set(row["features"]) == {"closeness", "transferability", "source", "substitutions"}
    source_rows = [r for r in rows if r["kind"] == "source"]
    loaded = len([i for i in dm.train_dataset.with_format(None)["example_ids"] if i < dm.num_pooled_train])
    assert len(source_rows) == loaded and {r["domain"] for r in source_rows} == {"dvd"}
    # dvd's domain word "film" is replaced by books' "novel" (the only candidate with min_similarity -1)
    assert all("film" not in r["text"] and r["features"]["substitutions"] == 2.0 for r in source_rows)
    # the closest source examples were taken: none left out is closer than one taken
    generator = dm.augment.augmenter
    from datamodules.augment import AugmentContext

    pool = [i for i, r in enumerate(raw["train"]) if r["domain"] == "dvd"]
    context = AugmentContext(
        raw["train"], [], dm.domain_names, dm.label_names, "books", dm.seed, dm.cache_dir
    )
    closeness = {i: s["closeness"] for i, s in generator.example_statistics(context, pool).items()}
    taken = {r["source_example_id"] for r in source_rows}
    assert min(closeness[i] for i in taken) >= max([closeness[i] for i in pool if i not in taken], default=-2)


def test_ablations_and_bad_input(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    no_source = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, source_per_example=0))
    no_source.setup()
    assert {r["kind"] for r in no_source.augmented_train} == {"target"}
    no_target = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, per_example=0))
    no_target.setup()
    assert {r["kind"] for r in no_target.augmented_train} == {"source"}
    only_books = data(tmp_path, files, domains=["books"], target_domain="books", augment=l2a(ckpt, wordnet))
    with pytest.raises(DataError, match="source candidates need source domains"):
        only_books.setup()
    with pytest.raises(DataError, match="needs data.init_args.target_domain"):
        data(tmp_path, files, augment=l2a(ckpt, wordnet)).setup()
    with pytest.raises(DataError, match="need init_args.teacher_ckpt"):
        data(tmp_path, files, augment=l2a(None, wordnet))
    with pytest.raises(DataError, match="must lie in|train_fraction must be in"):
        data(tmp_path, files, target_domain="books", train_fraction=1.5)


def test_salient_words_by_hand() -> None:
    texts = {"a": ["novel novel novel author"], "b": ["film film film author"]}
    # "novel": log(4/(4+3)) - log(4/(8+3)) > 0 in a; "author" is as frequent in both, lower
    assert salient_words(texts, top=1, min_count=1) == {"a": ["novel"], "b": ["film"]}


# -------------------------------------------------------------------------------------------- fit


def test_selector_rounds_in_a_fit(teacher) -> None:
    tmp_path, files, ckpt = teacher
    wordnet = write_wordnet(tmp_path / "wn")
    dm = data(tmp_path, files, target_domain="books", augment=l2a(ckpt, wordnet, source_per_example=1))
    selector = L2ASelector(select_fraction=0.5, seed=3)
    served: list[set[int]] = []

    class Served(__import__("pytorch_lightning").Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                served.append(set())
            served[-1].update(int(i) for i in batch["example_ids"])

    student = tiny_student(ckpt, dm, distillation="vanilla")
    trainer = tiny_trainer(
        max_epochs=4, max_steps=-1, callbacks=[selector, Served()], default_root_dir=str(tmp_path / "run")
    )
    trainer.fit(student, datamodule=dm)
    assert trainer.reload_dataloaders_every_n_epochs == 1 and len(selector.history) == 4
    rewards = [r for r in selector.history if "reward" in r]
    assert len(rewards) == 3 and all("dev_acc" in r for r in selector.history)
    # each epoch served the originals and exactly what the policy had selected before it
    originals = {
        i for i in dm._full_train_dataset.with_format(None)["example_ids"] if i < dm.num_pooled_train
    }
    for epoch, ids in enumerate(served):
        assert originals <= ids
        assert len(ids - originals) == selector.history[epoch]["selected"]
    assert len({frozenset(s) for s in served}) > 1
    saved = json.loads((Path(trainer.log_dir or tmp_path / "run") / "l2a_selector.json").read_text())
    assert saved == json.loads(json.dumps(selector.history))

    random_selector = L2ASelector(learn=False, seed=3)
    tiny_trainer(
        max_epochs=3, max_steps=-1, callbacks=[random_selector], default_root_dir=str(tmp_path / "random")
    ).fit(tiny_student(ckpt, dm, distillation="vanilla"), datamodule=dm)
    assert torch.equal(random_selector.weights, torch.zeros(6))
