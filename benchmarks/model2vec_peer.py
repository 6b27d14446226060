"""model2vec's own classifier as a peer of the tiny students: ``python benchmarks/model2vec_peer.py
--config configs/amazon/tiny_students.yaml [--seeds 1 2 3] [--domains books dvd] [--pca-dims 128]
[--out benchmarks/results] [--name amazon_model2vec_peer] [--max-epochs N] [--test-sets test test_large]``.

What a user would pick instead of distilling a tiny student: model2vec (``pip install -e '.[model2vec]'``)
distils static embeddings from the teachers' backbone (``model2vec.distill``, the same cached
``StaticModel`` that ``embedding_init: model2vec`` starts a TextCNN from) and trains its own classifier on
them (``model2vec.train.StaticModelForClassification``: mean of the token vectors, an MLP head, its own
training loop with early stopping on the dev split; lr 1e-3 and batch size by its own rule).

It is not a pipeline row (a ``metakd.Student``): the classifier is model2vec's own ``nn.Module`` with its
own tokenizer (the backbone's WordPiece vocabulary without the ``[unused*]`` tokens, re-indexed) and its
own training loop, and reimplementing it as a ``StudentModel`` would benchmark a copy, not model2vec. So
this script runs it on exactly the pipeline's examples instead: per seed and domain, the student data of
the pipeline config (``student.data``, with ``target_domain`` set) gives the training, dev and test
records (``MultiDomainDataModule.loaded_records``); a sentence pair is joined by ``" [SEP] "``. The one
classifier is scored on the paper's ``test`` split and on each further evaluation set (``--test-sets``;
default: all the data offers, Amazon's ``test_large``), read as the pipeline's cells read it (the data
with ``test_set`` set), so its ``example_id`` values are the pipeline's.

Writes ``<out>/<name>.json`` (the pipeline's table shapes: ``main["student_model2vec_peer"][domain]``
and ``average`` with mean, std, n and values of the ``test`` accuracy; ``metrics``: that, the accuracy on
each further test set under its name (``metrics["test_large"]``), dev accuracy, training seconds,
throughput and size likewise; ``test_sets`` and ``by_test_set[<set>]["main"]["student_model2vec_peer"]``
as in the pipeline's summary; ``predictions``: the file of each test set) and the pipeline's prediction
rows (``cell: student/model2vec_peer/<domain>``, so paired intervals against any pipeline row of the same
examples can be computed): ``<out>/<name>_predictions.jsonl.gz`` for ``test``,
``<out>/<name>_predictions_<set>.jsonl.gz`` for each further set. Throughput is end to end from raw text
(model2vec's tokenizer included), at ``--batch`` texts per call, on the ``test`` texts; size is the
float32 parameter count in MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROW = "model2vec_peer"
CELL_METRICS = ("dev", "train_seconds", "texts_per_second", "size_mb", "parameters", "rows")


def texts(records: list[dict[str, Any]]) -> list[str]:
    """The texts model2vec reads (a pair joined by ``" [SEP] "``)."""
    return [
        r["text"] if r.get("text_pair") is None else f"{r['text']} [SEP] {r['text_pair']}" for r in records
    ]


def datamodule(data: dict[str, Any], domain: str, test_set: str = "test") -> Any:
    """The pipeline's student datamodule for ``domain``, testing on ``test_set`` (as a cell tests on it)."""
    from metakd.utils import import_object

    cls = import_object(str(data["class_path"]))
    return cls(**{**(data.get("init_args") or {}), "target_domain": domain, "test_set": test_set})


def predictions_file(name: str, test_set: str) -> str:
    """The predictions file of ``test_set``: ``<name>_predictions.jsonl.gz`` for ``test``, else
    ``<name>_predictions_<test_set>.jsonl.gz`` (the pipeline's naming of its per-test-set files)."""
    return f"{name}_predictions{'' if test_set == 'test' else '_' + test_set}.jsonl.gz"


def run_cell(
    static: Any, data: dict[str, Any], domain: str, seed: int, args: argparse.Namespace, test_sets: list[str]
) -> dict:
    """Train model2vec's classifier on one domain; its accuracy on each of ``test_sets`` (``test`` first),
    dev accuracy, cost, and its predictions on each test set (``rows[test_set]``)."""
    import numpy as np
    from model2vec.train import StaticModelForClassification

    dm = datamodule(data, domain)
    split = {name: dm.loaded_records(name) for name in ("train", "val")}
    labels = dm.label_names
    classifier = StaticModelForClassification.from_static_model(model=static)
    start = time.perf_counter()
    classifier.fit(
        texts(split["train"]), [labels[r["label"]] for r in split["train"]],
        X_val=texts(split["val"]), y_val=[labels[r["label"]] for r in split["val"]],
        random_seed=seed, device="cpu", max_epochs=args.max_epochs,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    order = [list(classifier.classes).index(name) for name in labels]  # columns in the data's label order

    def probabilities(records: list[dict[str, Any]]) -> np.ndarray:
        return classifier.predict_proba(texts(records), batch_size=args.batch)[:, order]

    dev = probabilities(split["val"]).argmax(1)
    parameters = sum(p.numel() for p in classifier.parameters())
    cell: dict[str, Any] = {
        "dev": float((dev == np.array([r["label"] for r in split["val"]])).mean()),
        "train_seconds": train_seconds,
        "size_mb": parameters * 4 / 1e6,
        "parameters": parameters,
        "rows": {},
    }
    for test_set in test_sets:
        records = (dm if test_set == "test" else datamodule(data, domain, test_set)).loaded_records("test")
        start = time.perf_counter()
        test = probabilities(records)
        seconds = time.perf_counter() - start
        if test_set == "test":
            cell["texts_per_second"] = len(records) / seconds
        cell[test_set] = float((test.argmax(1) == np.array([r["label"] for r in records])).mean())
        cell["rows"][test_set] = [
            {"cell": f"student/{ROW}/{domain}", "domain": domain, "example_id": int(r["example_id"]),
             "label": int(r["label"]), "logits": [round(float(v), 5) for v in np.log(np.clip(p, 1e-12, 1))],
             "pred": int(p.argmax()), "seed": seed}
            for r, p in zip(records, test)
        ]  # fmt: skip
    return cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="a pipeline config (its domains, seeds, student data)"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: the config's")
    parser.add_argument("--domains", nargs="*", default=None, help="default: the config's")
    parser.add_argument("--backbone", default=None, help="default: the student data's backbone")
    parser.add_argument("--pca-dims", type=int, default=128, help="model2vec's PCA width (128)")
    parser.add_argument("--max-epochs", type=int, default=-1, help="-1: until model2vec's early stopping")
    parser.add_argument("--batch", type=int, default=32, help="texts per predict call (throughput)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default=None, help="default: <config name>_model2vec_peer")
    parser.add_argument(
        "--test-sets", nargs="*", default=None,
        help="evaluation sets to score besides the paper's test split (always scored; none given: only "
        "it); default: all the student data offers (Amazon: test_large)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    from metakd.pipeline import load_pipeline_config
    from metakd.stats import mean_std
    from metakd.students.distilled_embeddings import static_model
    from metakd.utils import write_json

    config = load_pipeline_config(args.config)
    data = config["student"]["data"]
    backbone = args.backbone or (data.get("init_args") or {}).get("backbone", "minilm-l6")
    seeds = args.seeds or list(config["seeds"])
    domains = args.domains or list(config["domains"])
    offered = datamodule(data, domains[0]).evaluation_sets()
    requested = offered if args.test_sets is None else args.test_sets
    unknown = [t for t in requested if t not in offered]
    if unknown:
        parser.error(f"--test-sets: {unknown} not among the student data's evaluation sets {offered}")
    clash = [t for t in requested if t in CELL_METRICS]
    if clash:  # a further set's accuracy is stored under its name, beside these metrics
        parser.error(f"--test-sets: {clash} clash with the metric names {CELL_METRICS}; rename that test set")
    test_sets = ["test", *(t for t in requested if t != "test")]
    static = static_model(backbone, args.pca_dims)
    results: dict[str, dict[str, list[float]]] = {}
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in test_sets}
    for seed in seeds:
        for domain in domains:
            cell = run_cell(static, data, domain, seed, args, test_sets)
            speed = f"{cell['train_seconds']:.0f} s, {cell['texts_per_second']:.0f} texts/s"
            scores = ", ".join(f"{t} {cell[t]:.4f}" for t in test_sets)
            print(f"seed {seed} {domain}: {scores} ({speed})", flush=True)
            for test_set, cell_rows in cell.pop("rows").items():
                rows[test_set] += cell_rows
            for key, value in cell.items():
                results.setdefault(key, {}).setdefault(domain, []).append(value)
    table = {}
    for key, by_domain in results.items():
        per_seed = [sum(by_domain[d][i] for d in domains) / len(domains) for i in range(len(seeds))]
        table[key] = {**{d: mean_std(v) for d, v in by_domain.items()}, "average": mean_std(per_seed)}
    name = args.name or f"{config['name']}_{ROW}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "name": name, "config": str(args.config), "backbone": backbone, "pca_dims": args.pca_dims,
        "seeds": seeds, "domains": domains, "main": {f"student_{ROW}": table["test"]}, "metrics": table,
        "test_sets": test_sets,
        "by_test_set": {t: {"main": {f"student_{ROW}": table[t]}} for t in test_sets},
        "predictions": {t: predictions_file(name, t) for t in test_sets},
    }  # fmt: skip
    write_json(out / f"{name}.json", report)
    for test_set, set_rows in rows.items():
        with gzip.open(out / predictions_file(name, test_set), "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in set_rows)
    for test_set in test_sets:
        average = table[test_set]["average"]
        print(
            f"model2vec peer: {test_set} accuracy {average['mean']:.4f} +- {average['std']:.4f}, "
            f"{len(seeds)} seed(s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
