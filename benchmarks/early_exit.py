"""FastBERT's trade-off: ``python benchmarks/early_exit.py [--config <pipeline config>]``.

For every domain's FastBERT student of a finished pipeline run (``<runs_dir>/<name>/<seed>/student/
<row>/<domain>``, the ``fastbert_l2`` row by default), at each ``speed`` of the early-exit rule (0, 0.1,
0.2, 0.4, 0.6, 0.8): accuracy on the domain's dev and test splits, the average number of layers the test
examples ran, and measured CPU throughput of batched adaptive inference (PyTorch, the test split in the
pipeline's evaluation batches). In the same run, on the same batches and threads: the predecessor teacher
(the domain's single-domain teacher) and the 2-layer students of the other rows (``none``, ``theseus_k3``),
so that every throughput is comparable. Throughputs are medians of ``--reps`` interleaved repetitions over
all domains' test batches; accuracies are averaged over the domains (each split 170-206 reviews).

Writes ``<out>/<name>_early_exit.{json,md,png}`` (the PNG: test accuracy against throughput).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEEDS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8)


def target_rows(batch: dict[str, torch.Tensor], target_index: int | None) -> torch.Tensor:
    if target_index is None:
        return torch.ones_like(batch["labels"], dtype=torch.bool)
    return batch["domain_ids"] == target_index


@torch.inference_mode()
def early_exit_pass(
    model: Any, batches: list[dict[str, torch.Tensor]], speed: float, target: int | None
) -> dict:
    """Correct predictions, examples and layers run (target-domain rows) of early exit at ``speed``."""
    correct = examples = layers = 0
    for batch in batches:
        out = model.early_exit(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], speed)
        rows = target_rows(batch, target)
        correct += int((out.logits[rows].argmax(-1) == batch["labels"][rows]).sum())
        examples += int(rows.sum())
        layers += int(out.exit_layers[rows].sum())
    return {"correct": correct, "examples": examples, "layers": layers}


@torch.inference_mode()
def logits_pass(run: Any, batches: list[dict[str, torch.Tensor]], target: int | None) -> dict:
    correct = examples = 0
    for batch in batches:
        rows = target_rows(batch, target)
        correct += int((run(batch)[rows].argmax(-1) == batch["labels"][rows]).sum())
        examples += int(rows.sum())
    return {"correct": correct, "examples": examples}


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    models: dict[str, Any], domains: list[str], speeds: tuple[float, ...], reps: int
) -> dict[str, dict[str, Any]]:
    """``models[domain]``: ``{"fastbert", "dev", "test", "target", "references": {row: run(batch)}}``.
    Returns one entry per FastBERT speed (``fastbert@<speed>``) and per reference row: per-domain dev and
    test accuracy, average layers, and the median seconds over ``reps`` interleaved passes of all test
    batches (a warm-up pass first)."""
    entries: dict[str, dict[str, Any]] = {}
    jobs: dict[str, Any] = {}
    for speed in speeds:
        name = f"fastbert@{speed:g}"
        entries[name] = {"kind": "fastbert", "speed": speed, "dev": {}, "test": {}, "layers": {}}

        def run_fastbert(split: str, domain: str, speed: float = speed) -> dict:
            m = models[domain]
            return early_exit_pass(m["fastbert"], m[split], speed, m["target"])

        jobs[name] = run_fastbert
    for row in next(iter(models.values()))["references"]:
        entries[row] = {
            "kind": "reference",
            "is_teacher": row.startswith("teacher"),
            "dev": {},
            "test": {},
            "layers": {},
        }

        def run_reference(split: str, domain: str, row: str = row) -> dict:
            m = models[domain]
            return logits_pass(m["references"][row], m[split], m["target"])

        jobs[row] = run_reference
    for name, job in jobs.items():
        for domain in domains:
            for split in ("dev", "test"):
                result = job(split, domain)
                entries[name][split][domain] = result["correct"] / result["examples"]
                if split == "test":
                    entries[name]["examples"] = entries[name].get("examples", 0) + result["examples"]
                    if "layers" in result:
                        entries[name]["layers"][domain] = result["layers"] / result["examples"]
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():  # warm-up
        job("test", domains[0])
    for _ in range(reps):
        for name, job in jobs.items():  # interleaved: machine load hits every row alike
            times[name].append(sum(timed(lambda d=d, j=job: j("test", d)) for d in domains))
    for name, entry in entries.items():
        entry["median_s"] = statistics.median(times[name])
        entry["examples_per_s"] = entry["examples"] / entry["median_s"]
        for split in ("dev", "test"):
            entry[f"{split}_acc"] = statistics.fmean(entry[split].values())
        entry["avg_layers"] = statistics.fmean(entry["layers"].values()) if entry["layers"] else None
    return entries


def load_domain(config: dict[str, Any], seed: int, domain: str, rows: dict[str, str]) -> dict[str, Any]:
    """The FastBERT student, the reference models and the dev/test batches of one domain."""
    import yaml

    from metakd import pipeline
    from metakd.export import build_student, read_student_checkpoint
    from metakd.teachers import FrozenTeacher, TeacherRequest
    from metakd.utils import import_object

    def cell(row: str) -> Path:
        return pipeline.cell_dir(config, seed, pipeline.student_cell_name(row, domain))

    fastbert_cell = cell(rows["fastbert"])
    cell_config = yaml.safe_load((fastbert_cell / "cell.yaml").read_text(encoding="utf-8"))
    data = import_object(cell_config["data"]["class_path"])(**cell_config["data"]["init_args"])
    data.setup("fit")
    data.setup("test")
    target = data.domain_names.index(domain)
    fastbert = build_student(read_student_checkpoint(fastbert_cell / "checkpoints" / "best.ckpt")).eval()
    references: dict[str, Any] = {}
    teacher_cell = pipeline.cell_dir(config, seed, f"teacher/single/{domain}")
    teacher = FrozenTeacher(
        str(teacher_cell / "checkpoints" / "best.ckpt"), data.label_names, data.domain_names, domain
    )
    references["teacher (single-domain, 6 layers)"] = lambda b: teacher.forward(b, TeacherRequest()).logits
    for label, row in rows.items():
        if label == "fastbert":
            continue
        path = cell(row) / "checkpoints" / "best.ckpt"
        if path.is_file():
            model = build_student(read_student_checkpoint(path)).eval()
            references[label] = lambda b, m=model: (
                m(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
            )
    return {
        "fastbert": fastbert,
        "dev": list(data.val_dataloader()),
        "test": list(data.test_dataloader()),
        "target": target,
        "references": references,
    }


def render(report: dict[str, Any]) -> str:
    entries = report["entries"]
    base = entries["fastbert@0"]
    lines = [
        f"# FastBERT early exit: accuracy, layers and throughput ({report['name']}, seed {report['seed']})",
        "",
        f"Domains {', '.join(report['domains'])}; accuracy (%) averaged over the domains' dev / test splits; "
        f"layers = average layers the test examples ran (of {report['num_layers']}); throughput = test "
        f"examples / s of batched PyTorch inference (the pipeline's evaluation batches of "
        f"{report['batch_size']}, max_length {report['max_length']}), median of {report['reps']} interleaved "
        f"repetitions, {report['threads']} threads, all rows in one run on the same batches.",
        "",
        "| model | dev acc | test acc | retained vs teacher | layers | ex/s | vs speed 0 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    teacher = next((e for e in entries.values() if e.get("is_teacher")), None)
    for name, entry in entries.items():
        label = f"FastBERT, speed {entry['speed']:g}" if entry["kind"] == "fastbert" else name
        layers = "—" if entry["avg_layers"] is None else f"{entry['avg_layers']:.2f}"
        retained = "—" if teacher is None else f"{100 * entry['test_acc'] / teacher['test_acc']:.1f}%"
        lines.append(
            f"| {label} | {100 * entry['dev_acc']:.1f} | {100 * entry['test_acc']:.1f} | {retained} | "
            f"{layers} | {entry['examples_per_s']:.0f} | "
            f"{entry['examples_per_s'] / base['examples_per_s']:.2f}x |"
        )
    chosen = report.get("dev_choice")
    if chosen is not None:
        lines += [
            "",
            "Chosen on dev (the fastest speed whose dev accuracy is within "
            f"{report['dev_tolerance']:g} points of speed 0's): speed {chosen:g}.",
        ]
    if report.get("plot"):
        lines += ["", f"![accuracy against throughput]({report['plot']})"]
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    entries = report["entries"]
    fast = [e for e in entries.values() if e["kind"] == "fastbert"]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    axis.plot(
        [e["examples_per_s"] for e in fast], [100 * e["test_acc"] for e in fast], marker="o", label="FastBERT"
    )
    for e in fast:
        axis.annotate(
            f"{e['speed']:g}",
            (e["examples_per_s"], 100 * e["test_acc"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    for name, e in entries.items():
        if e["kind"] == "reference":
            axis.scatter([e["examples_per_s"]], [100 * e["test_acc"]], marker="s", label=name)
    axis.set_xlabel("test examples / s (CPU, batched)")
    axis.set_ylabel("test accuracy (%), mean over domains")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def dev_choice(entries: dict[str, Any], tolerance: float) -> float:
    """The fastest speed (highest throughput) whose dev accuracy is within ``tolerance`` points of speed 0."""
    base = entries["fastbert@0"]["dev_acc"]
    ok = [e for e in entries.values() if e["kind"] == "fastbert" and 100 * (base - e["dev_acc"]) <= tolerance]
    return max(ok, key=lambda e: e["examples_per_s"])["speed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "amazon" / "benchmark_compression.yaml"))
    parser.add_argument("--runs-dir", help="the pipeline's runs_dir (default: the config's)")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's first seed")
    parser.add_argument("--domains", nargs="+", help="only these domains (default: the config's)")
    parser.add_argument("--row", default="fastbert_l2", help="the FastBERT row of the pipeline config")
    parser.add_argument(
        "--references", nargs="*", default=["none", "theseus_k3"], help="2-layer student rows"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--dev-tolerance", type=float, default=1.0, help="points of dev accuracy for the choice"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from metakd import pipeline
    from metakd.pipeline import package_versions
    from metakd.utils import write_json

    config = pipeline.load_pipeline_config(args.config)
    if args.runs_dir:
        config["runs_dir"] = args.runs_dir
    seed = args.seed if args.seed is not None else config["seeds"][0]
    domains = list(args.domains or config["domains"])
    rows = {"fastbert": args.row}
    for row in args.references:
        rows[f"student: {pipeline.row_spec(row, config.get('variants')).label} (2 layers)"] = row
    models = {domain: load_domain(config, seed, domain, rows) for domain in domains}
    first = models[domains[0]]
    start = time.perf_counter()
    entries = measure(models, domains, SPEEDS, args.reps)
    data_args = config["student"]["data"]["init_args"]
    report = {
        "name": config["name"],
        "seed": seed,
        "domains": domains,
        "row": args.row,
        "num_layers": len(first["fastbert"].bert.encoder.layer),
        "batch_size": data_args.get("eval_batch_size", data_args.get("batch_size")),
        "max_length": data_args.get("max_length"),
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "entries": entries,
        "dev_tolerance": args.dev_tolerance,
        "dev_choice": dev_choice(entries, args.dev_tolerance),
        "seconds": round(time.perf_counter() - start, 1),
        "versions": package_versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{config['name']}_early_exit"
    plotted = plot(report, out / f"{stem}.png")
    report["plot"] = None if plotted is None else Path(plotted).name
    write_json(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(render(report), encoding="utf-8")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
