"""Speed benchmark: ``python benchmarks/speed.py [--quick] [--tiny] [--out benchmarks/results]``.

Writes ``speed.json`` and ``speed.md``:

- size and CPU inference throughput (examples/s, batch 32, seq 128 by default) of the teacher, the
  student, and the student exported to ONNX (fp32) and dynamically quantised int8 ONNX
  (``metakd.export.export_onnx`` + onnxruntime's ``quantize_dynamic``, as ``metakd export --int8``);
  accuracy retained (Meta-KD student vs meta-teacher) when ``<out>/amazon.json`` exists;
- training cost ratios, measured side by side (interleaved repetitions, medians of per-step times):
  a Lightning ``Student`` step vs a bare PyTorch loop doing the same forward/backward/step (framework
  overhead); a meta-weighted teacher step (``weighting: meta``) vs a plain one (``weighting: none``), for
  each way of computing the meta weights of :data:`META_OPTIONS`, with the correlation of their weights
  with the exact ones on the same batches; an epoch with cached teacher outputs vs an uncached one
  (vanilla KD student, ``cache_teacher_outputs``).

``--tiny`` uses tiny random BERTs and a synthetic corpus (seconds; what the tests run); the default
uses MiniLM-L6 (teacher) and its 2-layer subset (student) on Amazon reviews.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_TEACHER = {
    "vocab_size": 30522,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 160,
}
TINY_STUDENT = {**TINY_TEACHER, "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}

META_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "meta_weighting": ({"meta_engine": "higher"}, "look-ahead by double backward (higher), all parameters"),
    "meta_weighting_jvp": ({"meta_engine": "jvp"}, "closed form (jvp), all parameters"),
    "meta_weighting_jvp_last1": (
        {"meta_engine": "jvp", "meta_params": "last_k", "meta_last_k": 1},
        "closed form (jvp), heads + last encoder layer",
    ),
    "meta_weighting_jvp_head": (
        {"meta_engine": "jvp", "meta_params": "head"},
        "closed form (jvp), heads only",
    ),
}
"""The MetaTeacher meta-step options the benchmark times against a plain step; the first is the exact
reference the others' weights are compared with."""


# ------------------------------------------------------------------------------------------- setup


def make_datamodule(args: argparse.Namespace, workdir: Path, **kwargs: Any) -> Any:
    if args.tiny:
        from datamodules import JsonlDataModule

        corpus = workdir / "corpus.jsonl"
        if not corpus.exists():
            words = {"pos": "good great fine nice", "neg": "bad awful poor boring"}
            rows = []
            for domain in ("books", "dvd", "music"):
                for i in range(64):
                    label = "pos" if i % 2 else "neg"
                    text = f"the {domain} is " + " ".join(words[label].split()[(i + k) % 4] for k in range(6))
                    rows.append(json.dumps({"text": text, "label": label, "domain": domain}))
            corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
        options = {
            "train_file": str(corpus),
            "max_length": 32,
            "batch_size": 8,
            "cache_dir": str(workdir / "cache"),
        }
        return JsonlDataModule(**{**options, **kwargs})
    from datamodules import AmazonReviewsDataModule

    options = {"max_length": args.train_seq, "batch_size": 16}
    return AmazonReviewsDataModule(**{**options, **kwargs})


def data_args(dm: Any) -> dict[str, Any]:
    """The model init args the CLI links from a datamodule (labels, domains)."""
    from metakd.cli import DATA_TO_MODEL_LINKS

    return {target: getattr(dm, source) for source, target in DATA_TO_MODEL_LINKS.items()}


def make_teacher(args: argparse.Namespace, dm: Any, **kwargs: Any) -> Any:
    from metakd.teacher import MetaTeacher

    options: dict[str, Any] = {"backbone": "minilm-l6", **data_args(dm), "transferability_cache": True}
    if args.tiny:
        options.update(encoder_config=TINY_TEACHER, transferability_cache=False)
    return MetaTeacher(**{**options, **kwargs})


def make_student(args: argparse.Namespace, dm: Any, **kwargs: Any) -> Any:
    from metakd.student import Student

    options: dict[str, Any] = {
        **data_args(dm),
        "tokenizer_name": "minilm-l6",
        "student_backbone": "minilm-l6",
        "distillation": "none",
    }
    if args.tiny:
        options["student_config"] = TINY_STUDENT
    else:
        options["student_layers"] = [0, 5]
    options.update(kwargs)
    return Student(**options)


def trainer(max_steps: int = -1, max_epochs: int = 1, callbacks: list | None = None, **kwargs: Any) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks or [],
        **kwargs,
    )


class StepTimer:
    """A Lightning callback recording step-to-step wall times (as a bare loop measures them) and epochs."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_end(self, *a: Any) -> None:
                # end to end: data loading, forward, backward, optimiser step and Lightning's hooks
                now = time.perf_counter()
                if timer._last is not None:
                    timer.steps.append(now - timer._last)
                timer._last = now

            def on_train_epoch_start(self, *a: Any) -> None:
                timer._epoch = time.perf_counter()
                timer._last = None

            def on_train_epoch_end(self, *a: Any) -> None:
                timer.epochs.append(time.perf_counter() - timer._epoch)

        self.callback = _Callback()
        self.steps: list[float] = []
        self.epochs: list[float] = []
        self._epoch = 0.0
        self._last: float | None = None


# ---------------------------------------------------------------------------------------- inference


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_size_mb(module: torch.nn.Module, path: Path) -> float:
    torch.save(module.state_dict(), path)
    return path.stat().st_size / 2**20


def throughput(fn: Any, batch_size: int, reps: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_batch_s": median, "examples_per_s": batch_size / median, "reps": reps}


def inference_benchmark(args: argparse.Namespace, workdir: Path, dm: Any) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from metakd.export import export_onnx

    teacher = make_teacher(args, dm).eval()
    student = make_student(args, dm).eval()
    model = student.model.eval()
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 29000, (args.batch, args.seq), generator=g),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "token_type_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
    }
    domain_ids = torch.zeros(args.batch, dtype=torch.long)
    onnx_path, int8_path = workdir / "student.onnx", workdir / "student.int8.onnx"
    export_onnx(model, batch, onnx_path)
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (("student_onnx", onnx_path), ("student_onnx_int8", int8_path))
    }
    feeds = {k: v.numpy() for k, v in batch.items()}

    def run_teacher() -> None:
        with torch.inference_mode():
            teacher(**batch, domain_ids=domain_ids)

    def run_student() -> None:
        with torch.inference_mode():
            model(**batch)

    results: dict[str, Any] = {
        "teacher": {
            "params": param_count(teacher),
            "size_mb": state_size_mb(teacher, workdir / "t.pt"),
            **throughput(run_teacher, args.batch, args.reps),
        },
        "student": {
            "params": param_count(model),
            "size_mb": state_size_mb(model, workdir / "s.pt"),
            **throughput(run_student, args.batch, args.reps),
        },
    }
    for name, session in sessions.items():
        path = onnx_path if name == "student_onnx" else int8_path
        results[name] = {
            "params": param_count(model),
            "size_mb": path.stat().st_size / 2**20,
            **throughput(lambda s=session: s.run(["logits"], feeds), args.batch, args.reps),
        }
    base = results["teacher"]["examples_per_s"]
    for entry in results.values():
        entry["speedup_vs_teacher"] = entry["examples_per_s"] / base
        entry["size_vs_teacher"] = entry["size_mb"] / results["teacher"]["size_mb"]
    return results


# ----------------------------------------------------------------------------------------- training


def lightning_steps(module: Any, dm: Any, steps: int) -> list[float]:
    timer = StepTimer()
    trainer(max_steps=steps, max_epochs=-1, callbacks=[timer.callback]).fit(module, datamodule=dm)
    return timer.steps  # step-to-step intervals: the first step (one-off costs) is not among them


def bare_loop_steps(module: Any, dm: Any, steps: int) -> list[float]:
    """The Student's model trained by hand: same data, forward, CE loss, backward, AdamW step."""
    import torch.nn.functional as F

    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    times: list[float] = []
    iterator = iter(dm.train_dataloader())
    start = time.perf_counter()
    for _ in range(steps):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(dm.train_dataloader())
            batch = next(iterator)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).logits
        loss = F.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times[1:]


def ratio_entry(name_a: str, a: list[float], name_b: str, b: list[float], what: str) -> dict[str, Any]:
    median_a, median_b = statistics.median(a), statistics.median(b)
    return {
        "what": what,
        "ratio": median_a / median_b,
        name_a: {"median_s": median_a, "n": len(a)},
        name_b: {"median_s": median_b, "n": len(b)},
    }


def training_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import pytorch_lightning as pl

    results: dict[str, Any] = {}
    dm = make_datamodule(args, workdir)
    dm.setup("fit")

    # 1. framework overhead: Lightning Student (distillation none) vs a bare loop, interleaved.
    lightning, bare = [], []
    for rep in range(args.train_reps):
        pl.seed_everything(rep, verbose=False)
        lightning += lightning_steps(make_student(args, dm), dm, args.steps + 1)
        pl.seed_everything(rep, verbose=False)
        bare += bare_loop_steps(make_student(args, dm), dm, args.steps + 1)
    results["framework_overhead"] = ratio_entry(
        "lightning_step",
        lightning,
        "bare_pytorch_step",
        bare,
        "Student training step (no KD) vs a bare PyTorch loop",
    )

    # 2. meta-weighted teacher steps (each option) vs a plain one (domain loss off, same data), interleaved.
    plain: list[float] = []
    meta: dict[str, list[float]] = {name: [] for name in META_OPTIONS}
    for rep in range(args.train_reps):
        pl.seed_everything(rep, verbose=False)
        plain += lightning_steps(
            make_teacher(args, dm, weighting="none", domain_loss="none"), dm, args.steps + 1
        )
        for name, (options, _) in META_OPTIONS.items():
            pl.seed_everything(rep, verbose=False)
            meta[name] += lightning_steps(
                make_teacher(args, dm, weighting="meta", domain_loss="none", **options), dm, args.steps + 1
            )
    for name, (_, what) in META_OPTIONS.items():
        results[name] = ratio_entry(
            "meta_step",
            meta[name],
            "plain_step",
            plain,
            f"teacher step with meta weights ({what}) vs weighting none",
        )

    # 3. an epoch with cached teacher outputs vs an uncached epoch (vanilla KD student on one domain).
    teacher_path = workdir / "teacher.ckpt"
    teacher_trainer = trainer(max_steps=1)
    teacher_trainer.fit(make_teacher(args, dm, weighting="none", domain_loss="none"), datamodule=dm)
    teacher_trainer.save_checkpoint(teacher_path)
    domain = dm.domain_names[0]
    target = make_datamodule(args, workdir, target_domain=domain)
    cached, uncached = [], []
    for rep in range(args.train_reps):
        for mode, sink in (("logits", cached), ("none", uncached)):
            pl.seed_everything(rep, verbose=False)
            student = make_student(
                args,
                target,
                distillation="vanilla",
                teacher_ckpt=str(teacher_path),
                target_domain=domain,
                cache_teacher_outputs=mode,
                cache_dir=str(workdir / f"cache_{mode}_{rep}"),
            )
            timer = StepTimer()
            trainer(max_epochs=2, callbacks=[timer.callback], limit_train_batches=args.epoch_batches).fit(
                student, datamodule=target
            )
            sink.append(timer.epochs[1])  # epoch 2: served from the cache (logits) or recomputed (none)
    results["teacher_cache"] = ratio_entry(
        "cached_epoch",
        cached,
        "uncached_epoch",
        uncached,
        "vanilla-KD epoch with cached teacher logits vs uncached",
    )
    return results


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def meta_weight_agreement(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Meta weights of each :data:`META_OPTIONS` entry vs the exact ones (the first), on the same pairs of
    (training batch, held-out batch) and domain-corruption targets, dropout off (deterministic weights):
    Pearson r of the raw meta-gradients g and of the normalised weights w. ``dropout_noise``: the exact
    weights with dropout on, two draws against each other (how much a training step's weights vary
    anyway)."""
    from metakd.losses import domain_corruption_targets

    dm = make_datamodule(args, workdir)
    dm.setup("fit")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = make_teacher(args, dm, weighting="meta")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == 2 * args.agreement_pairs:
            break
    pairs = [
        (train, heldout, domain_corruption_targets(train["domain_ids"], generator=generator))
        for train, heldout in zip(batches[::2], batches[1::2])
    ]
    (reference_name, (reference_options, _)), *_ = META_OPTIONS.items()

    def weights(options: dict[str, Any], train_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        teacher.network.train(train_mode)
        overrides = {
            "engine": options.get("meta_engine"),
            "meta_params": options.get("meta_params", "all"),
            "meta_last_k": options.get("meta_last_k", 1),
        }
        results = [
            teacher.meta_weights(train, heldout, targets, **overrides) for train, heldout, targets in pairs
        ]
        return torch.cat([r.gradients for r in results]), torch.cat([r.weights for r in results])

    exact_g, exact_w = weights(reference_options)
    report: dict[str, Any] = {
        "pairs": len(pairs),
        "batch_size": len(pairs[0][0]["labels"]),
        "domains": len(dm.domain_names),
    }
    for name, (options, what) in META_OPTIONS.items():
        g, w = (exact_g, exact_w) if name == reference_name else weights(options)
        report[name] = {"what": what, "pearson_g": pearson(g, exact_g), "pearson_w": pearson(w, exact_w)}
    torch.manual_seed(1)
    first_g, first_w = weights(reference_options, train_mode=True)
    second_g, second_w = weights(reference_options, train_mode=True)
    report["dropout_noise"] = {
        "what": "exact weights, dropout on: two draws",
        "pearson_g": pearson(first_g, second_g),
        "pearson_w": pearson(first_w, second_w),
    }
    return report


# ------------------------------------------------------------------------------------------ report


def accuracy_retained(out: Path) -> dict[str, Any] | None:
    path = out / "amazon.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    try:
        student = summary["main"]["student_meta"]["average"]["mean"]
        teacher = summary["main"]["teacher_meta"]["average"]["mean"]
    except KeyError:
        return None
    if student is None or not teacher:
        return None
    return {
        "source": str(path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path),
        "student_meta_kd": student,
        "meta_teacher": teacher,
        "retained": student / teacher,
    }


def render(report: dict[str, Any]) -> str:
    setup = report["setup"]
    lines = [
        f"# Speed benchmark ({'tiny models' if setup['tiny'] else 'MiniLM-L6 teacher, 2-layer student'})",
        "",
        f"CPU inference, batch {setup['batch']}, seq {setup['seq']}, {setup['threads']} threads; medians of "
        f"{setup['reps']} batches. Training ratios: {setup['train_reps']} interleaved repetitions of "
        f"{setup['steps']} steps (seq {setup['train_seq']}).",
        "",
        "| model | params | size (MB) | ex/s | speed-up vs teacher | size vs teacher |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report["inference"].items():
        lines.append(
            f"| {name} | {entry['params'] / 1e6:.2f}M | {entry['size_mb']:.1f} | "
            f"{entry['examples_per_s']:.1f} | "
            f"{entry['speedup_vs_teacher']:.2f}x | {entry['size_vs_teacher']:.2f} |"
        )
    if report.get("accuracy_retained"):
        acc = report["accuracy_retained"]
        lines += [
            "",
            f"Accuracy retained: Meta-KD student {100 * acc['student_meta_kd']:.1f}% vs meta-teacher "
            f"{100 * acc['meta_teacher']:.1f}% = {100 * acc['retained']:.1f}% (from `{acc['source']}`).",
        ]
    lines += ["", "| training cost | ratio | medians |", "| --- | ---: | --- |"]
    for entry in report["training"].values():
        medians = ", ".join(
            f"{k} {v['median_s'] * 1000:.1f} ms" for k, v in entry.items() if isinstance(v, dict)
        )
        lines.append(f"| {entry['what']} | {entry['ratio']:.2f}x | {medians} |")
    agreement = report.get("meta_agreement")
    if agreement:
        lines += [
            "",
            f"Meta weights vs the exact ones (`{next(iter(META_OPTIONS))}`) on the same {agreement['pairs']} "
            f"pairs of training and held-out batches of {agreement['batch_size']} ({agreement['domains']} "
            "domains, `other_domains`, domain-corruption loss), dropout off; Pearson r of the meta-gradients "
            "g and of the weights w:",
            "",
            "| meta weights | step ratio | r (g) | r (w) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, entry in agreement.items():
            if isinstance(entry, dict):
                ratio = report["training"].get(name, {}).get("ratio")
                lines.append(
                    f"| {entry['what']} | {'—' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{entry['pearson_g']:.4f} | {entry['pearson_w']:.4f} |"
                )
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models + a synthetic corpus")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--train-seq", type=int, default=64, help="max_length of the training measurements")
    args = parser.parse_args(argv)
    args.reps = 3 if args.quick else 10
    args.train_reps = 2 if args.quick else 3
    args.steps = 3 if args.quick else 8
    args.epoch_batches = 3 if args.quick else 8
    args.agreement_pairs = 2 if args.quick else 6
    if args.tiny:
        args.train_seq = 32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from metakd.pipeline import package_versions, write_json

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        inference_dm = make_datamodule(args, workdir)
        start = time.perf_counter()
        report: dict[str, Any] = {
            "setup": {
                "tiny": args.tiny,
                "quick": args.quick,
                "batch": args.batch,
                "seq": args.seq,
                "train_seq": args.train_seq,
                "reps": args.reps,
                "train_reps": args.train_reps,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
            },
            "inference": inference_benchmark(args, workdir, inference_dm),
        }
        print(json.dumps(report["inference"], indent=1), flush=True)
        report["training"] = training_benchmark(args, workdir)
        report["meta_agreement"] = meta_weight_agreement(args, workdir)
        report["accuracy_retained"] = accuracy_retained(out)
        report["versions"] = package_versions()
        report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "speed.json", report)
    (out / "speed.md").write_text(render(report), encoding="utf-8")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
