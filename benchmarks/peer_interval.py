"""A pipeline row minus a peer that ran outside the pipeline, paired by example:
``python benchmarks/peer_interval.py --config configs/amazon/tiny_slice.yaml
--row textcnn_pc128_metakd_mse_transfer
--peer benchmarks/results/amazon_tiny_slice_model2vec_peer_predictions_test_large.jsonl.gz
[--test-set test_large] [--results-store benchmarks/results/cells] [--json out.json]``.

The peer's prediction rows (``benchmarks/model2vec_peer.py`` writes them: ``seed, domain, example_id, label,
pred``) are joined with the row's cells' per-example predictions (their result files) on ``(domain, seed,
example_id)``; the difference of accuracies gets the report's paired bootstrap interval (examples resampled
within each (domain, seed), 10,000 replicates, seed 0; the average weighs every (domain, seed) equally), per
domain and on the average. Prints a Markdown table; ``--json`` writes the intervals.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def read_rows(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def row_minus_peer(config: dict[str, Any], row_name: str, peer: list[dict[str, Any]], test_set: str,
                   resamples: int = 10000) -> dict[str, Any]:  # fmt: skip
    """Intervals of the pipeline row ``row_name`` (a variants entry or method) minus the peer, per domain
    and on the average; keys ``(domain, seed, example_id)`` the two share."""
    from metakd import pipeline
    from metakd.pipeline.analysis import named_rows
    from metakd.stats import pair_predictions, paired_bootstrap

    rows = pipeline.table_rows(config, {cell.name for cell in pipeline.plan_cells(config)})
    matches = list(named_rows(row_name, rows).values())
    if not matches:
        raise SystemExit(f"error: --row {row_name!r} is not a student row of {config['name']}")
    row = matches[-1]
    ours: dict[tuple, bool] = {}
    for domain, cell in row.cells.items():
        for seed in config["seeds"]:
            predictions = pipeline.cell_predictions(pipeline.read_result(config, seed, cell), test_set)
            for p in predictions or []:
                if p["domain"] == domain:
                    ours[(domain, seed, p["example_id"])] = p["pred"] == p["label"]
    theirs = {(p["domain"], p["seed"], p["example_id"]): p["pred"] == p["label"] for p in peer}
    a, b, keys = pair_predictions(ours, theirs)
    out: dict[str, Any] = {"row": row.key, "label": row.label, "test_set": test_set, "examples": len(keys)}
    domains = sorted({k[0] for k in keys})
    for domain in domains:
        index = [i for i, k in enumerate(keys) if k[0] == domain]
        out[domain] = paired_bootstrap(a[index], b[index], [keys[i][1] for i in index], resamples).as_dict()
    out["average"] = paired_bootstrap(a, b, [k[:2] for k in keys], resamples).as_dict()
    out["domains"] = domains
    return out


def markdown(result: dict[str, Any], peer_label: str) -> str:
    def cell(i: dict[str, Any]) -> str:
        text = f"{100 * i['diff']:+.1f} [{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"
        return f"**{text}**" if i["significant"] else text

    domains = result["domains"]
    title = f"{result['label']} minus {peer_label} ({result['test_set']})"
    values = [cell(result[d]) for d in domains] + [cell(result["average"])]
    return "\n".join([
        f"| {title} | " + " | ".join(domains) + " | average |",
        "| --- |" + " ---: |" * (len(domains) + 1),
        "| paired 95% interval | " + " | ".join(values) + " |",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from metakd import pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--row", required=True, help="the pipeline row (a variants entry or a method)")
    parser.add_argument("--peer", required=True, help="the peer's prediction rows (.jsonl or .jsonl.gz)")
    parser.add_argument("--peer-label", default="the model2vec peer")
    parser.add_argument("--test-set", help="default: the config's report test set")
    parser.add_argument("--results-store", help="the cells' result files (default: the config's)")
    parser.add_argument("--json", help="write the intervals here")
    args = parser.parse_args(argv)
    config = pipeline.load_pipeline_config(args.config)
    if args.results_store:
        config["results_store"] = args.results_store
    peer_path = Path(args.peer)
    if not peer_path.is_file():
        parser.error(f"--peer {peer_path}: no such file")
    result = row_minus_peer(
        config, args.row, read_rows(peer_path), args.test_set or pipeline.report_test_set(config)
    )
    print(markdown(result, args.peer_label))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
