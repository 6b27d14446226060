"""The showcase at the end of a pipeline report (a ``showcase:`` block in the config; the main job has one):
what a user chooses between, on this machine.

- **Throughput**: the teacher and one cell of every student row, timed side by side on the same runtime
  (PyTorch, this process's threads) and the same batch of test texts of one domain
  (:mod:`metakd.throughput`), as examples per second and as a multiple of the teacher's.
- **Where the best student lands**: the student row with the highest average accuracy on the report's test
  set, as a share of the teacher's accuracy and a multiple of its speed.
- **The best student exported** (``python -m metakd export``, a metakd directory) and answering one raw text
  (``metakd.classify.TextClassifier``, what ``python -m metakd classify`` uses).

Timings are measured once and kept in ``<results_dir>/<name>_showcase.json`` with the cell keys they were
measured on, so a second call prints the same report; a call without the cells' checkpoints (another
machine) keeps that file and says so. Settings (all optional): ``domain`` (first of ``domains``), ``batch``
(32), ``repeats`` (10), ``text`` (a raw text for the prediction), ``export`` (the folder; default
``<results_dir>/<name>_best_student``), ``teacher`` (the teacher row compared with, e.g. ``teacher_meta``;
default the first teacher row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metakd.pipeline.config import PipelineError
from metakd.pipeline.invoke import run_cli
from metakd.pipeline.plan import planned_cell
from metakd.pipeline.store import best_checkpoint, cell_config, cell_key
from metakd.utils import write_json

SETTINGS = ("domain", "batch", "repeats", "text", "export", "teacher")


def showcase_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``showcase:`` block with its defaults, checked; None without one."""
    block = config.get("showcase")
    if not block:
        return None
    if not isinstance(block, dict) or set(block) - set(SETTINGS):
        raise PipelineError(f"`showcase` takes the keys {list(SETTINGS)}, got {block!r}")
    settings = {"domain": config["domains"][0], "batch": 32, "repeats": 10, "text": None, "export": None}
    settings["teacher"] = None
    settings.update(block)
    if settings["domain"] not in config["domains"]:
        raise PipelineError(
            f"showcase.domain {settings['domain']!r} is not one of `domains` {config['domains']}"
        )
    for key in ("batch", "repeats"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], int) or settings[key] < 1:
            raise PipelineError(f"showcase.{key} must be a whole number >= 1, got {settings[key]!r}")
    if settings["export"] is None:
        settings["export"] = str(Path(config["results_dir"]) / f"{config['name']}_best_student")
    return settings


def showcase(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any] | None:
    """The showcase section of the summary (module docstring); None without a ``showcase:`` block."""
    settings = showcase_settings(config)
    if settings is None or not summary.get("main"):
        return None
    seed, domain = config["seeds"][0], settings["domain"]
    rows = {
        key: row for key, row in summary["main"].items() if row.get("average", {}).get("mean") is not None
    }
    teachers = [key for key, row in rows.items() if row["kind"] == "teacher"]
    if settings["teacher"] in teachers:  # the teacher row to compare with (default: the first one)
        teachers.remove(settings["teacher"])
        teachers.insert(0, settings["teacher"])
    students = [key for key, row in rows.items() if row["kind"] == "student"]
    if not teachers or not students:
        return None
    cells = {key: summary["row_cells"][key][domain] for key in [teachers[0], *students]}
    keys = {key: cell_key(config, seed, cell) for key, cell in cells.items()}
    path = Path(config["results_dir"]) / f"{config['name']}_showcase.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    measured = {k: stored.get(k) for k in ("throughput", "export", "prediction")}
    same = stored.get("keys") == keys and stored.get("settings") == settings
    if not same:
        checkpoints = {key: best_checkpoint(config, seed, cell) for key, cell in cells.items()}
        missing = [str(p) for p in checkpoints.values() if not p.is_file()]
        if missing:
            note = f"not measured here: {len(missing)} checkpoint(s) missing (e.g. {missing[0]})"
            return {"settings": settings, "note": note, **_landing(rows, teachers[0], students, {})}
        measured["throughput"] = _time(config, checkpoints, domain, settings, cells)
        best = max(students, key=lambda k: rows[k]["average"]["mean"])
        measured["export"], measured["prediction"] = _export_and_predict(checkpoints[best], best, settings)
        write_json(path, {"keys": keys, "settings": settings, **measured})
    out = {"settings": settings, "cells": cells, **measured}
    out.update(_landing(rows, teachers[0], students, measured["throughput"] or {}))
    return out


def _time(
    config: dict[str, Any], checkpoints: dict[str, Path], domain: str, settings: dict, cells: dict[str, str]
) -> dict[str, Any]:
    """Examples per second of every row's cell on ``domain``'s test texts (:mod:`metakd.throughput`), each
    on the inputs its own data gives (its tokenizer and ``max_length``: a row that reads 256 tokens is timed
    on 256)."""
    import torch

    from metakd.throughput import examples_per_second, load_model, probe_batch

    models, sizes, batches, made = {}, {}, {}, {}
    for key, path in checkpoints.items():
        data, seq = _cell_data(config, config["seeds"][0], cells[key])
        signature = (type(data).__name__, data.backbone, seq)
        if signature not in made:
            made[signature] = probe_batch(data, domain, settings["batch"], seq)
        batches[key] = made[signature]
        models[key], sizes[key] = load_model(path, data)
    rates = examples_per_second(models, batches, settings["repeats"])
    first = next(iter(batches.values()))
    return {
        key: {"examples_per_s": round(rates[key], 1), "parameters": sizes[key],
              "seq": int(batches[key]["input_ids"].shape[1])}
        for key in models
    } | {"_setup": {"runtime": f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads",
                    "batch": settings["batch"], "seq": first["input_ids"].shape[1]}}  # fmt: skip


def _cell_data(config: dict[str, Any], seed: int, cell: str) -> tuple[Any, int]:
    """The datamodule a cell reads (its resolved ``data`` section, without augmentation) and its
    ``max_length``."""
    from metakd.utils import import_object

    section = cell_config(config, seed, planned_cell(config, cell))["data"]
    init_args = {k: v for k, v in (section.get("init_args") or {}).items() if k != "augment"}
    return import_object(section["class_path"])(**init_args), int(init_args.get("max_length", 128))


def _export_and_predict(ckpt: Path, row: str, settings: dict) -> tuple[dict[str, Any], dict[str, Any] | None]:
    out = Path(settings["export"])
    log = out.with_name(out.name + ".export.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    code = run_cli(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"], log, True, None)
    if code != 0:
        return {"row": row, "error": f"export failed, see {log}"}, None
    export = {"row": row, "ckpt": str(ckpt), "out": str(out)}
    if not settings["text"]:
        return export, None
    from metakd.classify import TextClassifier

    [answer] = TextClassifier(out)([settings["text"]])
    return export, {"text": settings["text"], **answer}


def _landing(
    rows: dict[str, Any], teacher: str, students: list[str], speed: dict[str, Any]
) -> dict[str, Any]:
    """Every student row as a share of the teacher's accuracy and a multiple of its speed; the best one."""
    base = rows[teacher]["average"]["mean"]
    base_rate = (speed.get(teacher) or {}).get("examples_per_s")
    table = {}
    for key in [teacher, *students]:
        rate = (speed.get(key) or {}).get("examples_per_s")
        table[key] = {
            "label": rows[key]["label"],
            "accuracy": rows[key]["average"]["mean"],
            "kept": rows[key]["average"]["mean"] / base,
            "examples_per_s": rate,
            "parameters": (speed.get(key) or {}).get("parameters"),
            "speedup": rate / base_rate if rate and base_rate else None,
        }
        if (speed.get(key) or {}).get("seq") not in (None, (speed.get(teacher) or {}).get("seq")):
            table[key]["seq"] = speed[key]["seq"]  # timed on its own, longer (or shorter) inputs
    best = max(students, key=lambda k: rows[k]["average"]["mean"])
    return {"teacher": teacher, "best": best, "rows": table}


def render_showcase(section: dict[str, Any] | None, test_set: str) -> list[str]:
    """Markdown of the showcase (printed on the terminal with the tables)."""
    if not section:
        return []
    rows = section["rows"]
    setup = (section.get("throughput") or {}).get("_setup") or {}
    lines = ["## Speed, and where the best student lands", ""]
    if setup:
        lines += [
            f"Examples per second on the same runtime ({setup['runtime']}), batch {setup['batch']} of "
            f"{section['settings']['domain']} test texts at {setup['seq']} tokens (a row whose data reads "
            "another length is timed on that length and says so), median of "
            f"{section['settings']['repeats']} interleaved rounds (timings vary from run to run).",
            "",
        ]
    lines += [f"| model | parameters | ex/s | x teacher | {test_set} average [95% interval] | % of teacher |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows.values():
        params = f"{row['parameters'] / 1e6:.1f}M" if row["parameters"] else "—"
        rate = f"{row['examples_per_s']:.0f}" if row["examples_per_s"] else "—"
        speedup = f"{row['speedup']:.1f}x" if row["speedup"] else "—"
        accuracy = f"{100 * row['accuracy']:.1f}"
        if row.get("interval"):
            accuracy += " [{:.1f}, {:.1f}]".format(*(100 * v for v in row["interval"]))
        label = row["label"] + (f" (timed on {row['seq']} tokens)" if row.get("seq") else "")
        lines.append(f"| {label} | {params} | {rate} | {speedup} | {accuracy} | "
                     f"{100 * row['kept']:.1f}% |")  # fmt: skip
    best = rows[section["best"]]
    where = f"{100 * best['kept']:.1f}% of the teacher's accuracy"
    if best["speedup"]:
        where += f" at {best['speedup']:.0f}x its speed"
    lines += ["", f"**Best student**: {best['label']}: {where}."]
    if section.get("plot"):
        lines.append(f"Accuracy against speed: `{Path(section['plot']).name}`.")
    if section.get("note"):
        lines.append(f"({section['note']}.)")
    export = section.get("export") or {}
    if export.get("out"):
        lines.append(f"Exported to `{export['out']}` (its {section['settings']['domain']} model).")
    prediction = section.get("prediction")
    if prediction:
        probability = max(prediction["probabilities"].values())
        lines += [
            "",
            f'`python -m metakd classify --model {export["out"]} "{prediction["text"]}"` -> '
            f"**{prediction['label']}** (p = {probability:.3f})",
        ]
    elif export.get("error"):
        lines.append(export["error"])
    return lines + [""]
