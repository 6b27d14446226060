"""Bad input to the datamodules fails early with a DataError that says what and where."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from datamodules import AmazonReviewsDataModule, DataError, JsonlDataModule, MNLIDataModule
from metakd.backbones import BackboneError


def write_lines(path: Path, lines: list[str]) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def good_records(n: int = 6) -> list[dict]:
    return [
        {"text": f"text {i}", "label": ["neg", "pos"][i % 2], "domain": ["a", "b"][i // 3 % 2]}
        for i in range(n)
    ]


def jsonl_lines(records: list[dict]) -> list[str]:
    return [json.dumps(r) for r in records]


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines = jsonl_lines(good_records())
    lines.insert(3, '{"text": "broken", "label": "neg",')
    path = write_lines(tmp_path / "bad.jsonl.gz", lines)
    with pytest.raises(DataError, match=re.escape(f"{path}:4: malformed JSON")):
        JsonlDataModule(train_file=path)


def test_non_object_json_line(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", jsonl_lines(good_records()) + ["[1, 2]"])
    with pytest.raises(DataError, match=re.escape(f"{path}:7: expected a JSON object, got list")):
        JsonlDataModule(train_file=path)


def test_missing_field_names_file_line_field_and_present_fields(tmp_path):
    records = good_records()
    del records[2]["label"]
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(records))
    with pytest.raises(DataError) as err:
        JsonlDataModule(train_file=path)
    message = str(err.value)
    assert f"{path}:3:" in message and "missing field 'label'" in message
    assert "fields present: ['domain', 'text']" in message


def test_missing_custom_field_and_csv_column(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(good_records()))
    with pytest.raises(DataError, match=r"c\.jsonl:1: missing field 'sentence'; fields present: \['domain'"):
        JsonlDataModule(train_file=path, text_field="sentence")
    csv_path = write_lines(tmp_path / "c.csv", ["text,label", "hello,neg", "bye,pos"])
    with pytest.raises(
        DataError, match=r"c\.csv:2: missing field 'domain'; fields present: \['label', 'text'\]"
    ):
        JsonlDataModule(train_file=csv_path)


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_empty_text_is_refused_with_file_line_and_field(tmp_path, blank):
    records = good_records()
    records[2]["text"] = blank
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(records))
    message = f"{path}:3: field 'text' is empty ({blank!r}); every example needs a text"
    with pytest.raises(DataError, match=re.escape(message)):
        JsonlDataModule(train_file=path)


def test_empty_second_text_of_a_pair_is_refused(tmp_path):
    records = good_records()
    hyps = ["" if i == 4 else "a hypothesis" for i in range(len(records))]
    rows = [f"a premise,{h},{r['label']},{r['domain']}" for h, r in zip(hyps, records)]
    path = write_lines(tmp_path / "pairs.csv.gz", ["text,hyp,label,domain", *rows])
    with pytest.raises(DataError, match=re.escape(f"{path}:6: field 'hyp' is empty ('')")):
        JsonlDataModule(train_file=path, text_pair_field="hyp")


def test_shipped_corpora_have_no_empty_text():
    """Empty texts are refused, so the shipped corpora must have none (they load: every text checked)."""
    assert len(AmazonReviewsDataModule().raw_splits()["train"]) == 6480
    assert sum(len(rows) for rows in MNLIDataModule().raw_splits().values()) == 25000


def test_label_outside_label_set(tmp_path):
    records = good_records()
    records[4]["label"] = "meh"
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(records))
    with pytest.raises(DataError) as err:
        JsonlDataModule(train_file=path, label_names=["neg", "pos"])
    message = str(err.value)
    assert f"{path}:5:" in message and "'meh'" in message and "0='neg', 1='pos'" in message


def test_integer_label_out_of_range_in_csv(tmp_path):
    path = write_lines(tmp_path / "c.csv", ["text,label,domain", "x,0,a", "y,1,a", "z,2,b"])
    with pytest.raises(DataError, match=re.escape(f"{path}:4: label ('label') 2 is not in the label set")):
        JsonlDataModule(train_file=path, label_names=["neg", "pos"])


def test_mixed_label_kinds_need_label_names(tmp_path):
    records = good_records()
    records[1]["label"] = 1
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(records))
    with pytest.raises(DataError, match=r":2: label 1 is an index but other labels are names"):
        JsonlDataModule(train_file=path)


def test_unknown_target_domain_lists_known_domains():
    with pytest.raises(
        DataError, match=re.escape("unknown target_domain 'toys'; known domains: ['books', 'dvd'")
    ):
        AmazonReviewsDataModule(target_domain="toys")
    with pytest.raises(DataError, match="it is in the corpus but not in `domains`"):
        AmazonReviewsDataModule(domains=["books", "dvd"], target_domain="kitchen")


def test_unknown_domain_in_domains(tmp_path):
    with pytest.raises(DataError, match=re.escape("no examples for domain(s) ['toys']")):
        MNLIDataModule(domains=["fiction", "toys"])
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(good_records()))
    with pytest.raises(
        DataError, match=re.escape("no examples for domain(s) ['c']; the corpus's domains are ['a', 'b']")
    ):
        JsonlDataModule(train_file=path, domains=["a", "c"])


def test_domain_without_training_examples(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", jsonl_lines(good_records()))
    test = write_lines(
        tmp_path / "test.jsonl", jsonl_lines([dict(r, domain="zeta") for r in good_records(2)])
    )
    dm = JsonlDataModule(train_file=train, val_file=train, test_file=test)
    assert dm.domain_names == ["a", "b", "zeta"]
    with pytest.raises(DataError, match="domain 'zeta' has no training examples"):
        dm.raw_splits()


def test_mnli_genre_without_examples(tmp_path):
    rows = [{"premise": f"p {i}", "hypothesis": "h", "label": i % 3, "genre": "fiction"} for i in range(30)]
    write_lines(tmp_path / "train.jsonl", jsonl_lines(rows))
    write_lines(tmp_path / "dev_matched.jsonl", jsonl_lines(rows))
    with pytest.raises(DataError, match="train.jsonl: genre 'government' has no examples"):
        MNLIDataModule(data_dir=str(tmp_path)).raw_splits()
    assert (
        sum(MNLIDataModule(data_dir=str(tmp_path), domains=["fiction"]).pooled_split_sizes()["test"].values())
        == 30
    )


def test_mnli_unknown_genre_and_missing_file(tmp_path):
    rows = [{"premise": "p", "hypothesis": "h", "label": "neutral", "genre": "letters"}]
    write_lines(tmp_path / "train.jsonl", jsonl_lines(rows))
    write_lines(tmp_path / "dev_matched.jsonl", jsonl_lines(rows))
    with pytest.raises(
        DataError, match=r"train\.jsonl:1: unknown genre 'letters'; known genres: \['fiction'"
    ):
        MNLIDataModule(data_dir=str(tmp_path)).raw_splits()
    with pytest.raises(DataError, match="no dev_matched.jsonl or dev_matched.jsonl.gz found"):
        (tmp_path / "dev_matched.jsonl").unlink()
        MNLIDataModule(data_dir=str(tmp_path)).raw_splits()


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.jsonl.gz", "empty.csv"])
def test_empty_file_is_named(tmp_path, name):
    path = write_lines(tmp_path / name, ["", "  "] if name.endswith("l") else [])
    with pytest.raises(DataError, match=re.escape(f"{path}: the file is empty")):
        JsonlDataModule(train_file=path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        JsonlDataModule(train_file=str(tmp_path / "nope.jsonl"))
    path = write_lines(tmp_path / "data.txt", jsonl_lines(good_records()))
    with pytest.raises(DataError, match="cannot tell the file format"):
        JsonlDataModule(train_file=path)


def test_too_few_examples_to_carve_a_stratified_split(tmp_path):
    path = write_lines(tmp_path / "tiny.jsonl", jsonl_lines(good_records(4)))
    with pytest.raises(DataError, match="cannot split off a stratified 10%"):
        JsonlDataModule(train_file=path).raw_splits()


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, 2])
def test_train_fraction_outside_unit_interval(fraction):
    with pytest.raises(DataError, match=re.escape(f"train_fraction must be in (0, 1], got {fraction!r}")):
        AmazonReviewsDataModule(train_fraction=fraction)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("max_length", 1, "max_length must be an integer >= 4, got 1"),
        (
            "max_length",
            100000,
            "max_length is 100000, more than the 512 positions backbone 'minilm-l6' reads (its "
            "max_position_embeddings); use at most 512",
        ),
        ("num_workers", -1, "num_workers must be an integer >= 0, got -1"),
    ],
)
def test_loader_options_are_checked(option, value, message):
    with pytest.raises(DataError, match=re.escape(message)):
        AmazonReviewsDataModule(**{option: value})


def test_train_fraction_one_is_accepted():
    assert AmazonReviewsDataModule(train_fraction=1).train_fraction == 1.0


def test_unloadable_backbone_propagates_backbone_error(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", jsonl_lines(good_records(40)))
    dm = JsonlDataModule(train_file=path, backbone="no-such-org/no-such-model", cache_dir=str(tmp_path / "c"))
    with pytest.raises(BackboneError) as err:
        dm.setup("fit")
    assert type(err.value) is BackboneError
    assert "no-such-org/no-such-model" in str(err.value) and "minilm-l6" in str(err.value)
    assert not any("/datasets/" in str(entry.path) for entry in err.traceback)
    assert not (tmp_path / "c").exists()  # failed before any tokenising or caching
