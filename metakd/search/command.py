"""``python -m metakd search --config configs/amazon/search/adabert.yaml [--search.steps 100 ...]``.

Searches a student for one target domain (:func:`metakd.search.run.run_search`: AdaBERT's search,
RoSearch's evolutionary search, or AdaBERT's then RoSearch's) and writes ``<out>/architecture.json``
(the architecture, human readable, with its cost) and ``<out>/search.json`` (settings, the final
operation probabilities per edge, the loss and entropy history, RoSearch's candidates). The config
(jsonargparse, so every key is also a command-line option)::

    teacher_ckpt: runs/.../teacher/mixed/checkpoints/best.ckpt   # what the search distils from
    data: {class_path: datamodules.AmazonReviewsDataModule, init_args: {target_domain: books, ...}}
    search: {max_cells: 4, steps: 400, beta: 0.1, ...}             # SearchSettings
    rosearch: {enabled: false, population: 10, generations: 5, ...}  # RoSearchSettings
    out: runs/search/books
    seed: 42

Retrain the derived student with KD through the ordinary Student, e.g.
``python -m metakd fit --config configs/amazon/adabert_student.yaml
--model.init_args.student_model.init_args.architecture <out>/architecture.json``.
"""

from __future__ import annotations

import sys
from typing import Any


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser
    from pytorch_lightning import LightningDataModule

    from metakd.search.adabert import SearchSettings
    from metakd.search.rosearch import RoSearchSettings

    parser = ArgumentParser(prog="python -m metakd search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a search config (YAML)")
    parser.add_argument(
        "--teacher_ckpt", type=str, required=True, help="MetaTeacher checkpoint or HF classifier"
    )
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_class_arguments(SearchSettings, "search")
    parser.add_class_arguments(RoSearchSettings, "rosearch")
    parser.add_argument("--out", type=str, required=True, help="folder for architecture.json and search.json")
    parser.add_argument("--seed", type=int, default=42)
    return parser


def main(argv: list[str] | None = None) -> int:
    from metakd.interrupt import Interrupted
    from metakd.search.derive import describe
    from metakd.search.run import run_search

    parser = build_parser()
    config = parser.parse_args(argv)
    objects = parser.instantiate_classes(config)
    try:
        architecture = run_search(
            objects.search,
            objects.data,
            config.teacher_ckpt,
            config.out,
            config.seed,
            rosearch=objects.rosearch,
        )
    except Interrupted as stop:  # (SIGINT/SIGTERM: metakd.interrupt)
        stop.detail = "the search stopped; it keeps no checkpoint"
        stop.resume = "run the same command again (it starts over)"
        raise
    print(f"{objects.data.target_domain}: {describe(architecture)}")
    print(
        f"parameters {architecture['cost']['parameters']:,}, "
        f"FLOPs/token {architecture['cost']['flops_per_token']:,}; "
        f"wrote {config.out}/architecture.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
