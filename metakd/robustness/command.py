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
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metakd.errors import MetakdError
from metakd.robustness.attack import AttackBudget, attack_dataset
from metakd.utils import write_json


class RobustnessError(MetakdError, ValueError):
    """A model or data that the attack cannot run on."""


class TextClassifier:
    """``predict(texts, pairs) -> probabilities`` for a model that maps token batches to logits."""

    def __init__(
        self,
        logits: Any,
        tokenizer: Any,
        max_length: int,
        batch_size: int = 64,
        domain_id: int = 0,
    ) -> None:
        self.logits, self.tokenizer, self.max_length = logits, tokenizer, max_length
        self.batch_size, self.domain_id = batch_size, domain_id
        self.queries = 0

    def visible_chars(self, text: str, pair: str | None = None) -> int:
        """Characters of the attacked text (``pair`` if given, else ``text``) left after truncation to
        ``max_length`` tokens (the whole text for a tokenizer without offsets)."""
        target = text if pair is None else pair
        if not getattr(self.tokenizer, "is_fast", False):
            return len(target)
        encoded = self.tokenizer(
            text, pair, truncation=True, max_length=self.max_length, return_offsets_mapping=True
        )
        segment = 0 if pair is None else 1
        ends = [
            end for (_, end), seq in zip(encoded["offset_mapping"], encoded.sequence_ids()) if seq == segment
        ]
        return max(ends, default=0)

    @torch.no_grad()
    def __call__(self, texts: list[str], pairs: list[str] | None = None) -> Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            pair = None if pairs is None else pairs[start : start + self.batch_size]
            encoded = self.tokenizer(
                chunk, pair, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            batch = {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "token_type_ids": encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"])),
                "domain_ids": torch.full((len(chunk),), self.domain_id, dtype=torch.long),
            }
            out.append(torch.softmax(self.logits(batch).float(), dim=-1))
        self.queries += len(texts)
        return torch.cat(out)


def load_model(source: str, data: Any) -> tuple[Any, Any, list[str]]:
    """``(batch -> logits, tokenizer, label names)`` of a Student/MetaTeacher checkpoint or a model
    directory; ``data`` is the datamodule (its labels, domains and tokenizer)."""
    from metakd.backbones import load_tokenizer
    from metakd.students.base import EXPORT_FILE, load_exported, logits_only

    path = Path(source)
    if path.is_dir() and (path / EXPORT_FILE).is_file():
        model, tokenizer, labels = load_exported(path)
        wrapped = logits_only(model).eval()
        return lambda b: wrapped(b["input_ids"], b["attention_mask"], b["token_type_ids"]), tokenizer, labels
    if path.is_file():
        from metakd.student import CHECKPOINT_KEY

        header = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(header, dict) and CHECKPOINT_KEY in header:
            from metakd.export import build_student, read_student_checkpoint

            checkpoint = read_student_checkpoint(path)
            meta = checkpoint[CHECKPOINT_KEY]
            wrapped = logits_only(build_student(checkpoint)).eval()
            tokenizer = load_tokenizer(meta.get("tokenizer_name") or data.backbone)
            return (
                lambda b: wrapped(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                tokenizer,
                list(meta["label_names"]),
            )
    # a MetaTeacher checkpoint or an HF classifier: FrozenTeacher loads, checks labels and maps domains
    from metakd.teachers import FrozenTeacher, TeacherRequest

    teacher = FrozenTeacher(source, data.label_names, data.domain_names, None)
    teacher.check_tokenizer(data.backbone)
    tokenizer = load_tokenizer(teacher.tokenizer_name or data.backbone)
    return lambda b: teacher.forward(b, TeacherRequest()).logits, tokenizer, list(data.label_names)


def load_datamodule(config_path: str, domain: str | None) -> Any:
    """The datamodule of a LightningCLI config's ``data:`` section (class_path + init_args)."""
    import yaml

    from metakd.utils import import_object

    try:
        config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RobustnessError(f"cannot read --config {config_path}: {err}") from err
    section = config.get("data") if isinstance(config, dict) else None
    if not isinstance(section, dict) or "class_path" not in section:
        raise RobustnessError(
            f"{config_path}: needs a `data:` section with class_path (a LightningCLI config)"
        )
    init_args = dict(section.get("init_args") or {})
    if domain is not None:
        init_args["target_domain"] = domain
    return import_object(section["class_path"])(**init_args)


def examples(data: Any, split: str) -> tuple[list[str], list[str] | None, list[int], list[str]]:
    """``(texts, pairs or None, labels, domains)`` of a split, restricted to the target domain if any."""
    records = data.raw_splits()[split]
    if data.target_domain is not None:
        records = [r for r in records if r["domain"] == data.target_domain]
    if not records:
        raise RobustnessError(f"the {split} split has no example of domain {data.target_domain!r}")
    pairs = [r["text_pair"] for r in records] if records[0].get("text_pair") is not None else None
    return [r["text"] for r in records], pairs, [r["label"] for r in records], [r["domain"] for r in records]


def make_source(name: str, backbone: str, wordnet_dir: str, min_similarity: float, top_k: int) -> Any:
    """The substitution source ``wordnet`` or ``embedding`` (:mod:`metakd.robustness.synonyms`)."""
    from metakd.robustness.synonyms import EmbeddingNeighbours, WordNetError, WordNetSynonyms

    if name == "wordnet":
        return WordNetSynonyms(wordnet_dir)
    try:
        antonyms = WordNetSynonyms(wordnet_dir)
    except WordNetError:
        antonyms = None
    return EmbeddingNeighbours.from_backbone(
        backbone, min_similarity=min_similarity, top_k=top_k, antonyms=antonyms
    )


def run_robustness(
    model: str,
    config: str,
    domain: str | None = None,
    split: str = "test",
    max_examples: int | None = 100,
    seed: int = 0,
    budget: AttackBudget | None = None,
    source: str = "wordnet",
    wordnet_dir: str = "/usr/share/wordnet",
    min_similarity: float = 0.5,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Attack ``model`` on the examples of ``config``'s data (module docstring); returns the report."""
    budget = budget or AttackBudget()
    start = time.monotonic()
    data = load_datamodule(config, domain)
    texts, pairs, labels, domains = examples(data, split)
    logits, tokenizer, label_names = load_model(model, data)
    if list(label_names) != list(data.label_names):
        raise RobustnessError(
            f"{model} predicts the labels {label_names}, the data of {config} has {data.label_names}"
        )
    domain_id = data.domain_names.index(data.target_domain) if data.target_domain else 0
    if data.target_domain is None and len(set(domains)) > 1:
        raise RobustnessError("pass --domain: the attack runs on one domain at a time (teachers: per domain)")
    classify = TextClassifier(logits, tokenizer, data.max_length, batch_size, domain_id)
    substitutes = make_source(source, data.backbone, wordnet_dir, min_similarity, budget.max_candidates)
    with torch.no_grad():
        report = attack_dataset(classify, texts, labels, substitutes, budget, pairs, max_examples, seed)
    return {
        "model": str(model),
        "config": str(config),
        "domain": data.target_domain,
        "split": split,
        "seed": seed,
        "budget": {
            "max_fraction": budget.max_fraction,
            "max_substitutions": budget.max_substitutions,
            "max_candidates": budget.max_candidates,
        },
        "source": {"name": substitutes.name, "wordnet_dir": wordnet_dir, "min_similarity": min_similarity},
        "split_examples": len(texts),
        "seconds": round(time.monotonic() - start, 1),
        **report,
    }


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
