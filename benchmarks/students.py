"""Searched students side by side: ``python benchmarks/students.py [--config <search pipeline config>]``.

Reads the finished cells of the search pipeline (``python -m metakd pipeline --config
configs/amazon/benchmark_search.yaml``) and writes ``<out>/<name>_students.{json,md,png}``: per domain, the
teacher and every row of the config's ``methods`` (the 2-layer MiniLM student, the students searched for
that domain by AdaBERT and by RoSearch, the tiny students), on

- accuracy (test, selected on dev) and robustness (accuracy under the word-substitution attack and the
  attack success rate, from the cells' ``robustness_<domain>.json``), read from the cells;
- size (parameters, float32 MB) and CPU inference throughput, **measured here in one run**: the same
  batch of the domain's test reviews (padded to ``--seq`` tokens), the same thread count, interleaved
  repetitions, medians (``speed.py``'s method);
- the searched architecture (operations, cells, FLOPs per token, the entropy of AdaBERT's operation
  distribution before and after the search), and whether the domains' differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from metakd import pipeline
    from metakd.pipeline import cellstore
    from metakd.search.derive import describe
    from metakd.throughput import examples_per_second, load_model, probe_batch
    from metakd.utils import import_object

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "amazon" / "benchmark_search.yaml"))
    parser.add_argument("--quick", action="store_true", help="the cells of the pipeline's --quick run")
    parser.add_argument("--runs-dir", help="the pipeline's runs_dir (default: the config's)")
    parser.add_argument("--seed", type=int, help="the cells' seed (default: the config's first)")
    parser.add_argument("--out", help="results folder (default: the config's results_dir)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64, help="tokens per example (the benchmark's max_length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = pipeline.load_pipeline_config(args.config, quick=args.quick)
    if args.runs_dir:
        config["runs_dir"] = args.runs_dir
    seed = args.seed if args.seed is not None else config["seeds"][0]
    out_dir = Path(args.out or config["results_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    section = config["student"]["data"]
    data = import_object(section["class_path"])(**section.get("init_args", {}))
    rows, labels, searched = table_rows(config)
    models, batches, entries = {}, {}, {}
    for domain in config["domains"]:
        for row, pattern in rows.items():
            cell = pattern.format(d=domain)
            directory = pipeline.cell_dir(config, seed, cell)
            result_path = directory / pipeline.RESULT_FILE
            if not result_path.is_file():
                print(f"skipping {cell}: not finished ({result_path} missing)")
                continue
            result = json.loads(result_path.read_text(encoding="utf-8"))
            key = f"{row}/{domain}"
            model, size = load_model(directory / "checkpoints" / "best.ckpt", data)
            accuracy = pipeline.cell_accuracy(result, domain)
            entry = {"row": row, "label": labels[row], "domain": domain, "cell": cell, "parameters": size,
                     "size_mb": round(4 * size / 2**20, 1), "accuracy": accuracy}  # fmt: skip
            robustness = directory / f"robustness_{domain}.json"
            if robustness.is_file():
                report = json.loads(robustness.read_text(encoding="utf-8"))
                entry.update(
                    {k: report[k] for k in ("clean_accuracy", "accuracy_under_attack", "attack_success_rate")}
                )
                entry["attacked_examples"] = report["examples"]
            if row in searched:
                stored = result["config"]["model"]["init_args"]["student_model"]["init_args"]["architecture"]
                path = Path(cellstore.fill_store(stored, pipeline.store_dir(config)))
                architecture = json.loads(path.read_text(encoding="utf-8"))
                entry["architecture"] = describe(architecture)
                entry["flops_per_token"] = architecture["cost"]["flops_per_token"]
                entry["cell_json"] = {"num_cells": architecture["num_cells"], "cell": architecture["cell"]}
                entry["op_entropy"] = architecture.get("derived_from", {}).get("op_entropy")
            # the teacher and the unsearched students have one shape: timed once (on the first domain)
            if row in searched or domain == config["domains"][0]:
                models[key], batches[key] = model, probe_batch(data, domain, args.batch, args.seq)
            entries[key] = entry
    throughput = examples_per_second(models, batches, args.repeats)
    for key, entry in entries.items():
        shared = f"{entry['row']}/{config['domains'][0]}"
        entry["examples_per_s"] = round(throughput.get(key, throughput.get(shared, float("nan"))), 1)
    base = throughput.get(f"teacher/{config['domains'][0]}")
    for entry in entries.values():
        entry["speedup_vs_teacher"] = round(entry["examples_per_s"] / base, 2) if base else None
    cells = {
        row: [json.dumps(e["cell_json"], sort_keys=True) for e in entries.values() if e["row"] == row]
        for row in searched
    }
    summary = {
        "config": str(args.config),
        "seed": seed,
        "measure": {"batch": args.batch, "seq": args.seq, "threads": args.threads, "repeats": args.repeats},
        "entries": entries,
        "architectures_differ_across_domains": any(len(set(c)) > 1 for c in cells.values()),
        "distinct_architectures": {row: len(set(c)) for row, c in cells.items()},
        "versions": pipeline.package_versions(),
    }
    name = f"{config['name']}_students"
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(render(summary), encoding="utf-8")
    plot(summary, out_dir / f"{name}.png")
    print(render(summary))
    return 0


def table_rows(config: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """``(row -> cell pattern, row -> label, the searched rows)``: the mixed teacher, then each method of
    the config (``vanilla``: the 2-layer MiniLM student ``minilm_2l``; a row with a search config:
    ``adabert`` or ``rosearch`` by the search it runs; any other row under its own name)."""
    import yaml

    variants = config.get("variants") or {}
    rows = {"teacher": "teacher/mixed"}
    labels = {"teacher": "teacher (MiniLM-L6, mixed-domain)"}
    searched: set[str] = set()
    for method in config["methods"]:
        variant = variants.get(method) or {}
        key = method
        if method == "vanilla":
            key, label = "minilm_2l", "MiniLM 2-layer student, vanilla KD"
        elif variant.get("search"):
            search = yaml.safe_load(Path(variant["search"]).read_text(encoding="utf-8")) or {}
            strategy = "rosearch" if (search.get("rosearch") or {}).get("enabled") else "adabert"
            key = strategy if strategy not in rows else method
            label = variant.get("label") or f"{strategy} student searched for the domain"
            searched.add(key)
        else:
            label = variant.get("label") or method
        rows[key], labels[key] = f"student/{method}/{{d}}", label
    return rows, labels, searched


def entropy_text(entropy: dict[str, float] | None) -> str:
    if not entropy:
        return "—"
    return f"{entropy['initial']:.3f} -> {entropy['final']:.3f} (max {entropy['max']:.3f})"


def pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def render(summary: dict[str, Any]) -> str:
    m = summary["measure"]
    lines = [
        "# Searched students side by side",
        "",
        f"Seed {summary['seed']}. Throughput: batch {m['batch']}, {m['seq']} tokens, {m['threads']} threads, "
        f"median of {m['repeats']} interleaved repetitions, all models in one run (the teacher and the "
        "MiniLM student timed once: their shape does not depend on the domain). Accuracy: test, selected on "
        "dev. Robustness: accuracy under the word-substitution attack (clean accuracy on the attacked "
        "examples) and attack success rate.",
        "",
        "| domain | model | params | MB | ex/s | vs teacher | test acc | under attack (clean) | success |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in summary["entries"].values():
        lines.append(
            f"| {e['domain']} | {e['label']} | {e['parameters'] / 1e6:.1f}M | {e['size_mb']} | "
            f"{e['examples_per_s']} | "
            f"{e['speedup_vs_teacher']}x | {pct(e['accuracy'])} | {pct(e.get('accuracy_under_attack'))} "
            f"({pct(e.get('clean_accuracy'))}) | {pct(e.get('attack_success_rate'))} |"
        )
    lines += [
        "",
        "## Architectures searched per domain",
        "",
        "| domain | search | architecture | FLOPs/token | operation entropy (AdaBERT) |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for e in summary["entries"].values():
        if "architecture" in e:
            lines.append(
                f"| {e['domain']} | {e['row']} | {e['architecture']} | {e['flops_per_token']:,} | "
                f"{entropy_text(e.get('op_entropy'))} |"
            )
    differ = summary["architectures_differ_across_domains"]
    distinct = ", ".join(f"{row}: {n}" for row, n in summary["distinct_architectures"].items())
    lines += ["", f"The searched architectures {'differ' if differ else 'do not differ'} across domains "
              f"(distinct per search: {distinct}).", ""]  # fmt: skip
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    markers = {"teacher": "s", "minilm_2l": "o", "adabert": "^", "rosearch": "v"}
    for e in summary["entries"].values():
        for axis, key in zip(axes, ("accuracy", "accuracy_under_attack")):
            if e.get(key) is not None:
                marker = markers.get(e["row"], "D")
                axis.scatter(e["examples_per_s"], 100 * e[key], marker=marker, label=e["row"])
                axis.annotate(e["domain"][:4], (e["examples_per_s"], 100 * e[key]), fontsize=7)
    for axis, title in zip(axes, ("test accuracy (%)", "accuracy under attack (%)")):
        axis.set_xscale("log")
        axis.set_xlabel("examples / s (CPU, log)")
        axis.set_ylabel(title)
    handles, names = axes[0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
