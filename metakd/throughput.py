"""Throughput of trained models, side by side: any teacher or student checkpoint as ``batch -> logits``, a
batch of real test texts tokenised to a fixed length, and examples per second as the median of interleaved
repetitions (the models take turns, so a slower moment of the machine hits them all alike).

Used by the pipeline's showcase (:mod:`metakd.pipeline.showcase`) and ``benchmarks/students.py``; the speed
benchmark ``benchmarks/speed.py`` times freshly built networks on every runtime instead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Model = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def load_model(ckpt: str | Path, data: Any) -> tuple[Model, int]:
    """``(batch -> logits, parameters)`` of a Student or MetaTeacher checkpoint, in eval mode; ``data``
    (a datamodule) gives the label and domain names a teacher is checked against."""
    from metakd.export import build_student, read_student_checkpoint
    from metakd.student import CHECKPOINT_KEY
    from metakd.students.base import logits_only

    header = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    if CHECKPOINT_KEY in header:
        model = build_student(read_student_checkpoint(ckpt)).eval()
        wrapped = logits_only(model).eval()
        size = sum(p.numel() for p in model.parameters())
        return (lambda b: wrapped(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))), size
    from metakd.teachers import FrozenTeacher, TeacherRequest

    teacher = FrozenTeacher(str(ckpt), data.label_names, data.domain_names, None)
    size = sum(p.numel() for p in teacher.module.parameters())
    return (lambda b: teacher.forward(b, TeacherRequest()).logits), size


def probe_batch(data: Any, domain: str, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """``batch`` test texts of ``domain`` (the datamodule's test split, repeated if it is shorter),
    tokenised to exactly ``seq`` tokens: every model reads the same inputs of the same length."""
    records = [r for r in data.raw_splits()["test"] if r["domain"] == domain]
    if not records:
        raise ValueError(f"no test example of domain {domain!r} to time the models on")
    records = (records * (batch // len(records) + 1))[:batch]
    pairs = [r["text_pair"] for r in records] if records[0].get("text_pair") is not None else None
    encoded = dict(
        data.tokenizer(
            [r["text"] for r in records],
            pairs,
            truncation=True,
            max_length=seq,
            padding="max_length",
            return_tensors="pt",
        )
    )
    encoded.setdefault("token_type_ids", torch.zeros_like(encoded["input_ids"]))
    encoded["domain_ids"] = torch.full((len(records),), data.domain_names.index(domain), dtype=torch.long)
    return encoded


def examples_per_second(
    models: dict[str, Model], batches: dict[str, dict[str, torch.Tensor]], repeats: int
) -> dict[str, float]:
    """Examples per second of each model on its batch: one warm-up call each, then ``repeats`` rounds in
    which every model runs once (interleaved); the median time per round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for name, model in models.items():
            model(batches[name])
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(batches[name])
                times[name].append(time.perf_counter() - start)
    return {
        name: batches[name]["input_ids"].shape[0] / statistics.median(values)
        for name, values in times.items()
    }
