"""The cell store (metakd/pipeline/cellstore.py and the pipeline's use of it): a cell's key leaves out what
changes no number; predictions and result files round-trip; a teacher shared by two configs is trained
once; every cell is tested on each of the config's test sets; a teacher whose checkpoint is missing
locally is trained again and checked against its committed result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_pipeline import tiny_pipeline_config

from metakd import pipeline
from metakd.pipeline import cellstore


def test_identity_leaves_out_what_changes_no_number(tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = {
        "seed_everything": 1,
        "trainer": {
            "max_epochs": 3,
            "default_root_dir": str(store / "abc"),
            "enable_progress_bar": True,
            "callbacks": [
                {"class_path": "metakd.pipeline.TestMetricsWriter", "init_args": {"path": "x"}},
                {"class_path": "pytorch_lightning.callbacks.EarlyStopping", "init_args": {"patience": 3}},
            ],
        },
        "model": {"init_args": {"teacher_ckpt": str(store / "t1" / "best.ckpt"), "cache_dir": "/somewhere"}},
        "data": {
            "init_args": {"num_workers": 4, "cache_dir": "/else", "test_set": "test_large", "max_length": 64}
        },
    }
    plain = cellstore.identity(config, store)
    assert plain == {
        "seed_everything": 1,
        "trainer": {
            "max_epochs": 3,
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.EarlyStopping", "init_args": {"patience": 3}}
            ],
        },
        "model": {"init_args": {"teacher_ckpt": "@store/t1/best.ckpt"}},
        "data": {"init_args": {"max_length": 64}},
    }
    same = json.loads(json.dumps(config))
    same["trainer"]["enable_progress_bar"] = False
    same["data"]["init_args"]["num_workers"] = 0
    assert cellstore.cell_key(same, store) == cellstore.cell_key(config, store)
    other = json.loads(json.dumps(config))
    other["trainer"]["max_epochs"] = 4
    assert cellstore.cell_key(other, store) != cellstore.cell_key(config, store)
    assert cellstore.fill_store(plain, tmp_path / "elsewhere")["model"]["init_args"]["teacher_ckpt"] == str(
        tmp_path / "elsewhere" / "t1" / "best.ckpt"
    )


def test_predictions_pack_and_unpack(tmp_path: Path) -> None:
    rows = [
        {"example_id": 7, "domain": "dvd", "label": 1, "pred": 0, "logits": [0.1, -0.1]},
        {"example_id": 2, "domain": "books", "label": 0, "pred": 0},
    ]
    packed = cellstore.pack_predictions(rows, ["books", "dvd"])
    assert packed == {"ids": "2,7", "domain": "01", "label": "01", "pred": "00"}
    assert cellstore.id_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and cellstore.id_ranges([]) == ""
    assert cellstore.parse_id_ranges("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert cellstore.parse_id_ranges([3, 4]) == [3, 4]  # the first result files' form
    assert cellstore.unpack_predictions(packed, ["books", "dvd"]) == [
        {"example_id": 2, "domain": "books", "label": 0, "pred": 0},
        {"example_id": 7, "domain": "dvd", "label": 1, "pred": 0},
    ]
    many = cellstore.pack_predictions(
        [{"example_id": 0, "domain": "books", "label": 12, "pred": 3}], ["books"]
    )
    assert many["label"] == [12] and many["pred"] == "3"  # a class index over 9: a list
    path = cellstore.write_result_file(
        tmp_path, "k1", {"metrics": {"test/acc": 0.5}, "predictions": {"test": packed}}
    )
    text = path.read_text()
    assert json.loads(text)["predictions"]["test"] == packed and json.loads(text)["key"] == "k1"
    assert sum('"ids"' in line for line in text.splitlines()) == 1  # one line per test set
    assert cellstore.read_result_file(tmp_path, "k1")["format"] == cellstore.RESULT_FORMAT
    assert cellstore.read_result_file(tmp_path, "nothing") is None


def two_configs(tmp_path: Path) -> tuple[Path, Path]:
    """Two studies of one tiny corpus: `a` (no KD and Meta-KD) and `b` (vanilla KD from the mixed teacher
    and Meta-KD with another student budget), each with a large test set; both need the same meta-teacher."""
    base = tiny_pipeline_config(tmp_path)
    config = yaml.safe_load(base.read_text())
    large = tmp_path / "large.jsonl"
    words = {"neg": "bad awful", "pos": "good great"}
    large.write_text(
        "".join(
            json.dumps({"text": f"the {d} is {words[y]} {i}", "label": y, "domain": d}) + "\n"
            for d in ("books", "dvd", "music")
            for i, y in enumerate(["pos", "neg"] * 5)
        ),
        encoding="utf-8",
    )
    for kind in ("teacher", "student"):
        config[kind]["data"]["init_args"]["extra_test_files"] = {"test_large": str(large)}
    config.update(studies=["main"], test_sets=["test", "test_large"], in_process=True)
    a, b = dict(config, name="a", methods=["none", "meta"]), dict(config, name="b", methods=["meta"])
    b["quick"] = json.loads(json.dumps(config["quick"]))
    b["quick"]["student"]["trainer"]["max_epochs"] = 3  # another student budget, the same teacher
    paths = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path, payload in zip(paths, (a, b)):
        path.write_text(yaml.safe_dump(payload), encoding="utf-8")
    return paths


def test_a_teacher_shared_by_two_configs_is_trained_once(tmp_path: Path, capfd) -> None:
    a_path, b_path = two_configs(tmp_path)
    assert pipeline.main(["--config", str(a_path), "--quick", "--domains", "books"]) == 0
    out_a = capfd.readouterr().out
    # every model shows its progress on the pipeline's output, labelled by its cell (lines: not a terminal)
    for line in (
        "1/teacher/meta: Transferability t_i (pre-trained encoder): 9/9",
        "1/teacher/meta: Epoch 1/1: 1/1",
        "1/teacher/meta test_large: Testing DataLoader 0: ",
        "1/student/meta/books: Teacher labels: ",
        "1/student/meta/books: Epoch 2/2: 1/1",
    ):
        assert line in out_a, out_a
    assert "\r" not in out_a
    assert pipeline.main(["--config", str(b_path), "--quick", "--domains", "books"]) == 0
    out_b = capfd.readouterr().out
    teacher_line = [line for line in out_b.splitlines() if "teacher/meta" in line and line.startswith("[")]
    assert teacher_line and " skipped " in teacher_line[0]  # config b reuses config a's teacher
    assert " done " in [line for line in out_a.splitlines() if "teacher/meta" in line and line[0] == "["][0]
    a = pipeline.load_pipeline_config(a_path, quick=True)
    b = pipeline.load_pipeline_config(b_path, quick=True)
    assert pipeline.cell_key(a, 1, "teacher/meta") == pipeline.cell_key(b, 1, "teacher/meta")
    assert (
        pipeline.cell_dir(a, 1, "teacher/meta").resolve() == pipeline.cell_dir(b, 1, "teacher/meta").resolve()
    )
    assert pipeline.cell_key(a, 1, "student/meta/books") != pipeline.cell_key(b, 1, "student/meta/books")
    files = sorted(pipeline.results_store(a).glob("*.json"))
    kinds = [json.loads(p.read_text())["kind"] for p in files]
    assert kinds.count("teacher") == 1 and kinds.count("student") == 2 + 1  # a: none, meta; b: meta
    # each cell was tested on both test sets, with per-example predictions and no machine paths
    result = pipeline.read_result(b, 1, "student/meta/books")
    assert set(result["test_sets"]) == {"test", "test_large"}
    large = pipeline.cell_predictions(result, "test_large")
    assert len(large) == 10 and {r["domain"] for r in large} == {"books"}
    teacher = pipeline.read_result(a, 1, "teacher/meta")
    assert {r["domain"] for r in pipeline.cell_predictions(teacher, "test_large")} >= {"books", "dvd"}
    assert str(tmp_path / "store") not in json.dumps(result["config"])
    assert str(tmp_path / "runs") not in json.dumps(result["config"]) and result["config"]["model"][
        "init_args"
    ]["teacher_ckpt"].startswith("@store/")
    # the report: main table and intervals on test_large, the test split's table too
    summary = json.loads((tmp_path / "results" / "b_quick.json").read_text())
    assert summary["test_set"] == "test_large" and set(summary["by_test_set"]) == {"test", "test_large"}
    markdown = (tmp_path / "results" / "b_quick.md").read_text()
    assert "on `test_large`" in markdown and "## Test accuracy on `test`" in markdown
    # rebuilt from the result files alone: no local store, no runs
    shutil.rmtree(tmp_path / "store")
    shutil.rmtree(tmp_path / "runs")
    before = json.loads((tmp_path / "results" / "a_quick.json").read_text())
    assert pipeline.main(["--config", str(a_path), "--quick", "--report-only", "--domains", "books"]) == 0
    again = json.loads((tmp_path / "results" / "a_quick.json").read_text())
    assert again["main"] == before["main"] and again["comparisons"] == before["comparisons"]


def test_a_teacher_missing_here_is_trained_again_and_checked(tmp_path: Path, capsys) -> None:
    a_path, b_path = two_configs(tmp_path)
    assert pipeline.main(["--config", str(a_path), "--quick", "--methods", "meta", "--domains", "books"]) == 0
    a = pipeline.load_pipeline_config(a_path, quick=True)
    teacher_dir = pipeline.store_path(a, 1, "teacher/meta")
    committed = pipeline.read_result(a, 1, "teacher/meta")
    shutil.rmtree(pipeline.store_dir(a))  # another machine: only the committed result files are here
    capsys.readouterr()
    assert pipeline.main(["--config", str(b_path), "--quick", "--domains", "books"]) == 0  # needs the teacher
    assert (teacher_dir / "checkpoints" / "best.ckpt").is_file()
    retrained = json.loads((teacher_dir / pipeline.RETRAINED_FILE).read_text())
    assert retrained["dev_curve"]["end"]["best_score"] == committed["dev_curve"]["end"]["best_score"]
    # a committed result that the retrained teacher does not match stops its students, with both numbers
    path = cellstore.result_path(pipeline.results_store(a), teacher_dir.name)
    tampered = json.loads(path.read_text())
    tampered["dev_curve"]["end"]["best_score"] = 0.123
    path.write_text(json.dumps(tampered), encoding="utf-8")
    shutil.rmtree(pipeline.store_dir(a))
    capsys.readouterr()
    assert (
        pipeline.main(["--config", str(a_path), "--quick", "--methods", "none", "meta", "--seeds", "1"]) == 1
    )
    out = capsys.readouterr().out
    assert "does not match its committed result" in out and "0.123" in out


@pytest.mark.parametrize("bad", [[], ["test", "test"], "test"])
def test_test_sets_are_checked(tmp_path: Path, bad) -> None:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path))
    config["test_sets"] = bad
    with pytest.raises(pipeline.PipelineError, match="`test_sets` must be a list of distinct"):
        pipeline.check_choices("bench.yaml", config)
