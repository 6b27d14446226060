"""W&B sweep files (``sweeps/*.yaml``) and the local sweep driver ``python -m metakd sweep``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, metakd_env
from test_logging import write_tiny_setup

from metakd import sweep as S

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
# the sweeps shipped (one per model class: teacher, student)
SWEEP_NAMES = {"meta_teacher.yaml", "student.yaml"}


def require_sweep_engine() -> None:
    """Skip unless W&B's sweep engine is installed (``importorskip("sweeps")`` is not enough: from the repo
    root the repo's own ``sweeps/`` folder imports as a namespace package)."""
    if not S.sweep_engine_available():
        pytest.skip("W&B's sweep engine is not installed (pip install 'metakd[sweep]')")


def test_sweep_files_exist():
    assert {p.name for p in SWEEP_FILES} >= SWEEP_NAMES


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_valid(path):
    require_sweep_engine()
    config = S.load_sweep_config(path)
    assert S.schema_violations(config) == []
    filled = S.validate_sweep_config(config)
    assert (filled["metric"]["name"], filled["metric"]["goal"]) == ("val/acc", "maximize")
    assert filled["method"] in ("bayes", "random")
    command = config["command"]
    assert command[:5] == ["${env}", "${interpreter}", "-m", "metakd", "fit"]
    assert command[-1] == "${args}"
    assert command[command.index("--config") + 1].startswith("configs/amazon/")
    for name, spec in config["parameters"].items():
        assert name.startswith(("model.init_args.", "data.init_args.", "trainer.")), name
        if "min" in spec and isinstance(spec["min"], int) and isinstance(spec["max"], int):
            assert spec.get("distribution") in ("int_uniform", "q_uniform", "q_log_uniform_values"), name


def _sample_value(spec: dict):
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    if spec.get("distribution") == "int_uniform":
        return int(spec["max"])
    return float(spec["max"])


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_parameters_parse_with_cli(path, tmp_path):
    """Every parameter, as W&B passes it (--name=value), is an option of `python -m metakd fit`."""
    config = S.load_sweep_config(path)
    params = {name: _sample_value(spec) for name, spec in config["parameters"].items()}
    experiment = config["command"][config["command"].index("--config") + 1]
    assert (REPO / experiment).is_file(), f"{path.name} names a missing config {experiment}"
    base = ["--config", experiment]
    argv = S.build_command({"command": ["${interpreter}", "-m", "metakd", "fit", "${args}"]}, params, base)
    result = subprocess.run(
        [*argv, "--print_config"], cwd=REPO, env=metakd_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    for name, value in params.items():
        node = printed
        for key in name.split("."):
            node = node[key]
        assert node == value, (name, node, value)


def test_build_command_macros():
    sweep = {
        "program": "train.py",
        "command": ["${env}", "${interpreter}", "${program}", "--fixed", "${args}"],
    }
    params = {"model.init_args.lr": 1e-4, "model.init_args.n": 3, "model.init_args.w": "prototype+meta"}
    argv = S.build_command(sweep, params, ["--config", "x.yaml"], ["--trainer.default_root_dir=/r"], "py")
    assert argv == [
        "py",
        "train.py",
        "--fixed",
        "--config",
        "x.yaml",
        "--model.init_args.lr=0.0001",
        "--model.init_args.n=3",
        "--model.init_args.w=prototype+meta",
        "--trainer.default_root_dir=/r",
    ]
    assert S.build_command({"command": ["a", "${args_no_hyphens}"]}, {"x": True}) == ["a", "x=true"]
    with pytest.raises(S.SweepError, match="program"):
        S.build_command({"command": ["${program}"]}, {})
    with pytest.raises(S.SweepError, match="unsupported macro"):
        S.build_command({"command": ["${args_json_file}"]}, {})
    assert S.is_lightning_cli(["/usr/bin/python", "-m", "metakd", "fit"])
    assert not S.is_lightning_cli(["python", "train.py"])


def test_numpy_values_and_leaderboard_order(tmp_path):
    np = pytest.importorskip("numpy")
    assert S.trial_params({"a": {"value": np.float64(0.5)}, "b": {"value": np.int64(3)}}) == {
        "a": 0.5,
        "b": 3,
    }
    trials = [
        S.Trial(0, {"p": 1}, [], tmp_path / "trial-000", status="failed"),
        S.Trial(1, {"p": 2}, [], tmp_path / "trial-001", status="finished", metric=0.6),
        S.Trial(2, {"p": 3}, [], tmp_path / "trial-002", status="finished", metric=0.8),
    ]
    S.write_leaderboard(tmp_path, trials, "val/acc", "maximize")
    rows = list(csv.DictReader(open(tmp_path / "leaderboard.csv")))
    assert [r["trial"] for r in rows] == ["trial-002", "trial-001", "trial-000"]
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert "| 1 | trial-002 | finished | 0.8 |" in (tmp_path / "leaderboard.md").read_text()


def test_local_sweep_two_trials(tmp_path):
    """Two real trials (tiny teacher, 2 steps) plus a failing one that must not stop the sweep."""
    require_sweep_engine()
    tiny = write_tiny_setup(tmp_path / "setup")
    sweep_file = tmp_path / "sweep.yaml"
    config = S.load_sweep_config(REPO / "sweeps" / "meta_teacher.yaml")
    config["method"] = "random"
    config["parameters"] = {
        "model.init_args.learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "model.init_args.weighting": {"values": ["prototype", "none"]},
        "model.init_args.meta_every_n_steps": {"distribution": "int_uniform", "min": 1, "max": 3},
    }
    sweep_file.write_text(yaml.safe_dump(config))
    # the YAML's command with the tiny experiment in place of the Amazon one; --extra-args add a logger
    command = config["command"]
    command[command.index("--config") + 1] = str(tiny)
    sweep_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    extra = "--config configs/loggers/csv.yaml --trainer.limit_val_batches=1"
    result = subprocess.run(
        [sys.executable, "-m", "metakd", "sweep", str(sweep_file), "--count", "2", "--seed", "0"]
        + ["--out", str(out), "--extra-args", extra],
        cwd=REPO,
        env=metakd_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(rows) == 2, rows
    for row in rows:
        assert row["status"] == "finished", (row, (Path(row["dir"]) / "output.log").read_text()[-3000:])
        assert 0.0 <= float(row["val/acc"]) <= 1.0
        assert row["model.init_args.weighting"] in ("prototype", "none")
        assert row["model.init_args.meta_every_n_steps"] in ("1", "2", "3")
        trial_dir = Path(row["dir"])
        assert trial_dir.parent == out.resolve()
        assert (trial_dir / S.METRICS_FILE).is_file()
        assert list(trial_dir.glob("lightning_logs/version_0/metrics.csv"))  # csv.yaml under the trial
    assert [float(r["val/acc"]) for r in rows] == sorted((float(r["val/acc"]) for r in rows), reverse=True)
    assert (out / "leaderboard.md").read_text().count("| trial-00") == 2


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path):
    require_sweep_engine()
    sweep_file = tmp_path / "sweep.yaml"
    script = tmp_path / "train.py"
    # fails for x == 1, otherwise writes a metrics.csv (the CSV fallback of the metric reader)
    script.write_text(
        "import sys, os\n"
        "x = int(sys.argv[1].split('=')[1])\n"
        "if x == 1: sys.exit(3)\n"
        "root = os.environ['METAKD_SWEEP_METRICS'].rsplit('/', 1)[0]\n"
        "open(os.path.join(root, 'metrics.csv'), 'w').write(f'step,val/acc\\n0,{x / 10}\\n1,\\n')\n"
    )
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "metric": {"name": "val/acc", "goal": "maximize"},
                "parameters": {"x": {"values": [1, 2, 3]}},
                "program": str(script),
                "command": ["${env}", "${interpreter}", "${program}", "${args}"],
            }
        )
    )
    out = tmp_path / "out"
    assert S.main([str(sweep_file), "--count", "5", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert [(r["x"], r["status"], r["val/acc"]) for r in rows] == [
        ("3", "finished", "0.3"),
        ("2", "finished", "0.2"),
        ("1", "failed", ""),
    ]


def test_a_sweeps_module_without_the_engine_api_gives_the_install_hint(monkeypatch, capsys) -> None:
    """A module named ``sweeps`` that is not the engine (the repo's ``sweeps/`` folder imported as a
    namespace package) is refused with the install hint, not an AttributeError; the CLI prints it."""
    import types

    from metakd.cli import main as cli_main

    folder = types.ModuleType("sweeps")
    folder.__path__ = [str(REPO / "sweeps")]
    monkeypatch.setitem(sys.modules, "sweeps", folder)
    with pytest.raises(
        S.SweepError, match=r"pip install 'metakd\[sweep\]'.* is not the engine: it has no next_run"
    ):
        S.validate_sweep_config({})
    assert not S.sweep_engine_available()
    assert cli_main(["sweep", str(SWEEP_FILES[0]), "--count", "1", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: local sweeps need W&B's sweep engine")


def test_count_below_one_is_a_clear_error(capsys) -> None:
    from metakd.cli import main as cli_main

    assert cli_main(["sweep", str(SWEEP_FILES[0]), "--count", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: --count must be >= 1, got 0"
