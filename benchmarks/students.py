"""Searched students side by side: ``python benchmarks/students.py [--config <search pipeline config>]``.

Reads the finished cells of the search pipeline (``python -m metakd pipeline --config
configs/amazon/benchmark_search.yaml``) and writes ``<out>/<name>_students.{json,md,png}``: per domain, the
teacher and every row of the config's ``methods`` (the 2-layer MiniLM student, the students searched for
that domain by AdaBERT and by RoSearch, the tiny students), on

- accuracy on every test set of the config's ``test_sets`` (selected on dev; the report's test set,
  ``test_large`` when there is one, first and as ``accuracy``), read from the cells' result files, and
  robustness (accuracy under the word-substitution attack and the attack success rate, from the cells'
  ``robustness_<domain>.json``, else the summary their result files keep);
- size (parameters, float32 MB) and CPU inference throughput, **measured here in one run**: the same
  batch of the domain's test reviews (padded to ``--seq`` tokens), the same thread count, interleaved
  repetitions, medians (``speed.py``'s method);
- the searched architecture (operations, cells, FLOPs per token, the entropy of AdaBERT's operation
  distribution before and after the search), and whether the domains' differ.

``--seeds 1 2`` reports the cells of several seeds, one row each (entries keyed ``<seed>/<row>/<domain>``
instead of ``<row>/<domain>``); the default is the config's first seed.
"""

from __future__ import annotations

import argparse
import itertools
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
    from metakd.throughput import examples_per_second, load_model, probe_batch
    from metakd.utils import import_object

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "amazon" / "benchmark_search.yaml"))
    parser.add_argument("--quick", action="store_true", help="the cells of the pipeline's --quick run")
    parser.add_argument("--runs-dir", help="the pipeline's runs_dir (default: the config's)")
    parser.add_argument("--store-dir", help="the pipeline's store_dir (default: `store` beside runs_dir)")
    parser.add_argument("--results-store", help="the cells' result files (default: <results_dir>/cells)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--seeds", type=int, nargs="+", help="the cells' seeds (default: the config's first)")
    chosen.add_argument("--seed", type=int, help="one seed (as --seeds SEED)")
    parser.add_argument("--out", help="results folder (default: the config's results_dir)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64, help="tokens per example (the benchmark's max_length)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = pipeline.load_pipeline_config(args.config, quick=args.quick)
    for key in ("runs_dir", "store_dir", "results_store"):  # as the pipeline's options
        if getattr(args, key):
            config[key] = getattr(args, key)
    seeds = args.seeds or ([args.seed] if args.seed is not None else config["seeds"][:1])
    primary = pipeline.report_test_set(config)
    test_sets = [primary, *(name for name in config["test_sets"] if name != primary)]
    out_dir = Path(args.out or config["results_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    section = config["student"]["data"]
    data = import_object(section["class_path"])(**section.get("init_args", {}))
    rows, labels, searched = table_rows(config)
    models, batches, entries = {}, {}, {}

    def key_of(seed: int, row: str, domain: str) -> str:
        return f"{row}/{domain}" if len(seeds) == 1 else f"{seed}/{row}/{domain}"

    for seed, domain, (row, pattern) in itertools.product(seeds, config["domains"], rows.items()):
        cell = pattern.format(d=domain)
        result = pipeline.read_result(config, seed, cell)
        checkpoint = pipeline.best_checkpoint(config, seed, cell)
        if result is None or not checkpoint.is_file():
            why = "not finished" if result is None else f"{checkpoint} missing"
            print(f"skipping {seed}/{cell}: {why}")
            continue
        key = key_of(seed, row, domain)
        model, size = load_model(checkpoint, data)
        entry = cell_entry(config, seed, cell, domain, result, test_sets, row in searched)
        entries[key] = {"row": row, "label": labels[row], "seed": seed, "domain": domain, "cell": cell,
                        "parameters": size, "size_mb": round(4 * size / 2**20, 1), **entry}  # fmt: skip
        # the teacher and the unsearched students have one shape: timed once (first seed and domain)
        if row in searched or (seed, domain) == (seeds[0], config["domains"][0]):
            models[key], batches[key] = model, probe_batch(data, domain, args.batch, args.seq)
    throughput = examples_per_second(models, batches, args.repeats)
    for key, entry in entries.items():
        shared = key_of(seeds[0], entry["row"], config["domains"][0])
        entry["examples_per_s"] = round(throughput.get(key, throughput.get(shared, float("nan"))), 1)
    base = throughput.get(key_of(seeds[0], "teacher", config["domains"][0]))
    for entry in entries.values():
        entry["speedup_vs_teacher"] = round(entry["examples_per_s"] / base, 2) if base else None
    cells = {  # per searched row and seed: the architectures of its domains
        (row, seed): [
            json.dumps(e["cell_json"], sort_keys=True)
            for e in entries.values()
            if (e["row"], e["seed"]) == (row, seed)
        ]
        for row in searched
        for seed in seeds
    }
    summary = {
        "config": str(args.config),
        "seed": seeds[0],
        "seeds": seeds,
        "test_sets": test_sets,
        "measure": {"batch": args.batch, "seq": args.seq, "threads": args.threads, "repeats": args.repeats},
        "entries": entries,
        "architectures_differ_across_domains": any(len(set(c)) > 1 for c in cells.values()),
        "distinct_architectures": {
            row: len({c for (r, _), found in cells.items() if r == row for c in found}) for row in searched
        },
        "versions": pipeline.package_versions(),
    }
    name = f"{config['name']}_students"
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(render(summary), encoding="utf-8")
    plot(summary, out_dir / f"{name}.png")
    print(render(summary))
    return 0


def cell_entry(
    config: dict[str, Any],
    seed: int,
    cell: str,
    domain: str,
    result: dict[str, Any],
    test_sets: list[str],
    searched: bool,
) -> dict[str, Any]:
    """What a finished cell's files say of it on ``domain``: its accuracy on each test set (``accuracy``:
    the first, the report's), its attack summary (``robustness_<domain>.json`` in the runs folder, else the
    one its result file keeps) and, for a searched student, its architecture."""
    from metakd import pipeline
    from metakd.pipeline import cellstore
    from metakd.pipeline.robustness import attack_summary
    from metakd.search.derive import describe

    accuracies = {name: pipeline.cell_accuracy(result, domain, name) for name in test_sets}
    entry: dict[str, Any] = {"accuracy": accuracies[test_sets[0]], "accuracy_by_test_set": accuracies}
    report = attack_summary(config, seed, cell, domain, result)
    if report:
        entry.update(
            {k: report[k] for k in ("clean_accuracy", "accuracy_under_attack", "attack_success_rate")}
        )
        entry["attacked_examples"] = report.get("examples")
    if searched:
        stored = result["config"]["model"]["init_args"]["student_model"]["init_args"]["architecture"]
        architecture = json.loads(
            Path(cellstore.fill_store(stored, pipeline.store_dir(config))).read_text(encoding="utf-8")
        )
        entry["architecture"] = describe(architecture)
        entry["flops_per_token"] = architecture["cost"]["flops_per_token"]
        entry["cell_json"] = {"num_cells": architecture["num_cells"], "cell": architecture["cell"]}
        entry["op_entropy"] = architecture.get("derived_from", {}).get("op_entropy")
    return entry


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


def markdown_table(header: list[str], align: str, rows: list[list[Any]]) -> list[str]:
    """A Markdown table; ``align`` has an ``l`` or ``r`` per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [f"| {' | '.join(header)} |", f"| {' | '.join(rule)} |"] + [
        f"| {' | '.join(str(value) for value in row)} |" for row in rows
    ]


def render(summary: dict[str, Any]) -> str:
    m, test_sets, seeds = summary["measure"], summary["test_sets"], summary["seeds"]
    entries = list(summary["entries"].values())
    several = len(seeds) > 1  # then a seed column
    seed, seed_align = (["seed"], "r") if several else ([], "")

    def seed_of(entry: dict[str, Any]) -> list[Any]:
        return [entry["seed"]] if several else []

    lines = [
        "# Searched students side by side",
        "",
        f"Seed{'s' if several else ''} {', '.join(map(str, seeds))}. Throughput: batch {m['batch']}, "
        f"{m['seq']} tokens, {m['threads']} threads, median of {m['repeats']} interleaved repetitions, all "
        "models in one run (the teacher and the MiniLM student timed once: their shape does not depend on "
        f"the domain). Accuracy on {' and '.join(test_sets)} (the report's test set first), selected on dev. "
        "Robustness: accuracy under the word-substitution attack (clean accuracy on the attacked examples) "
        "and attack success rate.",
        "",
    ]
    lines += markdown_table(
        [*seed, "domain", "model", "params", "MB", "ex/s", "vs teacher", *(f"{t} acc" for t in test_sets),
         "under attack (clean)", "success"],
        seed_align + "ll" + "r" * (6 + len(test_sets)),
        [[*seed_of(e), e["domain"], e["label"], f"{e['parameters'] / 1e6:.1f}M", e["size_mb"],
          e["examples_per_s"], f"{e['speedup_vs_teacher']}x",
          *(pct(e["accuracy_by_test_set"][t]) for t in test_sets),
          f"{pct(e.get('accuracy_under_attack'))} ({pct(e.get('clean_accuracy'))})",
          pct(e.get("attack_success_rate"))] for e in entries],
    )  # fmt: skip
    lines += ["", "## Architectures searched per domain", ""]
    lines += markdown_table(
        [*seed, "domain", "search", "architecture", "FLOPs/token", "operation entropy (AdaBERT)"],
        seed_align + "lllrr",
        [[*seed_of(e), e["domain"], e["row"], e["architecture"], f"{e['flops_per_token']:,}",
          entropy_text(e.get("op_entropy"))] for e in entries if "architecture" in e],
    )  # fmt: skip
    differ = summary["architectures_differ_across_domains"]
    distinct = ", ".join(f"{row}: {n}" for row, n in summary["distinct_architectures"].items())
    lines += ["", f"The searched architectures {'differ' if differ else 'do not differ'} across domains "
              f"(distinct per search{' over all seeds' if several else ''}: {distinct}).", ""]  # fmt: skip
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
    titles = (f"{summary['test_sets'][0]} accuracy (%)", "accuracy under attack (%)")
    for axis, title in zip(axes, titles):
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
