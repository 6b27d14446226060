"""``python -m metakd classify --model DIR [TEXT ...] [--file FILE] [--onnx]``: class probabilities of raw
texts from an exported student directory (``python -m metakd export``), without the training code's
datamodule.

The directory is a metakd directory (``metakd_student.json`` + ``model.safetensors`` + tokenizer: the
BiLSTM, TextCNN and pQRNN students) or a plain HuggingFace one (the BERT student); ``--onnx`` runs its
``model.onnx`` (``--int8``: ``model.int8.onnx``) with ONNX Runtime instead of PyTorch. One JSON line per
text: ``{"text", "label", "probabilities": {label: p}}``.

From Python::

    from metakd.classify import TextClassifier
    classifier = TextClassifier("books-student")
    classifier(["A wonderful book.", "It broke after two days."])  # [{"label": ..., "probabilities": ...}]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_MAX_LENGTH = 128


class ClassifyError(ValueError):
    """A model directory or input that cannot be classified."""


class TextClassifier:
    """Raw texts -> labels and probabilities with an exported student (PyTorch or ONNX Runtime).

    Args:
        directory: an exported student directory.
        runtime: ``torch``, ``onnx`` (``model.onnx``) or ``int8`` (``model.int8.onnx``).
        max_length: texts are truncated to this many tokens (the students were trained on 64-128).
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        directory: str | Path,
        runtime: str = "torch",
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 32,
    ) -> None:
        from metakd.students.base import EXPORT_FILE

        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ClassifyError(f"--model {str(self.directory)!r} is not a directory")
        if not (self.directory / EXPORT_FILE).is_file() and not (self.directory / "config.json").is_file():
            raise ClassifyError(
                f"--model {str(self.directory)!r} is not an exported student: it has neither {EXPORT_FILE} "
                "(metakd directory) nor config.json (HuggingFace directory); write one with "
                "`python -m metakd export --ckpt <student.ckpt> --out DIR`"
            )
        if runtime not in ("torch", "onnx", "int8"):
            raise ClassifyError(f"runtime must be torch, onnx or int8, got {runtime!r}")
        if max_length < 2 or batch_size < 1:
            raise ClassifyError(
                f"max_length must be >= 2 and batch_size >= 1, got {max_length}, {batch_size}"
            )
        self.runtime, self.max_length, self.batch_size = runtime, max_length, batch_size
        self._load()

    def _load(self) -> None:
        from metakd.students import load_exported

        self.model, self.tokenizer, self.label_names = load_exported(self.directory)
        self.session = None
        if self.runtime != "torch":
            name = "model.onnx" if self.runtime == "onnx" else "model.int8.onnx"
            path = self.directory / name
            if not path.is_file():
                flag = "--onnx" if self.runtime == "onnx" else "--onnx --int8"
                raise ClassifyError(
                    f"{path} does not exist; export with `python -m metakd export ... {flag}`"
                )
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.onnx_inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, C) logits of ``texts``."""
        from metakd.export import ONNX_INPUTS
        from metakd.students.base import logits_only

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            if "token_type_ids" not in batch:
                batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
            if self.session is not None:
                feeds = {k: batch[k].numpy() for k in ONNX_INPUTS if k in self.onnx_inputs}
                chunks.append(torch.from_numpy(self.session.run(["logits"], feeds)[0]))
                continue
            with torch.inference_mode():
                wrapper = logits_only(self.model)
                chunks.append(wrapper(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        return torch.cat(chunks) if chunks else torch.zeros(0, len(self.label_names))

    def __call__(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """``[{"label", "probabilities": {label: p}}]`` per text."""
        if isinstance(texts, str):
            texts = [texts]
        probabilities = torch.softmax(self.logits(texts).float(), dim=-1)
        results = []
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {"label": self.label_names[best], "probabilities": dict(zip(self.label_names, row))}
            )
        return results


def read_texts(texts: list[str], file: str | None) -> list[str]:
    """The command's texts: the arguments, then the lines of ``file`` (``-``: standard input)."""
    texts = list(texts)
    if file is not None:
        if file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(file)
            if not path.is_file():
                raise ClassifyError(f"--file {file!r} does not exist")
            lines = path.read_text(encoding="utf-8").splitlines()
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise ClassifyError("no text to classify: give texts as arguments or --file FILE (one text a line)")
    return texts


def main(argv: list[str] | None = None) -> int:
    """``python -m metakd classify ...``; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m metakd classify",
        description="Classify raw texts with an exported metakd student (one JSON line per text)",
    )
    parser.add_argument("--model", required=True, help="exported student directory (`metakd export --out`)")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--file", default=None, help="a file with one text per line ('-': standard input)")
    parser.add_argument("--onnx", action="store_true", help="run model.onnx with ONNX Runtime")
    parser.add_argument("--int8", action="store_true", help="run model.int8.onnx with ONNX Runtime")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text (128)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    runtime = "int8" if args.int8 else "onnx" if args.onnx else "torch"
    try:
        texts = read_texts(args.texts, args.file)
        classifier = TextClassifier(args.model, runtime, args.max_length, args.batch_size)
        results = classifier(texts)
    except ClassifyError as err:
        print(f"classify failed: {err}", file=sys.stderr)
        return 2
    for text, result in zip(texts, results):
        print(json.dumps({"text": text, **result}, ensure_ascii=False))
    return 0
