"""Stopping a run (metakd/interrupt.py): SIGINT (Ctrl-C) and SIGTERM stop a command within seconds with
one line and exit 130 / 143, the cell in flight keeps its last checkpoint, no later cell starts, and the
same command again finishes with the numbers of an uninterrupted run.

The pipeline runs are the real ``python -m metakd pipeline --quick`` on the tiny corpus of
tests/test_pipeline.py, restricted to two cells (the meta-teacher, then the Meta-KD student on books).
The teacher trains 3 epochs of 2 batches; from its second epoch on, ``helpers.SlowAfterFirstEpoch``
sleeps before each batch (no CPU, no number changed), so a signal sent once the first epoch's
``last.ckpt`` exists reaches the fit mid-way, every time. The runs that are not stopped (the reference
and the SIGTERM test's second call) run the same command in this test's process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, SlowAfterFirstEpoch, metakd_env, run_metakd, tiny_trainer
from test_pipeline import tiny_pipeline_config

from metakd import interrupt
from metakd.cli import main as cli_main
from metakd.interrupt import Interrupted, run_child, run_stoppable

# one intra-op thread everywhere: the resumed run is compared with the reference number for number
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
ARGS = ["--quick", "--studies", "main", "--methods", "meta", "--domains", "books"]
TEACHER, STUDENT = "teacher/meta", "student/meta/books"
STOP_WITHIN_S = 20.0  # generous for a busy CI machine; the pipeline used to go on training for a minute


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """The in-process tests install metakd's handlers in pytest's process: put pytest's back."""
    saved = {signum: signal.getsignal(signum) for signum in interrupt.STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def interrupt_config(directory: Path, *callbacks: dict) -> Path:
    """The tiny pipeline config with a teacher of 3 epochs x 2 batches (lr 1e-3, so that every step
    moves its dev loss) that slows down after its first epoch."""
    path = tiny_pipeline_config(directory)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["quick"]["teacher"]["trainer"].update({"max_epochs": 3, "limit_train_batches": 2})
    config["teacher"]["model"]["init_args"]["learning_rate"] = 1e-3
    slow = {"class_path": "helpers.SlowAfterFirstEpoch", "init_args": {"seconds": 0.5}}
    config["teacher"]["trainer"]["callbacks"] = [slow, *callbacks]
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cell(directory: Path, name: str) -> Path:
    """The cell's folder in the store, once the pipeline linked its view to it."""
    path = directory / "runs" / "tiny_quick" / "1" / name
    return path.resolve() if path.is_symlink() else path


def start_pipeline(config: Path, *extra: str) -> subprocess.Popen:
    """``python -m metakd pipeline`` as a terminal would start it: its own process group (a Ctrl-C goes
    to the whole group); stdout and stderr go to files beside the config."""
    return subprocess.Popen(
        [sys.executable, "-m", "metakd", "pipeline", "--config", str(config), *ARGS, *extra],
        cwd=REPO,
        env=metakd_env(extra_env=ENV),
        stdout=open(config.parent / "stdout.txt", "w"),  # noqa: SIM115 - closed with the process
        stderr=open(config.parent / "stderr.txt", "w"),  # noqa: SIM115
        start_new_session=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, f"exited {process.returncode} before {path} was written"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def stop_and_wait(process: subprocess.Popen, signum: int) -> float:
    """Send ``signum`` as a terminal (SIGINT: the process group) or a scheduler (SIGTERM: the main
    process) would; returns the seconds until the process exited."""
    start = time.monotonic()
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return time.monotonic() - start


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` ends (or is a zombie: killed, not yet reaped) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "State:\tZ" in status:
            return True
        time.sleep(0.05)
    return False


def outputs(config: Path) -> tuple[str, str]:
    return (config.parent / "stdout.txt").read_text(), (config.parent / "stderr.txt").read_text()


def numbers(directory: Path) -> dict:
    """What a finished run reports: the main table, and per cell the test metrics and the dev curve."""
    results = json.loads((directory / "results" / "tiny_quick.json").read_text())
    cells = {}
    for name in (TEACHER, STUDENT):
        result = json.loads((cell(directory, name) / "result.json").read_text())
        cells[name] = {"metrics": result["metrics"], "dev_curve": result["dev_curve"]["checks"]}
    return {"table": results["main"], "cells": cells}


def flat(value, key: str = "") -> dict:
    """Nested dicts and lists as one ``{"a/0/b": leaf}`` dict (pytest.approx compares flat ones)."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in flat(item, f"{key}/{name}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{key}/{i}").items()}
    return {key: value}


@contextlib.contextmanager
def like_the_subprocesses() -> Iterator[None]:
    """This process as the pipeline subprocesses run (ENV): one intra-op thread, ``helpers`` importable by
    the cells' subprocesses; the stop handlers that a command installs are put back afterwards."""
    threads = torch.get_num_threads()
    saved_env = {name: os.environ.get(name) for name in ENV}
    saved_handlers = {signum: signal.getsignal(signum) for signum in interrupt.STOP_SIGNALS}
    torch.set_num_threads(1)
    os.environ.update(ENV)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The same pipeline, never interrupted (in one process, this one: the cells' numbers depend on
    neither)."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    config = interrupt_config(directory)
    with like_the_subprocesses(), contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(["pipeline", "--config", str(config), *ARGS, "--in-process"]) == 0
    return numbers(directory)


def check_stopped_in_the_teacher(directory: Path, config: Path, signum: int, extra: list[str]) -> None:
    """Exit status, the one line, the teacher interrupted with its checkpoint, the student never run."""
    stdout, stderr = outputs(config)
    last = cell(directory, TEACHER) / "checkpoints" / "last.ckpt"
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    command = shlex.join(["pipeline", "--config", str(config), *ARGS, *extra])
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by {name}: 0 of 2 cells finished, seed 1 {TEACHER} interrupted (the next call "
        f"resumes it from {last}), 1 not started; to resume, run the same command: python -m metakd {command}"
    ), stderr[-3000:]
    assert sum(line.startswith("interrupted by") for line in stderr.splitlines()) == 1
    assert "Traceback" not in stderr, stderr[-3000:]
    progress = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 1 and f" {TEACHER} " in progress[0] and " interrupted " in progress[0], stdout
    assert last.is_file() and not (cell(directory, TEACHER) / "result.json").exists()
    assert not cell(directory, STUDENT).exists()  # no later cell started
    assert "failed" not in stdout


def check_resumes_to_the_uninterrupted_numbers(
    directory: Path, config: Path, extra: list[str], reference, capsys=None
):
    """The same command again: the teacher's fit resumes from its last.ckpt, the student runs, and every
    number equals the uninterrupted run's. With ``capsys``, the command runs in this process (its cells
    are subprocesses, which write the fit.log checked here), else as a subprocess."""
    if capsys is None:
        stdout = run_metakd("pipeline", "--config", config, *ARGS, *extra, timeout=600, extra_env=ENV).stdout
    else:
        capsys.readouterr()
        with like_the_subprocesses():
            assert cli_main(["pipeline", "--config", str(config), *ARGS, *extra]) == 0
        stdout = capsys.readouterr().out
    progress = [line for line in stdout.splitlines() if line.startswith("[")]
    assert [line.split()[3:5] for line in progress] == [[TEACHER, "done"], [STUDENT, "done"]], stdout
    last = cell(directory, TEACHER) / "checkpoints" / "last.ckpt"
    assert (
        f"Restoring states from the checkpoint path at {last}"
        in (cell(directory, TEACHER) / "fit.log").read_text()
    )
    resumed = numbers(directory)
    assert resumed["table"] == reference["table"]
    assert flat(resumed["cells"]) == pytest.approx(flat(reference["cells"]), rel=1e-6, abs=1e-7)


def test_sigterm_stops_subprocess_cells_and_the_same_command_resumes(tmp_path, uninterrupted, capsys):
    """SIGTERM (a scheduler, sent to the pipeline process only) reaches the cell's `fit` subprocess too: it
    stops with its own line in fit.log (keeping last.ckpt), and the pipeline exits 143. The same command
    again runs in this process (its cells, the fits that resume, are subprocesses still)."""
    config = interrupt_config(tmp_path)
    process = start_pipeline(config)
    wait_for(cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt", process)
    seconds = stop_and_wait(process, signal.SIGTERM)
    assert process.returncode == 143, outputs(config)
    assert seconds < STOP_WITHIN_S
    check_stopped_in_the_teacher(tmp_path, config, signal.SIGTERM, [])
    fit_log = (cell(tmp_path, TEACHER) / "fit.log").read_text().strip().splitlines()
    last = cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt"
    assert fit_log[-1].startswith("interrupted by SIGTERM: fit stopped in epoch ")
    assert fit_log[-1].endswith(
        f"{last} is kept; to resume from it, run the same command with --ckpt_path last"
    )
    check_resumes_to_the_uninterrupted_numbers(tmp_path, config, [], uninterrupted, capsys)


def test_ctrl_c_stops_in_process_cells_and_the_same_command_resumes(tmp_path, uninterrupted):
    """Ctrl-C (SIGINT to the process group) stops a fit running inside the pipeline's process: Lightning
    tears it down and re-raises the stop instead of exiting 1 as a failed cell."""
    config = interrupt_config(tmp_path)
    process = start_pipeline(config, "--in-process")
    wait_for(cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt", process)
    seconds = stop_and_wait(process, signal.SIGINT)
    assert process.returncode == 130, outputs(config)
    assert seconds < STOP_WITHIN_S
    check_stopped_in_the_teacher(tmp_path, config, signal.SIGINT, ["--in-process"])
    check_resumes_to_the_uninterrupted_numbers(tmp_path, config, ["--in-process"], uninterrupted)


def test_a_second_ctrl_c_exits_at_once_and_kills_the_cell(tmp_path):
    """While the first stop waits for the cell's `fit` to tear down (here: a teardown that would take a
    minute), a second Ctrl-C ends the pipeline at once and kills the cell's process group."""
    pid_file = tmp_path / "fit.pid"
    slow = {"class_path": "helpers.SlowTeardown", "init_args": {"pid_file": str(pid_file)}}
    config = interrupt_config(tmp_path, slow)
    process = start_pipeline(config)
    wait_for(cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt", process)
    os.killpg(process.pid, signal.SIGINT)
    wait_for(pid_file, process, timeout=60)  # the fit got the forwarded signal and is tearing down
    seconds = stop_and_wait(process, signal.SIGINT)
    assert process.returncode == 130
    assert seconds < 5.0
    _, stderr = outputs(config)
    assert stderr.strip().splitlines()[-1] == (
        "SIGINT (Ctrl-C) again: exiting at once (checkpoints already written are kept)"
    )
    assert process_gone(int(pid_file.read_text())), "the cell's fit survived the second Ctrl-C"
    assert (cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.usefixtures("one_ray_at_a_time")
def test_ray_cells_stop_and_ray_shuts_down(tmp_path):
    """With --workers 2 the cells run as Ray tasks: SIGTERM cancels the running task (the cell stops in
    its worker and keeps last.ckpt), starts nothing else and shuts Ray down within seconds."""
    pytest.importorskip("ray", reason="Ray is the optional extra metakd[ray] (scripts/setup.sh installs it)")
    config = interrupt_config(tmp_path)
    process = start_pipeline(config, "--workers", "2", "--in-process")
    wait_for(cell(tmp_path, TEACHER) / "checkpoints" / "last.ckpt", process)
    seconds = stop_and_wait(process, signal.SIGTERM)
    assert process.returncode == 143, outputs(config)
    assert seconds < STOP_WITHIN_S
    check_stopped_in_the_teacher(tmp_path, config, signal.SIGTERM, ["--workers", "2", "--in-process"])
    fit_log = (cell(tmp_path, TEACHER) / "fit.log").read_text()
    assert "interrupted by SIGINT (Ctrl-C): fit stopped in epoch " in fit_log  # Ray's cancel, in the worker


# --------------------------------------------------------------------------------- the parts, in-process
def test_lightning_tears_down_and_re_raises_the_stop(tmp_path, capfd):
    """A stop inside `trainer.fit` passes Lightning's KeyboardInterrupt branch (which would sys.exit(1) and
    leave SIGINT ignored) and every `except Exception`; the boundary prints one line and returns 130."""
    from helpers import ToyMultiDomainDataModule, tiny_teacher

    from metakd.interrupt import describe_stopped_trainer

    class StopAtStep(SlowAfterFirstEpoch):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    datamodule = ToyMultiDomainDataModule()
    trainer = tiny_trainer(max_steps=20, callbacks=[StopAtStep()])
    seen = []

    def command():
        try:
            trainer.fit(tiny_teacher(datamodule), datamodule=datamodule)
        except Exception:  # noqa: BLE001 - what the pipeline does: must not catch a stop
            seen.append("caught")
        except Interrupted as stop:
            seen.append(signal.getsignal(signal.SIGINT))
            stop.detail, stop.resume = describe_stopped_trainer(trainer, "fit")
            raise
        return 0

    capfd.readouterr()
    assert run_stoppable(command) == 130
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "interrupted by SIGINT (Ctrl-C): fit stopped in epoch 0 at step 3, no checkpoint saved yet; "
        "run the same command again (it starts over)"
    )
    assert trainer.global_step == 3 and trainer.state.status == "interrupted"
    assert seen == [interrupt._handle]  # not caught as an Exception; SIGINT not left ignored


def test_a_child_gets_the_stop_and_its_exit_status_counts(tmp_path, capfd):
    """`run_child`: the child gets the signal this process got; a child exiting 130/143 by itself is a
    stop; a timeout kills the child's process group."""
    trap = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    started = tmp_path / "started"

    def command():
        import threading

        def later():
            while not started.exists():
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=later, daemon=True).start()
        run_child([sys.executable, "-c", trap, str(started)])
        return 0

    begin = time.monotonic()
    assert run_stoppable(command) == 143
    assert time.monotonic() - begin < 30
    assert capfd.readouterr().err.strip() == "interrupted by SIGTERM; run the same command again"

    with pytest.raises(Interrupted) as stop:
        run_child([sys.executable, "-c", "raise SystemExit(130)"])
    assert stop.value.signum == signal.SIGINT and stop.value.exit_code == 130
    assert run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert not interrupt._state.children


def test_sweep_stops_with_its_trial_and_keeps_the_leaderboard(tmp_path):
    """`python -m metakd sweep`: SIGTERM reaches the running trial, the leaderboard lists the finished
    trial and the interrupted one, no later trial starts, exit 143."""
    pytest.importorskip("sweeps")
    trial = tmp_path / "trial.py"
    trial.write_text(
        "import json, os, sys, time\n"
        "x = float(sys.argv[1].split('=')[1])\n"
        "with open(os.environ['METAKD_SWEEP_METRICS'], 'w') as f:\n"
        "    f.write(json.dumps({'val/acc': x}) + '\\n')\n"
        "if x > 0.15:\n"
        "    folder = os.path.dirname(os.environ['METAKD_SWEEP_METRICS'])\n"
        "    open(os.path.join(folder, 'waiting'), 'w').close()\n"
        "    time.sleep(60)\n",
        encoding="utf-8",
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "program": str(trial),
                "method": "grid",
                "metric": {"name": "val/acc", "goal": "maximize"},
                "parameters": {"x": {"values": [0.1, 0.2, 0.3]}},
                "command": ["${interpreter}", "${program}", "${args}"],
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "metakd", "sweep", str(sweep), "--count", "3", "--out", str(out)],
        cwd=REPO,
        env=metakd_env(extra_env=ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "trial-001" / "waiting").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by SIGTERM: 1 of 3 trials finished, trial-001 interrupted; leaderboard: "
        f"{out / 'leaderboard.md'}; a new call starts a new sweep (a local sweep does not resume)"
    )
    board = (out / "leaderboard.csv").read_text().splitlines()
    assert [row.split(",")[1:4] for row in board[1:]] == [
        ["trial-001", "interrupted", "0.2"],
        ["trial-000", "finished", "0.1"],
    ]
    assert not (out / "trial-002").exists()
