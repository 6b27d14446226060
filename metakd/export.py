"""``python -m metakd export --ckpt PATH --out DIR [--onnx] [--int8]``: a trained Student as an
inference directory (and optionally ONNX / dynamically quantised int8 ONNX).

The export goes through the student's architecture (``StudentModel.save_exported``): the BERT student
writes a plain HuggingFace model directory (its ``*ForSequenceClassification`` weights, a config with
``id2label`` / ``label2id`` from the data's label names), which loads with
``transformers.pipeline("text-classification", model=DIR)``; another architecture writes
``metakd_student.json`` and ``model.safetensors`` (``metakd.students.load_exported(DIR)`` loads it).
The tokenizer the student was trained with is saved beside either. Checkpoints written before the
method registry (format 1: an HF config only) export as before.

Checks: the re-loaded directory reproduces the checkpoint's logits on a probe batch (max abs diff
<= 1e-5); the ONNX model reproduces them within ``--atol`` (1e-4; an error otherwise); the int8
model's agreement (argmax agreement, max abs diff) is reported without a tolerance. The report gives the size
in MB of every weights file (``size_mb``). ``model.onnx``
traces the architecture's forward (for an early-exit student: every layer); an architecture may add
its own ONNX files beside it (``StudentModel.export_onnx_extras``, e.g. one graph per exit point),
which it checks itself; they are listed in ``export_report.json`` (``onnx_extras``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metakd.errors import MetakdError

log = logging.getLogger(__name__)

PROBE_TEXTS = [
    "A wonderful book: I could not put it down.",
    "The blender broke after two days and support never answered.",
    "ok",
    "Great picture quality, terrible sound, and the remote feels cheap but works well enough for now.",
]
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OPSET = 17


class ExportError(MetakdError, RuntimeError):
    """An export that cannot be done or does not reproduce the student."""


@dataclass
class ExportReport:
    """What an export wrote and how closely each format reproduces the student's logits."""

    out_dir: str
    hf_max_abs_diff: float
    onnx_path: str | None = None
    onnx_max_abs_diff: float | None = None
    int8_path: str | None = None
    int8_max_abs_diff: float | None = None
    int8_argmax_agreement: float | None = None
    onnx_extras: dict[str, Any] | None = None
    size_mb: dict[str, float] | None = None


def read_student_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Student checkpoint (tensors and plain data only), with clear errors."""
    from metakd.student import CHECKPOINT_KEY

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExportError(f"cannot read the checkpoint {str(path)!r} ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ExportError(
            f"{str(path)!r} is not a metakd Student checkpoint (no {CHECKPOINT_KEY!r} entry); "
            "export works on checkpoints written while fitting a metakd.Student"
        )
    return checkpoint


def build_student(checkpoint: dict[str, Any]) -> Any:
    """The checkpoint's trained student architecture (a ``StudentModel``) in eval mode."""
    from metakd.student import CHECKPOINT_KEY
    from metakd.students import HFStudent, rebuild_student

    meta = checkpoint[CHECKPOINT_KEY]
    if "student" in meta:
        model = rebuild_student(meta["student"])
    else:  # format 1 (before the registry): an HF config
        model = HFStudent.from_hf_config(meta["hf_config"], list(meta["label_names"]))
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    result = model.load_state_dict(state, strict=False)
    # Non-persistent buffers (e.g. position_ids) may be absent; real weights may not.
    missing = [k for k in result.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or result.unexpected_keys:
        raise ExportError(
            f"the checkpoint's student weights do not fit its architecture: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model.eval()


def build_hf_model(checkpoint: dict[str, Any]) -> nn.Module:
    """The checkpoint's BERT student as a ``*ForSequenceClassification`` model in eval mode."""
    model = build_student(checkpoint)
    if not hasattr(model, "hf_model"):
        raise ExportError(f"the checkpoint's student is a {type(model).__name__}, not a HuggingFace model")
    return model.hf_model.eval()


def _probe_batch(tokenizer: Any, texts: list[str] = PROBE_TEXTS, max_length: int = 64) -> dict[str, Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if "token_type_ids" not in encoded:
        encoded["token_type_ids"] = torch.zeros_like(encoded["input_ids"])
    return {k: encoded[k] for k in ONNX_INPUTS}


def _logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Logits of a StudentModel or an HF model on a probe batch."""
    from metakd.students.base import logits_only

    with torch.no_grad():
        return logits_only(model)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def _onnx_logits(path: Path, batch: dict[str, Tensor]) -> Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v.numpy() for k, v in batch.items() if k in wanted}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


def export_onnx(model: nn.Module, batch: dict[str, Tensor], path: Path, opset: int = ONNX_OPSET) -> None:
    """``torch.onnx.export`` (TorchScript exporter) of ``(input_ids, attention_mask, token_type_ids) ->
    logits`` with dynamic batch and sequence axes; ``model`` is a StudentModel or an HF model."""
    from metakd.students.base import StudentModel, logits_only

    traced = model.for_export() if isinstance(model, StudentModel) else model
    wrapper = logits_only(traced).eval()
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    dynamic_axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            tuple(batch[k] for k in ONNX_INPUTS),
            str(path),
            dynamo=False,
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
        )
    model.eval()  # the exporter restores the wrapper's mode recursively


def export_student(
    ckpt: str | Path,
    out: str | Path,
    onnx: bool = False,
    int8: bool = False,
    atol: float = 1e-4,
    tokenizer_name: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write the student of ``ckpt`` to ``out`` (HF directory [+ model.onnx [+ model.int8.onnx]]).

    Everything is written and checked in a staging folder beside ``out`` first and moved into place
    only when every check passed: a failed export leaves an existing ``out`` as it was. A non-empty
    ``out`` is replaced only with ``overwrite``.
    """
    import shutil
    import tempfile

    final = Path(out)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and not overwrite:
        raise ExportError(
            f"{final} exists and is not empty; pass --overwrite to replace it (nothing was written)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        report = _write_export(ckpt, staging, onnx, int8, atol, tokenizer_name)
        (staging / "export_report.json").write_text(
            json.dumps(_relocated(report, staging, final).__dict__, indent=2), encoding="utf-8"
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    staging.rename(final)
    return _relocated(report, staging, final)


def _relative_paths(value: Any, root: Path) -> Any:
    """``value`` with every path under ``root`` written relative to it (the staging folder is renamed)."""
    if isinstance(value, dict):
        return {key: _relative_paths(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_paths(item, root) for item in value]
    if isinstance(value, Path):
        return str(value.relative_to(root)) if value.is_relative_to(root) else str(value)
    return value


def _relocated(report: ExportReport, staging: Path, final: Path) -> ExportReport:
    """The report with its paths under ``final`` instead of the staging folder."""
    fields = dict(report.__dict__)
    for key in ("out_dir", "onnx_path", "int8_path"):
        if fields[key] is not None:
            fields[key] = str(final / Path(fields[key]).relative_to(staging))
    return ExportReport(**fields)


def _write_export(
    ckpt: str | Path,
    out: Path,
    onnx: bool,
    int8: bool,
    atol: float,
    tokenizer_name: str | None,
) -> ExportReport:
    from metakd.backbones import load_tokenizer
    from metakd.student import CHECKPOINT_KEY
    from metakd.students import load_exported

    if int8 and not onnx:
        raise ExportError("--int8 quantises the ONNX model: add --onnx")
    checkpoint = read_student_checkpoint(ckpt)
    model = build_student(checkpoint)
    meta = checkpoint[CHECKPOINT_KEY]
    tokenizer = load_tokenizer(tokenizer_name or meta["tokenizer_name"])
    model.save_exported(out, list(meta["label_names"]))
    tokenizer.save_pretrained(out)

    batch = _probe_batch(tokenizer)
    reference = _logits(model, batch)
    reloaded, _, _ = load_exported(out)
    hf_diff = float((_logits(reloaded, batch) - reference).abs().max())
    if hf_diff > 1e-5:
        raise ExportError(
            f"the exported model in {out} differs from the checkpoint: max |diff| {hf_diff:.3g}"
        )
    report = ExportReport(out_dir=str(out), hf_max_abs_diff=hf_diff)

    if onnx:
        onnx_path = out / "model.onnx"
        export_onnx(model, batch, onnx_path)
        # Probe another shape too, so a shape baked in by tracing would show.
        probes = [batch, _probe_batch(tokenizer, PROBE_TEXTS[:2], max_length=8)]
        diff = 0.0
        for probe in probes:
            expected = _logits(model, probe)
            diff = max(diff, float((_onnx_logits(onnx_path, probe) - expected).abs().max()))
        if diff > atol:
            raise ExportError(f"ONNX logits differ from PyTorch by {diff:.3g} > atol {atol:g} ({onnx_path})")
        report.onnx_path, report.onnx_max_abs_diff = str(onnx_path), diff
        # An architecture's own ONNX files (e.g. one graph per exit point), written and checked by it.
        extras = model.export_onnx_extras(out, batch, ONNX_OPSET, atol)
        report.onnx_extras = _relative_paths(extras, out) or None
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = out / "model.int8.onnx"
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
            quantized = _onnx_logits(int8_path, batch)
            report.int8_path = str(int8_path)
            report.int8_max_abs_diff = float((quantized - reference).abs().max())
            report.int8_argmax_agreement = float(
                (quantized.argmax(-1) == reference.argmax(-1)).float().mean()
            )
    report.size_mb = file_sizes_mb(out)
    return report


def file_sizes_mb(directory: Path) -> dict[str, float]:
    """The size in MB (10^6 bytes) of each weights file of an export (``*.safetensors``, ``*.onnx``)."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".onnx"))
    return {p.name: round(p.stat().st_size / 1e6, 4) for p in files}


def main(argv: list[str] | None = None) -> int:
    """``python -m metakd export ...``; returns the process exit status (0). Bad input raises
    :class:`ExportError`, which ``python -m metakd`` prints as ``error: ...`` (exit status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m metakd export",
        description="Write a trained metakd Student as a HuggingFace model directory (optionally ONNX, int8)",
    )
    parser.add_argument("--ckpt", required=True, help="Student checkpoint (.ckpt) written by `fit`")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--onnx", action="store_true", help="also write model.onnx and check it with ONNX Runtime"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx (dynamic quantisation)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="ONNX vs PyTorch logits tolerance (1e-4)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer to save (default: the student's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # an ExportError propagates: the error boundary of `python -m metakd` prints it (exit status 2)
    report = export_student(
        args.ckpt, args.out, args.onnx, args.int8, args.atol, args.tokenizer, overwrite=args.overwrite
    )
    print(f"exported to {report.out_dir} (re-load max |diff| {report.hf_max_abs_diff:.2e})")
    sizes = ", ".join(f"{name} {size:.3f} MB" for name, size in (report.size_mb or {}).items())
    print(f"size: {sizes}")
    if report.onnx_path:
        print(f"ONNX: {report.onnx_path}, max |diff| vs PyTorch {report.onnx_max_abs_diff:.2e}")
    if report.int8_path:
        print(
            f"int8: {report.int8_path}, max |diff| {report.int8_max_abs_diff:.3g}, "
            f"argmax agreement {report.int8_argmax_agreement:.3f} on {len(PROBE_TEXTS)} probe texts"
        )
    return 0
