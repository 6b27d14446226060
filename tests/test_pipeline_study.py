"""The benchmark pipeline's study features: the shared data block, budgets A and B, the ablation study,
cell selection, what decides reuse, checkpoint pruning, dev curves, and the report's paired intervals,
costs and teacher warnings (computed by hand from written cells)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import ToyMultiDomainDataModule, tiny_teacher, tiny_trainer
from test_pipeline import tiny_pipeline_config

from metakd import pipeline
from metakd.pipeline import cellstore


def study_config(tmp_path: Path, **changes) -> dict:
    config = pipeline.load_pipeline_config(tiny_pipeline_config(tmp_path))
    config.update(changes)
    return config


def test_the_shared_data_block_is_the_default_of_teacher_and_student(tmp_path: Path) -> None:
    path = tiny_pipeline_config(tmp_path)
    raw = json.loads(json.dumps(pipeline.read_extended(path)))
    data = raw["teacher"].pop("data")
    raw["student"].pop("data")
    raw["data"] = data
    raw["student"]["data"] = {"init_args": {"batch_size": 4}}  # a cell kind overrides one key
    shared = tmp_path / "shared.yaml"
    shared.write_text(json.dumps(raw), encoding="utf-8")
    config = pipeline.load_pipeline_config(shared)
    assert config["teacher"]["data"] == data
    assert config["student"]["data"]["init_args"] == {**data["init_args"], "batch_size": 4}
    assert config["student"]["data"]["class_path"] == "datamodules.JsonlDataModule"
    # the cells of the shared-block config equal those of the original (data under both kinds)
    original = pipeline.load_pipeline_config(path)
    original["student"] = pipeline.deep_merge(original["student"], {"data": {"init_args": {"batch_size": 4}}})
    for cell in pipeline.plan_cells(config):
        assert pipeline.cell_config(config, 1, cell) == pipeline.cell_config(original, 1, cell), cell.name


def test_budget_a_gives_staged_students_their_intermediate_epochs_on_top(tmp_path: Path) -> None:
    config = study_config(tmp_path, studies=["main"], budgets=["A", "B"])
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    epochs = {
        name: pipeline.cell_config(config, 1, cell)["trainer"]["max_epochs"] for name, cell in cells.items()
    }
    base, stage = 3, 1  # the tiny config: student max_epochs 3, intermediate_epochs 1
    for domain in ("books", "dvd"):
        for method in ("tinybert", "meta"):
            assert (
                epochs[f"student/{method}_budgetA/{domain}"] == base + stage
            )  # 1 intermediate + 3 prediction
            assert epochs[f"student/{method}/{domain}"] == base  # budget B: 1 + 2
        for method in ("none", "vanilla"):  # the same cell under both budgets
            assert epochs[f"student/{method}/{domain}"] == base
            assert f"student/{method}_budgetA/{domain}" not in cells
    assert cells["student/meta_budgetA/dvd"].needs == ["teacher/meta"]
    rows = pipeline.table_rows(config, set(cells))
    assert [(r.key, r.budget) for r in rows if r.kind == "student"] == [
        ("student_none", None),
        ("student_vanilla", None),
        ("student_tinybert@A", "A"),
        ("student_tinybert", "B"),
        ("student_meta@A", "A"),
        ("student_meta", "B"),
    ]
    config["student"]["model"]["init_args"].pop("intermediate_epochs")
    with pytest.raises(pipeline.PipelineError, match="budget A needs"):
        pipeline.plan_cells(config)


def test_the_ablation_study_plans_extra_teachers_and_student_rows(tmp_path: Path) -> None:
    config = study_config(
        tmp_path,
        studies=["ablation"],
        extra_teachers={
            "mtl": {"label": "Teacher: multi-task", "model": {"class_path": "metakd.MultiTaskTeacher"}},
            "no_dl": {"model": {"init_args": {"domain_loss": "none"}}},
        },
        variants={
            "no_tk": {"method": "meta", "label": "no TK", "model": {"use_transferable": False}},
            "mtl_vanilla": {"method": "vanilla", "teacher": "mtl"},
            "from_mixed": {"method": "meta", "teacher": "mixed"},
        },
        ablations=["no_tk", "mtl_vanilla", "from_mixed"],
        ablation_budget="A",
    )
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    assert [n for n, c in cells.items() if c.kind == "teacher"] == [
        "teacher/mtl",
        "teacher/no_dl",
        "teacher/meta",
        "teacher/mixed",
    ]
    no_tk = pipeline.cell_config(config, 1, cells["student/no_tk_budgetA/books"])
    assert no_tk["model"]["init_args"]["use_transferable"] is False
    assert no_tk["model"]["init_args"]["distillation"] == "meta"
    assert no_tk["model"]["init_args"]["teacher_ckpt"] == str(
        pipeline.best_checkpoint(config, 1, "teacher/meta")
    )
    assert no_tk["trainer"]["max_epochs"] == 4  # ablation_budget A for a staged method
    mtl = pipeline.cell_config(config, 1, cells["student/mtl_vanilla/dvd"])  # not staged: no budget suffix
    assert mtl["model"]["init_args"]["teacher_ckpt"] == str(
        pipeline.best_checkpoint(config, 1, "teacher/mtl")
    )
    assert mtl["trainer"]["max_epochs"] == 3
    assert cells["student/from_mixed_budgetA/dvd"].needs == ["teacher/mixed"]
    teacher = pipeline.cell_config(config, 1, cells["teacher/mtl"])
    assert teacher["model"]["class_path"] == "metakd.MultiTaskTeacher" and "label" not in teacher
    rows = {r.key: r for r in pipeline.table_rows(config, set(cells))}
    assert rows["teacher_mtl"].label == "Teacher: multi-task"
    assert rows["teacher_no_dl"].label == "Teacher: no_dl"
    assert rows["student_no_tk@A"].label == "Student: no TK (meta-teacher)"
    assert rows["student_no_tk@A"].study == "ablation" and rows["student_no_tk@A"].method == "meta"
    assert rows["student_mtl_vanilla"].label == "Student: vanilla KD (multi-task)"
    assert rows["student_mtl_vanilla"].cells == {d: f"student/mtl_vanilla/{d}" for d in ("books", "dvd")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budgets": ["C"]}, "`budgets` must be"),
        ({"budgets": ["A", "A"]}, "`budgets` must be"),
        ({"extra_teachers": {"mixed": {}}}, "clash"),
        ({"extra_teachers": {"none": {}}}, "clash"),
        ({"ablations": ["nope"]}, "neither a `variants` entry nor a registry method"),
        ({"variants": {"x": {"method": "meta", "teacher": "nope"}}, "ablations": ["x"]}, "an extra teacher"),
        ({"keep_checkpoints": {"teacher": "none"}}, "keep_checkpoints"),
        ({"studies": ["main", "extra"]}, "unknown studies"),
    ],
)
def test_bad_study_settings_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    config = study_config(tmp_path, **change)
    with pytest.raises(pipeline.PipelineError, match=message):
        pipeline.check_choices("bench.yaml", config)


def test_kinds_and_cell_patterns_select_what_runs(tmp_path: Path) -> None:
    config = study_config(tmp_path, studies=["main"])
    cells = pipeline.plan_cells(config)
    names = [c.name for c in cells if pipeline.selected(c, ["teacher"], None)]
    assert names == ["teacher/single/books", "teacher/single/dvd", "teacher/mixed", "teacher/meta"]
    names = [c.name for c in cells if pipeline.selected(c, None, ["teacher/single/*", "student/meta/dvd"])]
    assert names == ["teacher/single/books", "teacher/single/dvd", "student/meta/dvd"]
    assert not [c for c in cells if pipeline.selected(c, ["student"], ["teacher/*"])]


def test_only_the_pipelines_own_callbacks_are_left_out_of_reuse(tmp_path: Path) -> None:
    config = study_config(tmp_path, studies=["main"])
    cell = pipeline.plan_cells(config)[0]
    full = pipeline.cell_config(config, 1, cell)
    writers = [c["class_path"] for c in full["trainer"]["callbacks"]]
    assert writers == [
        f"metakd.pipeline.{w}" for w in ("TestMetricsWriter", "DevCurveWriter", "PredictionsWriter")
    ]
    fewer = json.loads(json.dumps(full))
    fewer["trainer"]["callbacks"] = fewer["trainer"]["callbacks"][:1]  # a cell from before a new recorder
    assert cellstore.identity(fewer) == cellstore.identity(full)
    stopping = json.loads(json.dumps(full))
    stopping["trainer"]["callbacks"].append(
        {"class_path": "pytorch_lightning.callbacks.EarlyStopping", "init_args": {"monitor": "val/acc"}}
    )
    assert cellstore.identity(stopping) != cellstore.identity(full)


def test_prune_checkpoints_keeps_what_was_asked(tmp_path: Path) -> None:
    for keep, left in (
        ("all", {"best.ckpt", "last.ckpt", "best-0-1.ckpt"}),
        ("best", {"best.ckpt"}),
        ("none", None),
    ):
        folder = tmp_path / keep / "checkpoints"
        folder.mkdir(parents=True)
        for name in ("best.ckpt", "last.ckpt", "best-0-1.ckpt"):
            (folder / name).write_text("x")
        pipeline.prune_checkpoints(tmp_path / keep, keep)
        assert (left is None and not folder.exists()) or {p.name for p in folder.iterdir()} == left


def test_dev_curve_records_every_check_and_the_early_stop(tmp_path: Path) -> None:
    from pytorch_lightning.callbacks import EarlyStopping

    dm = ToyMultiDomainDataModule()
    path = tmp_path / "dev_curve.json"
    # min_delta 1: no check after the first can improve, so patience 1 stops the fit at the second check
    stop = EarlyStopping(monitor="val/acc", mode="max", patience=1, min_delta=1.0)
    trainer = tiny_trainer(
        max_steps=6,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        callbacks=[pipeline.DevCurveWriter(str(path)), stop],
    )
    trainer.fit(tiny_teacher(dm, weighting="none", domain_loss="none"), dm)
    curve = json.loads(path.read_text())
    assert [c["step"] for c in curve["checks"]] == [1, 2]
    assert {"val/acc", "val/loss", "val/acc_dom0"} <= set(curve["checks"][0])
    assert (
        curve["end"]["early_stopped"] and curve["end"]["global_step"] == 2 and curve["end"]["max_steps"] == 6
    )
    # a resumed fit keeps the checks already written
    again = pipeline.DevCurveWriter(str(path))
    again.on_fit_start(None, None)
    assert sorted(again.checks) == [1, 2]


def write_cell(
    config: dict, seed: int, cell: pipeline.Cell, metrics: dict, cpu: float, curve=None, rows=None
) -> None:
    payload = {
        "cell": cell.name,
        "kind": cell.kind,
        "seed": seed,
        "info": cell.info,
        "metrics": metrics,
        "seconds": cpu / 2,
        "cpu_seconds": cpu,
        "dev_curve": curve,
    }
    if rows is not None:
        names = list(config["domains"])
        payload["predictions"] = {"test": {"domain_names": names, **cellstore.pack_predictions(rows, names)}}
    cellstore.write_result_file(
        pipeline.results_store(config), pipeline.cell_key(config, seed, cell), payload
    )


def predictions(domain: str, right: list[bool]) -> list[dict]:
    return [
        {"example_id": i, "domain": domain, "label": 1, "pred": int(r), "logits": [0, 0]}
        for i, r in enumerate(right)
    ]


def test_report_intervals_costs_and_teacher_warnings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = study_config(tmp_path, studies=["main"], methods=["none", "meta"], seeds=[1, 2])
    cells = {cell.name: cell for cell in pipeline.plan_cells(config)}
    assert set(cells) == {
        "teacher/meta",
        "student/none/books",
        "student/none/dvd",
        "student/meta/books",
        "student/meta/dvd",
    }
    for seed in (1, 2):
        # teacher: dev 0.7 on books (below the no-KD student's 0.8), 0.9 on dvd; best check at step 100
        curve = {
            "checks": [
                {"step": 50, "val/acc": 0.6, "val/acc_books": 0.5, "val/acc_dvd": 0.7},
                {"step": 100, "val/acc": 0.8, "val/acc_books": 0.7, "val/acc_dvd": 0.9},
                {"step": 150, "val/acc": 0.8, "val/acc_books": 0.9, "val/acc_dvd": 0.7},
            ],
            "end": {"global_step": 150, "max_steps": 600, "early_stopped": True},
        }
        teacher_rows = predictions("books", [True] * 4) + predictions("dvd", [True] * 4)
        metrics = {"test/acc": 1.0, "test/acc_books": 1.0, "test/acc_dvd": 1.0}
        write_cell(config, seed, cells["teacher/meta"], metrics, 600.0, curve, teacher_rows)
        for domain in ("books", "dvd"):
            student_curve = {"checks": [{"step": 10, "val/acc": 0.8}, {"step": 20, "val/acc": 0.75}]}
            # books: Meta-KD right on all 4, no-KD on none; dvd: both right on the same 3 of 4
            meta = [True] * 4 if domain == "books" else [True, True, True, False]
            none = [False] * 4 if domain == "books" else [True, True, True, False]
            write_cell(config, seed, cells[f"student/meta/{domain}"], {"test/acc": sum(meta) / 4}, 60.0, None,
                       predictions(domain, meta))  # fmt: skip
            write_cell(config, seed, cells[f"student/none/{domain}"], {"test/acc": sum(none) / 4}, 30.0,
                       student_curve, predictions(domain, none))  # fmt: skip
    json_path, md_path = pipeline.write_results(config)
    summary = json.loads(json_path.read_text())
    (comparison,) = summary["comparisons"]
    assert (comparison["reference"], comparison["other"]) == ("student_meta", "student_none")
    # books: gap 1 in both seeds; dvd: gap 0: (1 + 0) / 2 = 0.5 on the average, with no spread at all
    average = comparison["intervals"]["average"]
    assert (average["diff"], average["low"], average["high"], average["significant"]) == (0.5, 0.5, 0.5, True)
    assert comparison["intervals"]["books"]["diff"] == 1.0 and comparison["intervals"]["books"]["significant"]
    assert comparison["intervals"]["dvd"]["diff"] == 0.0 and not comparison["intervals"]["dvd"]["significant"]
    assert average["n_strata"] == 4 and average["n_examples"] == 16
    # CPU minutes: meta students 2 x 60 s = 2 min per seed, its teacher 600 s = 10 min; no-KD 2 x 30 s
    costs = summary["cpu_minutes"]
    assert costs["student_meta"]["own"] == pytest.approx(2.0) and costs["student_meta"][
        "teachers"
    ] == pytest.approx(10.0)
    assert costs["student_none"]["own"] == pytest.approx(1.0) and costs["student_none"]["teachers"] == 0.0
    assert costs["teacher_meta"]["own"] == pytest.approx(10.0)
    # the teacher at its best check (step 100) is below the student's best dev (0.8) on books only
    warnings = summary["warnings"]
    assert len(warnings) == 2 and all("books" in w and "70.0%" in w and "80.0%" in w for w in warnings)
    curves = summary["teacher_curves"]["teacher/meta"]["1"]
    assert (curves["best_step"], curves["best_val_acc"], curves["last_step"]) == (100, 0.8, 150)
    markdown = md_path.read_text()
    row = "| B | Student: fine-tune, no KD | **+100.0 [+100.0, +100.0]** | +0.0 [+0.0, +0.0] |"
    assert row + " **+50.0 [+50.0, +50.0]** |" in markdown
    assert "| Student: Meta-KD (meta-teacher) | B | 2.0 (+10.0) |  |  |" in markdown
    assert "| Teacher: meta-teacher |  | 10.0 | 80.0 | 100 / 150 |" in markdown
    bundle = [json.loads(line) for line in gzip.open(summary["predictions_file"], "rt")]
    assert len(bundle) == 2 * (8 + 4 * 4) and {"seed", "cell", "example_id", "pred", "label"} <= set(
        bundle[0]
    )
    pipeline.main(["--config", str(tiny_pipeline_config(tmp_path)), "--report-only", "--studies", "main",
                   "--methods", "none", "meta", "--seeds", "1", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("WARNING: seed") == 2  # on the terminal too
