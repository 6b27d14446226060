"""``python -m metakd robustness --ckpt MODEL --config CONFIG.yaml [--domain D] [--out robustness.json]``.

Runs the word-substitution attack (:mod:`metakd.robustness.attack`) on any model metakd trains or reads:

- a Student checkpoint (``fit`` of ``metakd.Student``; any architecture, rebuilt as ``export`` does),
- a MetaTeacher checkpoint (its logits on the example's domain),
- an exported student directory (``python -m metakd export``) or an HF sequence classifier directory.

The examples come from the ``data:`` section of a LightningCLI config (e.g. a pipeline cell's
``cell.yaml``): the raw texts of ``--split`` (default test) of ``--domain`` (default: the config's
``target_domain``, else every domain), of which ``--max-examples`` are drawn with ``--seed``. The model
sees them tokenised like the data (the data's tokenizer and ``max_length``). The JSON written to
``--out`` has the clean accuracy, the accuracy under attack, the attack success rate, the budget, the
substitution source and every example's perturbation.
"""

from __future__ import annotations

import argparse
import sys

from metakd.robustness.attack import AttackBudget
from metakd.robustness.run import run_robustness
from metakd.utils import write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metakd robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="Student/MetaTeacher checkpoint, or a model directory")
    parser.add_argument("--config", required=True, help="a LightningCLI config whose data: section is used")
    parser.add_argument("--domain", help="the domain to attack (default: the config's target_domain)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--max-examples", type=int, default=100, help="examples drawn with --seed (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-fraction", type=float, default=0.2, help="share of a text's words changed")
    parser.add_argument("--max-substitutions", type=int, default=None, help="words changed at most")
    parser.add_argument("--max-candidates", type=int, default=8, help="substitutes tried per word")
    parser.add_argument("--source", default="wordnet", choices=["wordnet", "embedding"])
    parser.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    parser.add_argument("--min-similarity", type=float, default=0.5, help="embedding source: cosine needed")
    parser.add_argument("--out", help="write the report JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budget = AttackBudget(args.max_fraction, args.max_substitutions, args.max_candidates)
    report = run_robustness(
        args.ckpt,
        args.config,
        args.domain,
        args.split,
        args.max_examples or None,
        args.seed,
        budget,
        args.source,
        args.wordnet_dir,
        args.min_similarity,
    )
    if args.out:
        write_json(args.out, report)
    print(
        f"{report['domain'] or 'all'}: clean accuracy {100 * report['clean_accuracy']:.1f}%, under attack "
        f"{100 * report['accuracy_under_attack']:.1f}%, attack success rate "
        f"{100 * report['attack_success_rate']:.1f}% ({report['examples']} examples, {report['seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
