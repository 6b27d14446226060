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
substitution source, the constraints and every example's perturbation. A substitute keeps the word's
part of speech (``--pos-check off`` to drop it) and a word-vector similarity of at least
``--min-word-similarity`` (``none`` to drop it); ``--max-fraction`` and ``--max-substitutions`` cap the
changed words.
"""

from __future__ import annotations

import argparse
import sys

from metakd.robustness.attack import AttackBudget
from metakd.robustness.constraints import DEFAULT_MIN_WORD_SIMILARITY
from metakd.robustness.run import run_robustness
from metakd.utils import write_json


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def _threshold(value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


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
    parser.add_argument(
        "--pos-check", type=_on_off, default=True, help="a substitute keeps the word's part of speech (on)"
    )
    parser.add_argument(
        "--min-word-similarity",
        type=_threshold,
        default=DEFAULT_MIN_WORD_SIMILARITY,
        help=f"word-vector cosine a substitute needs ({DEFAULT_MIN_WORD_SIMILARITY}; 'none': no threshold)",
    )
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
        pos_check=args.pos_check,
        min_word_similarity=args.min_word_similarity,
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
