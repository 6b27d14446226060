"""Run several ``python -m metakd`` command lines in ONE interpreter (a test driver, not a test module).

    python tests/metakd_batch.py CASES.json OUT_DIR

``CASES.json`` is a list of ``{"name", "argv", "env"?, "watch"?}``. Each case runs exactly what
``python -m metakd ARGV`` runs (``runpy.run_module("metakd", run_name="__main__")`` with ``sys.argv`` set
and the case's ``env`` added to ``os.environ``), its file descriptors 1 and 2 redirected to
``OUT_DIR/<name>.out`` and ``OUT_DIR/<name>.err``; the exit status is the ``SystemExit`` code, or 1 with
the traceback on stderr for an exception that would end the interpreter. ``OUT_DIR/results.json`` maps
each name to ``{"returncode", "watched"}`` (``watched``: whether the path ``watch`` existed after the case).

What it saves is the interpreter start-up and the imports of torch, Lightning and transformers (seconds
each): tests of what a command prints for bad input (tests/test_cli_errors.py) run their cases here,
beside a few real ``python -m metakd`` subprocesses.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path


def run_case(argv: list[str], env: dict[str, str]) -> int:
    saved_env, saved_argv = dict(os.environ), list(sys.argv)
    os.environ.update(env)
    sys.argv = ["metakd", *argv]  # runpy sets argv[0] to metakd/__main__.py, as `python -m` does
    try:
        runpy.run_module("metakd", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught exception
        traceback.print_exc()
        return 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv


def main(cases_file: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path[0] = os.getcwd()  # as under `python -m`: the working folder first, not this script's folder
    results = {}
    saved = os.dup(1), os.dup(2)
    for case in json.loads(Path(cases_file).read_text(encoding="utf-8")):
        name = case["name"]
        with open(out / f"{name}.out", "wb") as stdout, open(out / f"{name}.err", "wb") as stderr:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(stdout.fileno(), 1)
            os.dup2(stderr.fileno(), 2)
            try:
                code = run_case(case["argv"], case.get("env") or {})
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        watch = case.get("watch")
        results[name] = {"returncode": code, "watched": bool(watch) and os.path.exists(watch)}
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
