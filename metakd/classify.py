"""``python -m metakd classify --model DIR [TEXT ...] [--file FILE] [--onnx]``: class probabilities of raw
texts from an exported student directory (``python -m metakd export``), without the training code's
datamodule.

The directory is a metakd directory (``metakd_student.json`` + ``model.safetensors`` + tokenizer: the
BiLSTM, TextCNN and pQRNN students) or a plain HuggingFace one (the BERT student); ``--onnx`` runs its
``model.onnx`` (``--int8``: ``model.int8.onnx``) with ONNX Runtime instead of PyTorch. One JSON line per
text: ``{"text", "label", "probabilities": {label: p}}``.

From Python (the library class lives in :mod:`metakd.inference`)::

    from metakd.inference import TextClassifier
    classifier = TextClassifier("books-student")
    classifier(["A wonderful book.", "It broke after two days."])  # [{"label": ..., "probabilities": ...}]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metakd.inference import DEFAULT_MAX_LENGTH, ClassifyError, TextClassifier


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
