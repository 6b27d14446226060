"""The CPU plan (issue 21 item 3): work units and fits of the cost model by hand, its estimates within 30%
of the measured CPU time of synthetic finished cells, every cell's state (done, reusable, to run, trained
again for a checkpoint) in ``--plan``, the config's priority order, ``--max-cpu-minutes`` stopping before
the budget, and the run's ETA. Result files are written by hand: nothing here trains but one tiny fit."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import yaml
from helpers import REPO, ToyMultiDomainDataModule, tiny_teacher, tiny_trainer
from test_pipeline import tiny_pipeline_config

from metakd import pipeline
from metakd.pipeline import cellstore, costs, ledger
from metakd.pipeline.plan import ordered_jobs, priorities
from metakd.pipeline.progress import Progress


def plan_config(directory: Path, **changes) -> Path:
    """The tiny pipeline config (main study, budget A) with ``changes``, as a file."""
    path = tiny_pipeline_config(directory)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.update({"studies": ["main"], "budgets": ["A"], "seeds": [1], **changes})
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_result(
    config: dict, seed: int, name: str, cpu: float, made_for: str | None = None, **extra: object
) -> None:
    """A finished cell's result file, as the runner writes it (the parts the plan reads)."""
    cell = pipeline.planned_cell(config, name)
    payload = {
        "cell": name,
        "kind": cell.kind,
        "seed": seed,
        "info": cell.info,
        "metrics": {"test/acc": 0.5},
        "seconds": cpu / 2,
        "cpu_seconds": cpu,
        "config": pipeline.store.cell_identity(config, seed, cell),
        "requested_by": {"config": made_for or config["name"], "cell": name},
        **extra,
    }
    key = pipeline.cell_key(config, seed, cell)
    cellstore.write_result_file(pipeline.results_store(config), key, payload)


def test_work_units_and_fits_by_hand() -> None:
    sizes = costs.DataSizes()
    teacher = {"trainer": {"max_steps": 100}, "data": {"init_args": {"batch_size": 8, "max_length": 16}}}
    sizes.test[(costs.data_identity(teacher), "test")] = 30
    # capped in steps: 100 x 8 trained, 30 tested at a third: 16 x (800 + 10)
    assert costs.work_units("teacher", teacher, ["test"], sizes, 2) == pytest.approx(16 * 810)
    student = {
        "trainer": {"max_epochs": 3},
        "data": {"init_args": {"batch_size": 8, "max_length": 16, "target_domain": "books"}},
    }
    sizes.train[costs.data_identity(student)] = 50
    # 3 epochs of 50; the test split unseen: Amazon's 200 per domain, one domain
    assert costs.work_units("student", student, ["test"], sizes, 2) == pytest.approx(16 * (150 + 200 / 3))
    student["trainer"]["limit_train_batches"] = 4  # 4 batches of 8 an epoch
    assert costs.trained_examples("student", student, sizes, 2) == 3 * 32
    unseen = {"trainer": {"max_epochs": 2}, "data": {"init_args": {"train_fraction": 0.5, "batch_size": 8}}}
    assert costs.trained_examples("student", unseen, sizes, 4) == 2 * 0.5 * 1620 * 4  # pooled: 4 domains
    # least squares through (100, 60) and (200, 100): 20 s + 0.4 s a unit
    fit = costs.fit([(100.0, 60.0), (200.0, 100.0)], "family")
    assert (fit.overhead, fit.rate, fit.estimate(150.0)) == pytest.approx((20.0, 0.4, 80.0))
    # a negative overhead, or units too close to tell: the rate of the sums
    assert costs.fit([(100.0, 10.0), (200.0, 100.0)], "family").rate == pytest.approx(110 / 300)
    assert costs.fit([(100.0, 10.0), (110.0, 30.0)], "family").overhead == 0.0
    assert costs.CostModel([], 2).fit_for("teacher", teacher).rate == costs.DEFAULT_RATES["teacher"]


def test_estimates_are_within_30_percent_of_the_measured_cpu_time(tmp_path: Path) -> None:
    """Synthetic finished cells whose CPU time is a per-family rate (the meta-teacher 3x a plain one, Meta-KD
    students 2x no-KD ones) times their work, give or take 25%: the fitted estimates come within 30% of the
    measured time on average, and a cell still to run is estimated by its family's rate."""
    config = pipeline.load_pipeline_config(
        plan_config(
            tmp_path,
            methods=["none", "vanilla", "meta"],
            studies=["main", "scarcity"],
            seeds=[1, 2, 3],
            scarcity={"domain": "books", "methods": ["none", "meta"], "fractions": [0.25, 0.5, 1.0]},
        )  # fmt: skip
    )
    model = costs.CostModel([], len(config["domains"]))
    true_rate = {"teacher/meta": 3e-3, "teacher/mixed": 1e-3, "none": 1e-3, "vanilla": 1.5e-3, "meta": 2e-3}
    noise = random.Random(0)
    cells = pipeline.plan_cells(config)
    unfinished = (3, "student/meta_budgetA/dvd")
    finished = [(seed, c) for seed in (1, 2, 3) for c in cells if (seed, c.name) != unfinished]
    for seed, cell in finished:
        resolved = pipeline.store.cell_identity(config, seed, cell)
        units = model.units(cell.kind, resolved, config["test_sets"])
        rate = true_rate.get(cell.name) or true_rate[cell.info["method"]]
        write_result(config, seed, cell.name, round(rate * units * noise.uniform(0.75, 1.25), 1))
    model = ledger.cost_model(config)
    assert len(model.finished) == len(finished) and model.mean_error() < 0.30
    assert model.mean_error(leave_one_out=True) < 0.30  # each cell from the others, as one to run
    one_rate = [abs(model.kinds[c.kind].estimate(c.units) / c.cpu_seconds - 1) for c in model.finished]
    assert sum(one_rate) / len(one_rate) > 0.30  # one rate per kind would not do: the families matter
    entries = ledger.cpu_plan(config, cells, model)
    measured = [e for e in entries if e.state == "done"]
    assert len(measured) == len(finished)
    assert sum(abs(e.estimate - e.measured) / e.measured for e in measured) / len(measured) < 0.30
    (left,) = [e for e in entries if e.state == "to run"]
    resolved = pipeline.store.cell_identity(config, 3, left.cell)
    assert left.estimate == pytest.approx(2e-3 * model.units("student", resolved, ["test"]), rel=0.15)
    assert left.source == "family" and left.retrains == ["teacher/meta"]  # its checkpoint is not here
    (teacher,) = [e for e in entries if (e.seed, e.cell.name) == (3, "teacher/meta")]
    assert left.cost == pytest.approx(left.estimate + teacher.estimate)
    # a cell resumed by a later call measured only that call's CPU time: it is no evidence of its cost
    write_result(config, *unfinished, 1.0, cpu_incomplete=True)
    model = ledger.cost_model(config)
    assert len(model.finished) == len(finished) and model.mean_error(leave_one_out=True) < 0.30


def test_plan_states_retraining_and_totals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = plan_config(tmp_path, methods=["none", "meta"])
    config = pipeline.load_pipeline_config(path)
    write_result(config, 1, "teacher/meta", 600.0)  # done here, but its checkpoint is on another machine
    write_result(config, 1, "student/none/books", 60.0, made_for="another_study")
    write_result(config, 1, "student/none/dvd", 30.0)
    assert pipeline.main(["--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[3]: line for line in out.splitlines() if line.startswith("   1")}
    assert (
        "done; its checkpoint is not here: trained again for student/meta_budgetA/books"
        in lines["teacher/meta"]
    )
    assert lines["teacher/meta"].split()[5] == "10.0"  # the measured CPU minutes
    assert "reusable (made for another_study)" in lines["student/none/books"]
    assert lines["student/none/dvd"].split()[5:7] == ["0.5", "done"]
    assert "to run, after training teacher/meta again (+" in lines["student/meta_budgetA/books"]
    assert lines["student/meta_budgetA/dvd"].endswith("to run | needs teacher/meta")  # charged once
    assert "done: 2 cells, 10.5 CPU-min measured" in out and "reusable: 1 cells" in out
    assert "to run: 2 cells" in out and "(with 1 finished cells trained again" in out
    assert "priority 1: 2 cells to run" in out
    # the checkpoint here: nothing is trained again
    checkpoint = pipeline.best_checkpoint(config, 1, "teacher/meta")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    entries = ledger.cpu_plan(config, pipeline.plan_cells(config))
    assert not any(e.retrains or e.retrained_for for e in entries)


def test_priorities_join_the_plan_and_order_it(tmp_path: Path) -> None:
    groups = [
        {"name": "first", "rows": ["meta"], "seeds": [1]},
        {"rows": ["vanilla"]},
        {"teachers": ["single"], "studies": ["ablation"]},
    ]
    path = plan_config(
        tmp_path,
        methods=["none", "meta"],
        seeds=[1, 2],
        priorities=groups,
        extra_teachers={"no_dl": {"model": {"init_args": {"domain_loss": "none"}}}},
        variants={"from_no_dl": {"method": "meta", "teacher": "no_dl"}},
        ablations=["from_no_dl"],
    )
    config = pipeline.load_pipeline_config(path)
    assert config["methods"] == ["none", "meta", "vanilla"] and config["studies"] == ["main", "ablation"]
    assert config["teachers"] == ["single"]
    cells = pipeline.plan_cells(config)
    jobs = ordered_jobs(config, cells)
    rank = priorities(config, jobs)
    assert rank[(1, "student/meta_budgetA/books")] == 1 and rank[(1, "teacher/meta")] == 1
    assert rank[(2, "student/meta_budgetA/books")] == 4 and rank[(2, "student/none/books")] == 4
    assert rank[(2, "teacher/meta")] == 4  # seed 2's Meta-KD students are in no group
    assert rank[(2, "teacher/no_dl")] == rank[(2, "student/from_no_dl_budgetA/dvd")] == 3
    assert rank[(1, "teacher/mixed")] == rank[(2, "teacher/mixed")] == 2  # vanilla KD's teacher
    assert rank[(1, "teacher/single/books")] == 3 and rank[(1, "teacher/no_dl")] == 3
    order = [(seed, cell.name) for seed, cell in jobs]
    assert order[:4] == [(1, "teacher/meta"), (1, "student/meta_budgetA/books"),
                         (1, "student/meta_budgetA/dvd"), (1, "teacher/mixed")]  # fmt: skip
    assert [rank[job] for job in order] == sorted(rank[job] for job in order)
    for seed, cell in jobs:  # every cell runs after the cells it needs
        assert all(order.index((seed, need)) < order.index((seed, cell.name)) for need in cell.needs)
    assert [r.key for r in pipeline.table_rows(config, {c.name for c in cells})][:3] == [
        "teacher_single", "teacher_mixed", "teacher_meta"]  # fmt: skip
    # a command-line --methods is what it says: the priorities only order it
    assert pipeline.main(["--config", str(path), "--plan", "--methods", "none"]) == 0


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"rows": ["meta"]}, "`priorities` must be a list of groups"),
        ([{"rows": ["meta"], "weight": 2}], r"group 1 has unknown keys \['weight'\]"),
        ([{"rows": ["meta"]}, {"rows": ["nope"]}], r"group 2: unknown rows \['nope'\]"),
        ([{"seeds": ["1"]}], "`seeds` must be a list of ints"),
        ([{"name": "nothing"}], "group 1 selects nothing"),
        ([{"teachers": ["oracle"]}], r"unknown teachers \['oracle'\]"),
    ],
)
def test_bad_priorities_are_refused(tmp_path: Path, groups, message: str) -> None:
    path = plan_config(tmp_path, priorities=groups)
    with pytest.raises(pipeline.PipelineError, match=f"{path}: .*{message}"):
        pipeline.load_pipeline_config(path)


def test_within_budget_stops_before_the_first_cell_past_it() -> None:
    cell = pipeline.Cell("student/x", "student", {})
    entries = [
        ledger.Entry(1, cell, 1, "done", 500.0),
        ledger.Entry(1, cell, 1, "to run", 60.0),
        ledger.Entry(1, cell, 1, "to run", 30.0, retrain_cost=30.0),  # 1 CPU-min with its retrained teacher
        ledger.Entry(1, cell, 2, "to run", 30.0),
    ]
    assert ledger.within_budget(entries, 2.0) == (entries[:3], entries[3:])
    assert ledger.within_budget(entries, 1.9) == (entries[:2], entries[2:])
    assert ledger.within_budget(entries, 0.5) == (entries[:1], entries[1:])  # a done cell costs nothing
    assert ledger.within_budget(entries, 10) == (entries, [])


def test_max_cpu_minutes_runs_nothing_past_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = plan_config(tmp_path, methods=["none", "meta"], in_process=True)
    config = pipeline.load_pipeline_config(path)
    write_result(config, 1, "teacher/meta", 600.0)
    checkpoint = pipeline.best_checkpoint(config, 1, "teacher/meta")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert pipeline.main(["--config", str(path), "--max-cpu-minutes", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "CPU budget 0.001 minutes: running 0 cells to run (0.0 CPU-min estimated); leaving 4" in out
    (line,) = [line for line in out.splitlines() if line.startswith("[")]
    assert "teacher/meta" in line and " skipped " in line and "ETA 0s (0.0 CPU-min left)" in line
    assert "stopped before the CPU budget of 0.001 minutes: left 4 cells to run" in out
    assert "from priority 1, seed 1 student/none/books" in out and "cells: " in out and "left 4" in out
    assert not pipeline.cell_dir(config, 1, "student/none/books").exists()  # never started
    with pytest.raises(pipeline.PipelineError, match="--max-cpu-minutes must be a positive number"):
        pipeline.main(["--config", str(path), "--max-cpu-minutes", "0"])


def test_progress_eta_is_cpu_left_over_cores(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(plan_config(tmp_path, methods=["none"], cell_cpus=1))
    first, second = pipeline.plan_cells(config)[:2]
    stream = io.StringIO()
    estimates = {(1, first.name): 120.0, (1, second.name): 240.0}
    progress = Progress(config, [(1, first), (1, second)], stream, parallel=2, estimates=estimates)
    progress.report(1, first, "failed", 3.0, "")
    assert stream.getvalue().endswith("| ETA 2m00s (4.0 CPU-min left)\n")  # 240 s on 2 workers x 1 CPU


def test_progress_eta_learns_from_the_cells_that_finished(tmp_path: Path) -> None:
    """A finished cell measured at a quarter of its estimate: the rest of its row (and, without cells of their
    own row finished, the other cells of its kind) are estimated at a quarter too."""
    config = pipeline.load_pipeline_config(plan_config(tmp_path, methods=["none", "meta"], cell_cpus=1))
    cells = {c.name: c for c in pipeline.plan_cells(config)}
    jobs = [(1, cells[n]) for n in ("student/none/books", "student/none/dvd", "student/meta_budgetA/books")]
    estimates = {(1, c.name): 400.0 for _, c in jobs}
    write_result(config, 1, "student/none/books", 100.0)  # a quarter of its estimate; 50 s of wall below
    stream = io.StringIO()
    progress = Progress(config, jobs, stream, parallel=1, estimates=estimates)
    progress.report(1, cells["student/none/books"], "done", 50.0, "")
    assert progress.correction(cells["student/none/dvd"]) == pytest.approx(0.25)  # its row
    assert progress.correction(cells["student/meta_budgetA/books"]) == pytest.approx(0.25)  # its kind
    assert progress.correction(cells["teacher/meta"]) == 1.0  # nothing of its kind finished
    # 2 x 400 x 0.25 = 200 CPU-s left, at 100 CPU-s per 50 s of wall: 100 s
    assert stream.getvalue().endswith("| ETA 1m40s (3.3 CPU-min left)\n")


def test_the_dev_curve_records_the_training_set_size(tmp_path: Path) -> None:
    dm = ToyMultiDomainDataModule(train_per_domain=5)
    path = tmp_path / "dev_curve.json"
    trainer = tiny_trainer(max_steps=1, callbacks=[pipeline.DevCurveWriter(str(path))])
    trainer.fit(tiny_teacher(dm, weighting="none", domain_loss="none"), dm)
    assert json.loads(path.read_text())["end"]["train_examples"] == 3 * 5


def test_the_benchmark_priorities() -> None:
    """configs/amazon/benchmark.yaml: its `methods` first over seeds 1-3, then PKD and BERT-of-Theseus from
    the meta-teacher and FastBERT, then the MTL teacher and its rows, single-domain teachers (with the paper's
    PKD and Theseus rows) and Meta-KD's ablations."""
    config = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "benchmark.yaml")
    jobs = ordered_jobs(config, pipeline.plan_cells(config))
    rank = priorities(config, jobs)
    first = {name for (seed, name), p in rank.items() if p == 1 and seed == 1}
    assert first == {"teacher/meta", "teacher/mixed"} | {
        f"student/{row}/{d}" for row in ("none", "vanilla", "tinybert_meta_budgetA", "meta_budgetA")
        for d in config["domains"]
    }  # fmt: skip
    assert rank[(3, "student/pkd_meta/books")] == rank[(2, "student/theseus_meta_budgetA/dvd")] == 2
    assert rank[(1, "student/fastbert_l2_budgetA/kitchen")] == 2
    assert rank[(3, "student/pkd/books")] == rank[(2, "teacher/single/dvd")] == 3
    assert rank[(1, "teacher/mtl")] == rank[(1, "student/mtl_tinybert_budgetA/books")] == 3
    assert rank[(2, "student/meta_no_t_budgetA/dvd")] == 3 and max(rank.values()) == 3
    quick = pipeline.load_pipeline_config(REPO / "configs" / "amazon" / "benchmark.yaml", quick=True)
    assert quick["methods"] == ["none", "vanilla", "tinybert_meta", "meta"] and quick["studies"] == ["main"]
