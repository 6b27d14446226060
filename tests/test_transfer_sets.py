"""Transfer sets (issue 22): the unlabelled reader (errors name file and line), the unlabelled set and the
Meta-KD transfer set as data, the Meta-KD weights by hand, the data's example weights in the student's
loss, and the teacher labels of a transfer set computed once and read back from the disk cache."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import tiny_corpus_records, tiny_student, tiny_trainer, train_tiny_teacher, write_jsonl

from datamodules import DataError, JsonlDataModule
from datamodules.augment import NO_SOURCE, UNKNOWN_LABEL
from datamodules.metakd_transfer import pretrained_states, target_closeness, transfer_weights
from datamodules.unlabeled import DEFAULT_FILES, read_unlabeled
from metakd.distill import DISTILLERS
from metakd.distill.base import StepContext, stage_loss
from metakd.students import StudentOutput
from metakd.teacher_sources import by_source_example
from metakd.teachers import TeacherOutputs, TeacherRequest

TEXTCNN = {
    "class_path": "textcnn",
    "init_args": {"embedding_init": "random", "embedding_dim": 8, "filters": 4},
}


def corpus(tmp_path: Path) -> str:
    return str(write_jsonl(tmp_path / "corpus.jsonl", tiny_corpus_records(per_domain=20)))


def unlabeled_files(tmp_path: Path) -> str:
    """``<domain>.unlabeled.jsonl`` for books and dvd: 5 new texts each, one of them twice, then every
    labelled text of the domain (those of the training split are dropped from the set)."""
    for domain in ("books", "dvd"):
        rows = [{"domain": domain, "text": f"an unread {domain} review {i}", "source": "t"} for i in range(5)]
        labelled = [{"text": r["text"]} for r in tiny_corpus_records(per_domain=20) if r["domain"] == domain]
        write_jsonl(tmp_path / f"{domain}.unlabeled.jsonl", rows + rows[:1] + labelled)
    return str(tmp_path / "{domain}.unlabeled.jsonl")


def data(tmp_path: Path, augment: dict | None, cache: str = "cache", **kwargs) -> JsonlDataModule:
    options = {"train_file": corpus(tmp_path), "max_length": 24, "batch_size": 8,
               "cache_dir": str(tmp_path / cache), "target_domain": "books"}  # fmt: skip
    dm = JsonlDataModule(**{**options, **kwargs}, augment=augment)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------ unlabelled reader
def test_the_shipped_unlabelled_reviews_are_read() -> None:
    texts = read_unlabeled(DEFAULT_FILES.format(domain="electronics"), "electronics")
    assert len(texts) == 3030 and all(
        isinstance(t, str) and t.strip() for t in texts
    )  # data/README.md, section 3


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "fine"}', '{"text": "cut'], "{path}:2: malformed JSON line"),
        (['{"text": "fine"}', "", '{"txt": "x"}'], "{path}:3: missing field 'text'; fields present: ['txt']"),
        (['{"text": "   "}'], "{path}:1: field 'text' is empty"),
        (['{"text": "a", "domain": "books"}', '{"text": "b", "domain": "dvd"}'],
         "{path}:2: domain 'dvd' in the file of 'books'"),
        (["[1, 2]"], "{path}:1: expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_a_bad_unlabelled_line_names_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "books.unlabeled.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(DataError, match="^" + re.escape(message.format(path=path))):
        read_unlabeled(path, "books")


def test_a_file_of_several_domains_keeps_the_domain_asked_for(tmp_path: Path) -> None:
    rows = [
        {"text": "one", "domain": "books"},
        {"text": "two", "domain": "dvd"},
        {"text": "three", "domain": "books"},
    ]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    assert read_unlabeled(path, "books", per_domain_file=False) == ["one", "three"]
    write_jsonl(path, rows + [{"text": "four"}])
    with pytest.raises(
        DataError, match=re.escape(f"{path}:4: missing field 'domain' (the file holds several")
    ):
        read_unlabeled(path, "books", per_domain_file=False)


# --------------------------------------------------------------------------------- the unlabelled set
def test_unlabelled_texts_join_the_training_split_for_the_teacher(tmp_path: Path) -> None:
    dm = data(tmp_path, {"class_path": "unlabeled", "init_args": {"files": unlabeled_files(tmp_path)}})
    rows = dm.augmented_train
    # the 5 new books texts once, then the labelled ones outside the training split (the set cannot see dev
    # and test: shipped files are cleaned against them)
    train = {r["text"] for r in dm.raw_splits()["train"]}
    labelled = [r["text"] for r in tiny_corpus_records(per_domain=20) if r["domain"] == "books"]
    outside = [t for t in labelled if t not in train]
    assert 0 < len(outside) < len(labelled)
    assert [r["text"] for r in rows] == [f"an unread books review {i}" for i in range(5)] + outside
    assert {(r["label"], r["domain"], r["source_example_id"], r["kind"]) for r in rows} == {
        (UNKNOWN_LABEL, "books", NO_SOURCE, "unlabeled")
    }
    n = len(rows)
    assert [r["example_id"] for r in rows] == list(range(dm.num_pooled_train, dm.num_pooled_train + n))
    assert dm.source_example_ids[dm.num_pooled_train :].tolist() == [NO_SOURCE] * n
    assert dm.train_example_weights is None  # unweighted: every example counts once
    t = by_source_example(torch.arange(float(dm.num_pooled_train)), dm)  # per-example values of the pool
    assert t[:3].tolist() == [0.0, 1.0, 2.0] and bool(t[dm.num_pooled_train :].isnan().all())

    three = {"class_path": "unlabeled", "init_args": {"files": unlabeled_files(tmp_path), "max_examples": 3}}
    subset = data(tmp_path, three, cache="c2")
    texts = [r["text"] for r in subset.augmented_train]
    assert len(texts) == 3 and set(texts) < {r["text"] for r in rows}
    again = data(tmp_path, three, cache="c3")
    assert [r["text"] for r in again.augmented_train] == texts  # the subset is a function of the seed
    with pytest.raises(DataError, match="per_example has no meaning for unlabelled texts"):
        data(tmp_path, {"class_path": "unlabeled", "per_example": 2}, cache="c4")


# -------------------------------------------------------------------------------- Meta-KD weights by hand
def test_target_closeness_and_weights_by_hand() -> None:
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    prototypes = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # domains 0 (the target) and 1
    tau = target_closeness(h, prototypes, target=0)
    torch.testing.assert_close(tau, torch.tensor([1.0, 1 / math.sqrt(2), 0.0]))
    by_class = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]]])  # (K=2, C=2, H=2)
    tau_class = target_closeness(h, by_class, target=0, labels=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(tau_class, torch.tensor([0.0, 1 / math.sqrt(2), 1.0]))
    # mean1: w_i = max(tau_i, 0) / mean_j max(tau_j, 0) = (1, 0.7071, 0) / 0.5690
    mean = (1 + 1 / math.sqrt(2) + 0) / 3
    assert transfer_weights(tau).tolist() == pytest.approx([1 / mean, 1 / math.sqrt(2) / mean, 0.0], rel=1e-6)
    assert transfer_weights(torch.tensor([-0.5, 0.2, 0.6])).tolist() == pytest.approx([0.0, 0.75, 2.25])
    # temperature:0.5: w_i = n exp(tau_i / T) / sum_j exp(tau_j / T): exp(2), exp(sqrt(2)), exp(0) over 3
    weights = transfer_weights(tau, "temperature:0.5")
    numerators = [math.exp(2.0), math.exp(2 / math.sqrt(2)), 1.0]
    expected = [3 * v / sum(numerators) for v in numerators]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6) and float(weights.mean()) == pytest.approx(
        1.0
    )
    assert transfer_weights(tau, "temperature:10000").tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-3)


def test_metakd_transfer_set_weights_the_other_domains_by_the_teachers_prototypes(tmp_path: Path) -> None:
    # a meta-teacher of the real pre-trained MiniLM (its prototypes come from the pre-trained encoder)
    real = {"encoder_config": None}
    teacher = train_tiny_teacher(
        str(tmp_path / "teacher.ckpt"), data(tmp_path, None, cache="t", target_domain=None), **real
    )
    spec = {"class_path": "metakd_transfer", "per_example": 1, "init_args": {"teacher_ckpt": teacher}}
    dm = data(tmp_path, spec)
    train = dm.raw_splits()["train"]
    rows = dm.augmented_train
    loaded = dm.split_sizes()["train"]["books"]
    dvd = [i for i, r in enumerate(train) if r["domain"] == "dvd"]
    assert len(rows) == min(loaded, len(dvd)) and {r["domain"] for r in rows} == {"dvd"}
    assert all(r["text"] == train[r["source_example_id"]]["text"] for r in rows)
    assert all(r["label"] == train[r["source_example_id"]]["label"] for r in rows)  # gold labels kept
    # tau by hand: the teacher's stored books prototype against h_i of the pre-trained encoder
    checkpoint = torch.load(teacher, map_location="cpu", weights_only=True)
    h = pretrained_states([[train[i]["text"], None] for i in dvd], checkpoint, 24, tmp_path / "fresh")
    p_books = checkpoint["state_dict"]["prototypes"][0]
    tau = {i: float(torch.nn.functional.cosine_similarity(h[k], p_books, dim=0)) for k, i in enumerate(dvd)}
    assert min(tau.values()) > 0  # every dvd text is closer than 90 degrees to books: none is left out
    kept = sorted(sorted(dvd, key=lambda i: -tau[i])[: len(rows)])
    assert [r["source_example_id"] for r in rows] == kept and len(kept) < len(dvd)  # the closest to books
    assert [r["features"]["closeness"] for r in rows] == pytest.approx([tau[i] for i in kept], abs=1e-5)
    mean = sum(tau[i] for i in kept) / len(kept)
    expected = [tau[i] / mean for i in kept]  # mean1
    assert [r["features"]["weight"] for r in rows] == pytest.approx(expected, rel=1e-4)
    weights = dm.train_example_weights
    assert weights.shape == (dm.num_train_ids,) and bool((weights[: dm.num_pooled_train] == 1).all())
    assert weights[dm.num_pooled_train :].tolist() == pytest.approx(expected, rel=1e-4)
    # the same h_i as the teacher's: its books prototype is the mean of h over books' training texts
    books = [[r["text"], None] for r in train if r["domain"] == "books"]
    mean_h = pretrained_states(books, checkpoint, 24, tmp_path / "fresh").mean(dim=0)
    torch.testing.assert_close(mean_h, p_books.float(), rtol=1e-4, atol=1e-5)
    # a teacher of a fresh random encoder has lost the weights its prototypes came from
    random_teacher = train_tiny_teacher(str(tmp_path / "random.ckpt"), data(tmp_path, None, cache="t2"))
    spec["init_args"] = {"teacher_ckpt": random_teacher}
    with pytest.raises(
        DataError, match="fresh random encoder .encoder_config., whose initial weights are gone"
    ):
        data(tmp_path, spec, cache="c5")
    spec["init_args"] = {"teacher_ckpt": teacher, "weight_scale": "none"}
    with pytest.raises(DataError, match="weight_scale must be 'mean1' or 'temperature:<T>', got 'none'"):
        data(tmp_path, spec, cache="c6")


def test_the_data_weights_scale_each_examples_loss() -> None:
    (stage,) = DISTILLERS.get("tang")().stages()  # logit MSE
    batch = {"labels": torch.tensor([1, -100]), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "example_ids": torch.tensor([0, 7])}  # fmt: skip
    step = StepContext(batch, StudentOutput(logits=torch.tensor([[1.0, 3.0], [0.0, 0.0]])),
                       TeacherOutputs(logits=torch.tensor([[2.0, 1.0], [1.0, -1.0]])), {})  # fmt: skip
    # per-example MSE over classes: (1 + 4) / 2 = 2.5 and (1 + 1) / 2 = 1; v = (1, 0.5)
    loss, logs = stage_loss(stage, step, None, torch.tensor([1.0, 0.5]))
    assert float(loss) == pytest.approx((2.5 * 1.0 + 1.0 * 0.5) / 2)
    assert float(logs["train/example_weight_mean"]) == pytest.approx(0.75)
    unweighted, logs = stage_loss(stage, step, None)
    assert float(unweighted) == pytest.approx(1.75) and "train/example_weight_mean" not in logs


# --------------------------------------------------------------------------- teacher labels, cached
def test_transfer_set_labels_are_computed_once_and_read_back(tmp_path: Path, capfd) -> None:
    teacher = train_tiny_teacher(
        str(tmp_path / "teacher.ckpt"), data(tmp_path, None, cache="t", target_domain=None)
    )
    spec = {"class_path": "unlabeled", "init_args": {"files": unlabeled_files(tmp_path)}}
    dm = data(tmp_path, spec)
    store = tmp_path / "labels"
    student = tiny_student(teacher, dm, distillation="tang", student_config=None, student_model=TEXTCNN,
                           cache_dir=str(store))  # fmt: skip
    tiny_trainer(max_steps=2).fit(student, datamodule=dm)
    assert "Teacher labels" in capfd.readouterr().err  # the labelling shows its progress
    [path] = store.glob("teacher-logits-*.pt")
    stored = torch.load(path, weights_only=True)
    ids = torch.tensor([r["example_id"] for r in dm.augmented_train])
    assert bool(stored["filled"][ids].all()) and stored["logits"].shape == (dm.num_train_ids, 2)
    # the cached labels are the teacher's outputs on every training text, the transfer set's included
    batches = list(dm.train_eval_dataloader())
    outputs = torch.cat([student.teacher_source.forward(b, TeacherRequest()).logits for b in batches])
    order = torch.cat([b["example_ids"] for b in batches])
    torch.testing.assert_close(stored["logits"][order], outputs, rtol=1e-5, atol=1e-5)

    # a second student on the same data and teacher reads them: the teacher never runs on the training set
    again = tiny_student(teacher, data(tmp_path, spec), distillation="tang", student_config=None,
                         student_model=TEXTCNN, cache_dir=str(store))  # fmt: skip

    def no_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its labels are cached")

    again.teacher_source.forward = no_forward
    tiny_trainer(max_steps=2).fit(again, datamodule=data(tmp_path, spec))
    assert "Teacher labels" not in capfd.readouterr().err


def test_an_example_another_data_set_labelled_is_not_labelled_again(tmp_path: Path) -> None:
    """The logits are also kept by input: a second data set of the same teacher (here the unlabelled set
    with half of the training split: another data fingerprint) reads its examples' labels from there."""
    teacher = train_tiny_teacher(
        str(tmp_path / "teacher.ckpt"), data(tmp_path, None, cache="t", target_domain=None)
    )
    spec = {"class_path": "unlabeled", "init_args": {"files": unlabeled_files(tmp_path)}}
    store = tmp_path / "labels"
    first = tiny_student(teacher, data(tmp_path, spec), distillation="tang", student_config=None,
                         student_model=TEXTCNN, cache_dir=str(store))  # fmt: skip
    tiny_trainer(max_steps=1).fit(first, datamodule=data(tmp_path, spec))
    [by_input] = store.glob("teacher-input-logits-*.pt")
    stored = torch.load(by_input, weights_only=True)
    half = data(tmp_path, spec, train_fraction=0.5)
    assert half.data_fingerprint != data(tmp_path, spec).data_fingerprint
    assert len(stored["keys"]) >= half.num_train_ids - half.num_pooled_train  # the transfer set's inputs
    second = tiny_student(teacher, half, distillation="tang", student_config=None, student_model=TEXTCNN,
                          cache_dir=str(store))  # fmt: skip
    calls = []
    original = second.teacher_source.forward
    second.teacher_source.forward = lambda batch, request: (
        calls.append(len(batch["input_ids"])) or original(batch, request)
    )
    tiny_trainer(max_steps=1).fit(second, datamodule=half)
    assert calls == []  # every example of the second data set was labelled by the first


def test_the_transfer_set_study_config_plans_its_rows_on_the_benchmarks_teachers() -> None:
    from metakd import pipeline

    configs = Path(__file__).resolve().parents[1] / "configs" / "amazon"
    config = pipeline.load_pipeline_config(configs / "tiny_transfer.yaml")
    benchmark = pipeline.load_pipeline_config(configs / "benchmark.yaml")
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    teachers = {"teacher/mixed", "teacher/meta"}
    assert {name for name, cell in cells.items() if cell.kind == "teacher"} == teachers
    for teacher in teachers:  # the same cells as the benchmark's: reused from the store
        assert pipeline.cell_key(config, 3, teacher) == pipeline.cell_key(benchmark, 3, teacher)
    expected = {"textcnn_pc128_mse_unlabeled": ("mixed", {"class_path": "unlabeled"}),
                "bilstm_mse_tang": ("mixed", {"class_path": "tang", "per_example": 20})}  # fmt: skip
    for row, (teacher, augment) in expected.items():
        cell = pipeline.cell_config(config, 1, cells[f"student/{row}/books"])
        assert cell["data"]["init_args"]["augment"] == augment
        assert cell["model"]["init_args"]["distillation"] == "tang"
        assert cell["model"]["init_args"]["teacher_ckpt"] == str(
            pipeline.best_checkpoint(config, 1, f"teacher/{teacher}")
        )
    # the slice that was run (tiny_slice.yaml) reads the same cells
    ran = pipeline.load_pipeline_config(configs / "tiny_slice.yaml")
    for name in ("student/textcnn_pc128_none/books", "student/textcnn_pc128_metakd_mse_transfer/kitchen"):
        assert pipeline.cell_key(ran, 2, name) == pipeline.cell_key(config, 2, name)
    cell = pipeline.cell_config(config, 1, cells["student/textcnn_pc128_metakd_mse_transfer/dvd"])
    meta = str(pipeline.best_checkpoint(config, 1, "teacher/meta"))
    assert cell["model"]["init_args"]["teacher_ckpt"] == meta  # the transfer set reads the student's teacher
    assert cell["data"]["init_args"]["augment"] == {"class_path": "metakd_transfer", "per_example": 3,
                                                    "init_args": {"teacher_ckpt": meta}}  # fmt: skip
