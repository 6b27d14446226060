"""model2vec's own classifier as a peer of the tiny students: ``python benchmarks/model2vec_peer.py
--config configs/amazon/tiny_students.yaml [--seeds 1 2 3] [--domains books dvd] [--pca-dims 128]
[--out benchmarks/results] [--name amazon_model2vec_peer] [--max-epochs N]``.

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
records (``MultiDomainDataModule.loaded_records``); a sentence pair is joined by ``" [SEP] "``.

Writes ``<out>/<name>.json`` (the pipeline's table shapes: ``main["student_model2vec_peer"][domain]``
and ``average`` with mean, std, n and values of the test accuracy; dev accuracy, training seconds,
throughput and size likewise) and ``<out>/<name>_predictions.jsonl.gz`` (the pipeline's prediction rows,
``cell: student/model2vec_peer/<domain>``, so paired intervals against any pipeline row of the same
examples can be computed). Throughput is end to end from raw text (model2vec's tokenizer included), at
``--batch`` texts per call, on the test texts; size is the float32 parameter count in MB.
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


def texts(records: list[dict[str, Any]]) -> list[str]:
    """The texts model2vec reads (a pair joined by ``" [SEP] "``)."""
    return [
        r["text"] if r.get("text_pair") is None else f"{r['text']} [SEP] {r['text_pair']}" for r in records
    ]


def datamodule(data: dict[str, Any], domain: str) -> Any:
    """The pipeline's student datamodule for ``domain``."""
    from metakd.utils import import_object

    cls = import_object(str(data["class_path"]))
    return cls(**{**(data.get("init_args") or {}), "target_domain": domain})


def run_cell(static: Any, data: dict[str, Any], domain: str, seed: int, args: argparse.Namespace) -> dict:
    """Train model2vec's classifier on one domain; its accuracies, cost and test predictions."""
    import numpy as np
    from model2vec.train import StaticModelForClassification

    dm = datamodule(data, domain)
    split = {name: dm.loaded_records(name) for name in ("train", "val", "test")}
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
    start = time.perf_counter()
    test = probabilities(split["test"])
    seconds = time.perf_counter() - start
    gold = np.array([r["label"] for r in split["test"]])
    rows = [
        {"cell": f"student/{ROW}/{domain}", "domain": domain, "example_id": int(r["example_id"]),
         "label": int(r["label"]), "logits": [round(float(v), 5) for v in np.log(np.clip(p, 1e-12, 1))],
         "pred": int(p.argmax()), "seed": seed}
        for r, p in zip(split["test"], test)
    ]  # fmt: skip
    parameters = sum(p.numel() for p in classifier.parameters())
    return {
        "test": float((test.argmax(1) == gold).mean()),
        "dev": float((dev == np.array([r["label"] for r in split["val"]])).mean()),
        "train_seconds": train_seconds,
        "texts_per_second": len(rows) / seconds,
        "size_mb": parameters * 4 / 1e6,
        "parameters": parameters,
        "rows": rows,
    }


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
    args = parser.parse_args(argv)

    from metakd.pipeline import load_pipeline_config
    from metakd.stats import mean_std
    from metakd.students.distilled_embeddings import static_model
    from metakd.utils import write_json

    config = load_pipeline_config(args.config)
    data = config["student"]["data"]
    backbone = args.backbone or (data.get("init_args") or {}).get("backbone", "minilm-l6")
    static = static_model(backbone, args.pca_dims)
    seeds = args.seeds or list(config["seeds"])
    domains = args.domains or list(config["domains"])
    results: dict[str, dict[str, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for domain in domains:
            cell = run_cell(static, data, domain, seed, args)
            speed = f"{cell['train_seconds']:.0f} s, {cell['texts_per_second']:.0f} texts/s"
            print(f"seed {seed} {domain}: test {cell['test']:.4f} ({speed})", flush=True)
            rows += cell.pop("rows")
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
    }  # fmt: skip
    write_json(out / f"{name}.json", report)
    with gzip.open(out / f"{name}_predictions.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    average = table["test"]["average"]
    print(
        f"model2vec peer: test accuracy {average['mean']:.4f} +- {average['std']:.4f}, {len(seeds)} seed(s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
