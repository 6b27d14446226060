"""FastBERT's student (Liu et al., ACL 2020, arXiv 2004.02178): a BERT backbone with a classifier
*branch* after every layer, and adaptive inference that lets each sample exit at the first branch that
is sure enough.

- Branches: after each layer m < L, FastBERT's student classifier: ``tanh(W0 h)`` to width 128, a
  2-head self-attention read at [CLS], ``tanh(W1 .)``, ``W2`` to the classes (the authors' code,
  ``BertMiniClassifier``). After the last layer sits BERT's own head (pooler + linear), the *final*
  classifier, so the model without its branches is a plain ``BertForSequenceClassification`` (the
  paper's final classifier is a mini-classifier too; ours is HF's so that the export serves
  ``transformers.pipeline`` at full depth).
- ``exit_logits``: the branches' logits, then the final classifier's (L entries).
- Uncertainty: the normalised entropy ``u = sum_c p_c log p_c / log(1/C)`` in [0, 1]. A sample exits at
  the first branch with ``u < speed``; ``speed = 0`` runs every layer, ``speed = 1`` exits everything at
  the first branch (every u <= 1).
- Inference is batched: the samples that exit leave the batch, the others go on through the next layer
  (and padding columns no remaining sample uses are dropped). :meth:`EarlyExitStudent.early_exit`
  returns the logits and the layer each sample exited at; :meth:`predict_logits` (what the Student's
  validation and test use) is its logits at ``speed``. The forward (training, ``model.onnx``) runs
  every layer.

Export (``python -m metakd export``): ``model.safetensors`` + ``config.json`` are a plain HF
``BertForSequenceClassification`` (``transformers.pipeline`` gives full-depth predictions),
``exits.safetensors`` holds the branches and ``metakd_student.json`` lets
``metakd.students.load_exported`` rebuild the early-exit model. With ``--onnx``: ``model.onnx`` (every
layer) and, since one ONNX graph cannot drop samples from a batch between layers, one graph per exit
point, ``exits/segment_<m>.onnx`` (layer m and its branch: ``hidden_{m-1} -> hidden_m, logits_m``; the
first takes the token ids), chained by :class:`OnnxEarlyExit`, which applies the same rule with ONNX
Runtime.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.backbones import DEFAULT_BACKBONE
from metakd.errors import StudentConfigError
from metakd.students.base import EXPORT_FILE, STUDENTS, StudentOutput
from metakd.students.hf import HFStudent, bert_attention_mask, bert_embed, run_bert_layer

EXITS_FILE = "exits.safetensors"
SEGMENTS_DIR = "exits"


def normalized_entropy(logits: Tensor) -> Tensor:
    """FastBERT's uncertainty of each row of ``logits`` (B, C): ``sum_c p_c log p_c / log(1/C)``, in [0, 1]
    (0: one-hot, 1: uniform)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * log_p).sum(dim=-1) / math.log(1.0 / logits.shape[-1])


def exits_now(logits: Tensor, speed: float) -> Tensor:
    """Which rows exit at this branch: normalised entropy below ``speed`` (every row when speed is 1)."""
    if speed >= 1.0:
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    return normalized_entropy(logits) < speed


def check_speed(speed: Any, key: str = "model.student_model.init_args.speed") -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.0 <= float(speed) <= 1.0:
        raise StudentConfigError(
            f"{key} must be a number in [0, 1] (the normalised-entropy threshold of early exit: 0 runs "
            f"every layer, 1 exits at the first branch), got {speed!r}"
        )
    return float(speed)


class BranchClassifier(nn.Module):
    """FastBERT's student classifier on one layer's token states: ``tanh(W0 h)`` (width ``width``),
    ``heads``-head self-attention read at [CLS], ``tanh(W1 .)``, then ``W2`` to the classes."""

    def __init__(
        self, hidden_size: int, num_labels: int, width: int = 128, heads: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        if width % heads:
            raise StudentConfigError(f"branch width {width} is not a multiple of its {heads} attention heads")
        self.heads = heads
        self.reduce = nn.Linear(hidden_size, width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.attention_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        x = torch.tanh(self.reduce(hidden))  # (B, T, w)
        batch, length, width = x.shape
        head = width // self.heads
        query = self.query(x[:, :1]).view(batch, 1, self.heads, head).transpose(1, 2)  # only [CLS] is read
        key = self.key(x).view(batch, length, self.heads, head).transpose(1, 2)
        value = self.value(x).view(batch, length, self.heads, head).transpose(1, 2)
        scores = query @ key.transpose(-1, -2) / math.sqrt(head)  # (B, heads, 1, T)
        padding = (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * torch.finfo(scores.dtype).min
        probabilities = self.dropout(torch.softmax(scores + padding, dim=-1))
        cls = (probabilities @ value).transpose(1, 2).reshape(batch, width)
        return self.classifier(torch.tanh(self.dense(self.attention_out(cls))))


@dataclass
class EarlyExitOutput:
    """Adaptive inference: ``logits`` (B, C) of the branch each sample exited at, ``exit_layers`` (B,)."""

    logits: Tensor
    exit_layers: Tensor


@STUDENTS.register("early_exit")
class EarlyExitStudent(HFStudent):
    """A BERT student (``backbone`` cut to ``layers``, or a fresh ``config``, as the ``hf`` student) with
    FastBERT's branches after every layer and early exit at ``speed`` (see the module docstring).

    Args:
        speed: the normalised-entropy threshold in [0, 1] of :meth:`predict_logits`.
        branch_width, branch_heads: the branch classifiers' width and attention heads (128, 2).
    """

    provides = frozenset({"exit_logits"})

    def __init__(
        self,
        num_labels: int,
        label_names: list[str],
        tokenizer_name: str,
        backbone: str = DEFAULT_BACKBONE,
        layers: list[int] | int | None = None,
        config: dict[str, Any] | None = None,
        speed: float = 0.0,
        branch_width: int = 128,
        branch_heads: int = 2,
    ) -> None:
        self_speed = check_speed(speed)
        super().__init__(num_labels, label_names, tokenizer_name, backbone, layers, config)
        self._add_branches(branch_width, branch_heads)
        self.speed = self_speed
        self.last_exit_layers: Tensor | None = None

    def _add_branches(self, width: int, heads: int) -> None:
        config = self.config
        if config.num_hidden_layers < 2:
            raise StudentConfigError(
                "an early-exit student needs at least 2 layers (a branch after every layer but the last); "
                f"got {config.num_hidden_layers}"
            )
        self.branches = nn.ModuleList(
            BranchClassifier(config.hidden_size, config.num_labels, width, heads, config.hidden_dropout_prob)
            for _ in range(config.num_hidden_layers - 1)
        )

    def parts(self) -> dict[str, list[nn.Module]]:
        """``backbone`` (embeddings, layers, pooler), ``classifier`` (the final one), ``branches``."""
        return {"backbone": [self.bert], "classifier": [self.classifier], "branches": [self.branches]}

    # ------------------------------------------------------------------ running
    def _final(self, hidden: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.bert.pooler(hidden)))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        """Every layer: the final classifier's logits, and with ``exit_logits`` every branch's."""
        want_exits = "exit_logits" in need
        hidden, mask = bert_embed(self.bert, input_ids, attention_mask, token_type_ids)
        branch_logits = []
        for index, layer in enumerate(self.bert.encoder.layer):
            hidden = run_bert_layer(layer, hidden, mask)
            if want_exits and index < len(self.branches):
                branch_logits.append(self.branches[index](hidden, attention_mask))
        logits = self._final(hidden)
        return StudentOutput(logits=logits, exit_logits=(*branch_logits, logits) if want_exits else None)

    def early_exit(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        speed: float | None = None,
    ) -> EarlyExitOutput:
        """Batched adaptive inference: after layer m < L the samples whose branch has normalised entropy
        below ``speed`` (default ``self.speed``) take its logits and leave the batch."""
        speed = self.speed if speed is None else check_speed(speed, "speed")
        n_layers = len(self.bert.encoder.layer)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        exit_layers = torch.full_like(rows, n_layers)
        out: Tensor | None = None
        hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = attention_mask
        for index, layer in enumerate(self.bert.encoder.layer):
            hidden = run_bert_layer(layer, hidden, bert_attention_mask(self.bert, hidden, mask))
            last = index == n_layers - 1
            logits = self._final(hidden) if last else self.branches[index](hidden, mask)
            if out is None:
                out = logits.new_zeros(input_ids.shape[0], logits.shape[-1])
            leaving = torch.ones_like(rows, dtype=torch.bool) if last else exits_now(logits, speed)
            out[rows[leaving]] = logits[leaving]
            exit_layers[rows[leaving]] = index + 1
            staying = ~leaving
            if not bool(staying.any()):
                break
            rows, hidden, mask = rows[staying], hidden[staying], mask[staying]
            used = int(mask.sum(dim=0).nonzero().max()) + 1  # columns after it are padding for every row left
            hidden, mask = hidden[:, :used], mask[:, :used]
        return EarlyExitOutput(out, exit_layers)

    def predict_logits(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Early exit at ``self.speed`` (every layer at speed 0); the exit layers stay in
        ``last_exit_layers``."""
        if self.speed == 0.0:
            self.last_exit_layers = torch.full((input_ids.shape[0],), len(self.bert.encoder.layer))
            return self(input_ids, attention_mask, token_type_ids).logits
        result = self.early_exit(input_ids, attention_mask, token_type_ids)
        self.last_exit_layers = result.exit_layers
        return result.logits

    # ------------------------------------------------------------------ checkpoint and export
    @classmethod
    def rebuild(cls, payload: dict[str, Any]) -> EarlyExitStudent:
        init_args = dict(payload["init_args"])
        model = cls.from_hf_config(payload["hf_config"])
        model._add_branches(init_args.get("branch_width", 128), init_args.get("branch_heads", 2))
        model.speed = check_speed(init_args.get("speed", 0.0))
        model.last_exit_layers = None
        model.init_args = init_args
        return model.eval()

    def save_exported(self, out_dir: Path, label_names: list[str]) -> None:
        """A plain HF directory (backbone + final classifier) plus ``exits.safetensors`` (branches) and
        ``metakd_student.json`` (rebuilds the early-exit model)."""
        from safetensors.torch import save_file

        super().save_exported(out_dir, label_names)
        branches = {
            f"branches.{k}": v.detach().cpu().contiguous() for k, v in self.branches.state_dict().items()
        }
        save_file(branches, str(out_dir / EXITS_FILE))
        meta = {
            "format": 1,
            **self.payload(),
            "label_names": list(label_names),
            "weights_files": ["model.safetensors", EXITS_FILE],
        }
        (out_dir / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def export_onnx_extras(
        self, out_dir: Path, probe: dict[str, Tensor], opset: int, atol: float
    ) -> dict[str, Any]:
        """One ONNX graph per exit point (``exits/segment_<m>.onnx``), checked against :meth:`early_exit`
        through :class:`OnnxEarlyExit` at speeds 0, ``self.speed`` and 1 on the probe batch."""
        from metakd.export import ExportError

        directory = out_dir / SEGMENTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        with torch.no_grad():
            hidden = None
            for index in range(len(self.bert.encoder.layer)):
                segment = _Segment(self, index).eval()
                if index == 0:
                    inputs = (probe["input_ids"], probe["attention_mask"], probe["token_type_ids"])
                    names = ["input_ids", "attention_mask", "token_type_ids"]
                else:
                    inputs, names = (hidden, probe["attention_mask"]), ["hidden", "attention_mask"]
                path = directory / f"segment_{index + 1}.onnx"
                axes = {name: {0: "batch", 1: "sequence"} for name in (*names, "hidden_out")}
                axes["logits"] = {0: "batch"}
                torch.onnx.export(
                    segment,
                    inputs,
                    str(path),
                    dynamo=False,
                    input_names=names,
                    output_names=["hidden_out", "logits"],
                    dynamic_axes=axes,
                    opset_version=opset,
                )
                hidden = segment(*inputs)[0]
                paths.append(path)
        self.eval()
        runner = OnnxEarlyExit(out_dir)
        worst = 0.0
        speeds = sorted({0.0, self.speed, 1.0})
        for speed in speeds:
            with torch.no_grad():
                expected = self.early_exit(
                    probe["input_ids"], probe["attention_mask"], probe["token_type_ids"], speed
                )
            logits, exit_layers = runner(
                probe["input_ids"].numpy(),
                probe["attention_mask"].numpy(),
                probe["token_type_ids"].numpy(),
                speed,
            )
            if not torch.equal(torch.from_numpy(exit_layers), expected.exit_layers):
                raise ExportError(
                    f"the ONNX exit graphs exit at layers {exit_layers.tolist()} where PyTorch exits at "
                    f"{expected.exit_layers.tolist()} (speed {speed})"
                )
            worst = max(worst, float((torch.from_numpy(logits) - expected.logits).abs().max()))
        if worst > atol:
            raise ExportError(
                f"the ONNX exit graphs' logits differ from PyTorch's by {worst:.3g} > atol {atol:g}"
            )
        return {"exit_segments": paths, "speeds_checked": speeds, "exit_max_abs_diff": worst}


class _Segment(nn.Module):
    """Layer ``index`` of an early-exit student and the classifier after it, as one ONNX graph."""

    def __init__(self, model: EarlyExitStudent, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, hidden_or_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None):
        model = self.model
        hidden = hidden_or_ids
        if self.index == 0:
            hidden = model.bert.embeddings(input_ids=hidden_or_ids, token_type_ids=token_type_ids)
        layer = model.bert.encoder.layer[self.index]
        hidden = run_bert_layer(layer, hidden, bert_attention_mask(model.bert, hidden, attention_mask))
        if self.index == len(model.branches):
            return hidden, model._final(hidden)
        return hidden, model.branches[self.index](hidden, attention_mask)


class OnnxEarlyExit:
    """FastBERT's adaptive inference with ONNX Runtime on an exported directory's ``exits/`` graphs:
    ``runner(input_ids, attention_mask, token_type_ids, speed) -> (logits, exit_layers)`` (numpy), the
    same rule as :meth:`EarlyExitStudent.early_exit`."""

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        paths = sorted(
            Path(directory, SEGMENTS_DIR).glob("segment_*.onnx"), key=lambda p: int(p.stem.split("_")[1])
        )
        if not paths:
            raise FileNotFoundError(
                f"{Path(directory, SEGMENTS_DIR)} has no segment_<m>.onnx graphs: export the early-exit "
                "student with `python -m metakd export --onnx`"
            )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.sessions = [
            ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths
        ]

    def __call__(
        self, input_ids: Any, attention_mask: Any, token_type_ids: Any, speed: float
    ) -> tuple[Any, Any]:
        import numpy as np

        speed = check_speed(speed, "speed")
        n_layers = len(self.sessions)
        rows = np.arange(input_ids.shape[0])
        exit_layers = np.full(input_ids.shape[0], n_layers, dtype=np.int64)
        out = None
        mask = attention_mask
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type_ids}
        for index, session in enumerate(self.sessions):
            hidden, logits = session.run(["hidden_out", "logits"], feeds)
            if out is None:
                out = np.zeros((input_ids.shape[0], logits.shape[-1]), dtype=logits.dtype)
            if index == n_layers - 1:
                leaving = np.ones(len(rows), dtype=bool)
            else:
                leaving = exits_now(torch.from_numpy(logits), speed).numpy()
            out[rows[leaving]] = logits[leaving]
            exit_layers[rows[leaving]] = index + 1
            staying = ~leaving
            if not staying.any():
                break
            rows, hidden, mask = rows[staying], hidden[staying], mask[staying]
            used = int(np.nonzero(mask.sum(axis=0))[0].max()) + 1
            hidden, mask = hidden[:, :used], mask[:, :used]
            feeds = {"hidden": hidden, "attention_mask": mask}
        return out, exit_layers
