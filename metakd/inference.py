"""Raw texts -> class probabilities, the one path every text-level user takes: the word-substitution
attack (:mod:`metakd.robustness`), RoSearch's candidates and ``python -m metakd classify``.

- :class:`TextPredictor`: a tokenizer and a ``batch -> logits`` function (any student, teacher or
  runtime) -> ``(N, C)`` probabilities of texts, or of text pairs; it counts its queries and tells how
  much of a text the model sees after truncation.
- :class:`TextClassifier`: an exported student directory (``python -m metakd export``; PyTorch or ONNX
  Runtime) as a :class:`TextPredictor` with its label names: ``classifier(texts)`` ->
  ``[{"label", "probabilities": {label: p}}]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DEFAULT_MAX_LENGTH = 128

Logits = Callable[[dict[str, Tensor]], Tensor]
"""A model as the predictor sees it: a batch (``input_ids``, ``attention_mask``, ``token_type_ids``,
``domain_ids``) -> (B, C) logits."""


class ClassifyError(ValueError):
    """A model directory or input that cannot be classified."""


class TextPredictor:
    """``predict(texts, pairs) -> (N, C) probabilities`` for a model that maps token batches to logits.

    Args:
        logits: the model (:data:`Logits`).
        tokenizer: the model's tokenizer; texts are truncated to ``max_length`` tokens.
        batch_size: texts per forward pass.
        domain_id: the ``domain_ids`` of every row (a MetaTeacher reads it).
    """

    def __init__(
        self,
        logits: Logits,
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

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, Tensor]:
        """One padded batch of ``texts`` (and ``pairs``)."""
        encoded = self.tokenizer(
            list(texts),
            None if pairs is None else list(pairs),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "token_type_ids": encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"])),
            "domain_ids": torch.full((len(texts),), self.domain_id, dtype=torch.long),
        }

    @torch.no_grad()
    def logits_of(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Tensor]:
        """The model's logits, one tensor per batch of ``batch_size`` texts."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            pair = None if pairs is None else pairs[start : start + self.batch_size]
            out.append(self.logits(self.encode(chunk, pair)))
        return out

    @torch.no_grad()
    def __call__(self, texts: list[str], pairs: list[str] | None = None) -> Tensor:
        out = [torch.softmax(chunk.float(), dim=-1) for chunk in self.logits_of(texts, pairs)]
        self.queries += len(texts)
        return torch.cat(out)


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
        self.predictor = TextPredictor(self._model_logits, self.tokenizer, max_length, batch_size)

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

    def _model_logits(self, batch: dict[str, Tensor]) -> Tensor:
        from metakd.export import ONNX_INPUTS
        from metakd.students.base import logits_only

        if self.session is not None:
            feeds = {k: batch[k].numpy() for k in ONNX_INPUTS if k in self.onnx_inputs}
            return torch.from_numpy(self.session.run(["logits"], feeds)[0])
        with torch.inference_mode():
            wrapper = logits_only(self.model)
            return wrapper(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def logits(self, texts: Sequence[str]) -> Tensor:
        """(N, C) logits of ``texts``."""
        chunks = self.predictor.logits_of(list(texts))
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


__all__ = ["ClassifyError", "DEFAULT_MAX_LENGTH", "TextClassifier", "TextPredictor"]
