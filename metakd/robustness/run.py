"""Attack a model on a config's data: the library behind ``python -m metakd robustness``
(:mod:`metakd.robustness.command`).

:func:`run_robustness` loads any model metakd trains or reads (:func:`load_model`: a Student or
MetaTeacher checkpoint, an exported student directory or an HF sequence classifier directory), the
examples of a LightningCLI config's ``data:`` section (:func:`load_datamodule`, :func:`examples`), runs
the word-substitution attack (:mod:`metakd.robustness.attack`) through a
:class:`metakd.inference.TextPredictor` and returns the report: clean accuracy, accuracy under attack,
attack success rate, the budget, the substitution source and every example's perturbation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from metakd.errors import MetakdError
from metakd.inference import TextPredictor
from metakd.robustness.attack import AttackBudget, attack_dataset
from metakd.robustness.constraints import DEFAULT_MIN_WORD_SIMILARITY, make_constraints
from metakd.robustness.synonyms import make_source


class RobustnessError(MetakdError, ValueError):
    """A model or data that the attack cannot run on."""


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
    pos_check: bool = True,
    min_word_similarity: float | None = DEFAULT_MIN_WORD_SIMILARITY,
) -> dict[str, Any]:
    """Attack ``model`` on the examples of ``config``'s data (module docstring); returns the report. A
    substitute keeps the word's part of speech (``pos_check``) and a word similarity of at least
    ``min_word_similarity`` (None: no threshold) (:mod:`metakd.robustness.constraints`)."""
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
    classify = TextPredictor(logits, tokenizer, data.max_length, batch_size, domain_id)
    substitutes = make_source(source, data.backbone, wordnet_dir, min_similarity, budget.max_candidates)
    constraints = make_constraints(data.backbone, pos_check, min_word_similarity)
    with torch.no_grad():
        report = attack_dataset(
            classify, texts, labels, substitutes, budget, pairs, max_examples, seed, constraints
        )
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
        "constraints": {"pos": pos_check, "min_word_similarity": min_word_similarity},
        "split_examples": len(texts),
        "seconds": round(time.monotonic() - start, 1),
        **report,
    }
