"""Speed benchmark: ``python benchmarks/speed.py [--quick] [--tiny] [--no-training] [--out DIR]``.

Writes ``speed.json``, ``speed.md`` and ``speed_pareto.png``:

- inference: the teachers' network (MiniLM-L6 classifier) and every student of :data:`STUDENTS`, each on
  every runtime (PyTorch fp32, ONNX Runtime fp32, ONNX Runtime dynamic int8: ``metakd.export.export_onnx``
  + ``quantize_dynamic``, as ``metakd export --int8``), in the same interleaved rounds: throughput at batch
  32 and batch 1 (seq 128), p50 / p90 latency at batch 1, parameters, file size, and every ratio against
  the teacher on the same runtime and batch;
- accuracy retained (student row / teacher row, average test accuracy) from the pipeline results named
  in each student's entry, and the accuracy / speed Pareto plot;
- training cost ratios, measured side by side (interleaved repetitions, medians of per-step times):
  a Lightning ``Student`` step vs a bare PyTorch loop doing the same forward/backward/step (framework
  overhead); a meta-weighted teacher step (``weighting: meta``) vs a plain one (``weighting: none``), for
  each way of computing the meta weights of :data:`META_OPTIONS`, with the correlation of their weights
  with the exact ones on the same batches; an epoch with cached teacher outputs vs an uncached one
  (vanilla KD student, ``cache_teacher_outputs``).

Adding a student to the benchmark is one :class:`ModelSpec` entry in :data:`STUDENTS` (name, words, the
``metakd.Student`` arguments that build it, and its accuracy row). ``--tiny`` uses tiny random models and
a synthetic corpus (seconds; what the tests run); the default uses MiniLM-L6 and Amazon reviews.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------ the models


@dataclass(frozen=True)
class ModelSpec:
    """A model of the inference table: its name and words, the ``metakd.Student`` arguments that build it
    (``student``; ``tiny`` for ``--tiny``) and where its accuracy comes from (``accuracy``: a pipeline
    results file under ``--out``, the student row of its main table, and the teacher: a row of the same
    table, or a JSON file under ``--out`` with the teacher's ``average`` test accuracy; an optional fourth
    element names the test set, whose table ``by_test_set[<test set>]["main"]`` is read instead)."""

    name: str
    label: str
    student: dict[str, Any]
    tiny: dict[str, Any]
    accuracy: tuple[str, str, str] | tuple[str, str, str, str] | None = None
    slots: int = 1
    """Input ids per token position: a pQRNN on the ``pqrnn-features`` featurizer reads 8 per word, so
    its inputs have ``seq`` words of 8 ids (the featurizer's own hashing is not timed, as no model's
    tokenizer is)."""


TINY_EMBEDDINGS = {"embedding_init": "random", "embedding_dim": 16}
TEACHER = ModelSpec(
    "teacher",
    "MiniLM-L6 classifier (the teachers' network: 6 layers, hidden 384)",
    {"student_layers": None},
    {"student_config": TINY_TEACHER},
)
TINY_TEACHER_RESULTS = "amazon_tiny_teacher.json"
"""Test accuracy of the fixed teacher of configs/amazon/tiny_students.yaml (not a pipeline cell)."""
STUDENTS: list[ModelSpec] = [
    # Adding a student to the benchmark is one entry here.
    ModelSpec(
        "minilm_2l",
        "MiniLM-L6 layers 0 and 5 (BERT student)",
        {"student_layers": [0, 5]},
        {"student_config": TINY_STUDENT},
        ("amazon.json", "student_meta@A", "teacher_meta", "test_large"),  # the 3-seed benchmark
    ),
    ModelSpec(
        "bilstm",
        "BiLSTM: 1 layer x 150 per direction, final states, MiniLM embeddings (384)",
        {"student_model": {"class_path": "bilstm"}},
        {"student_model": {"class_path": "bilstm", "init_args": {**TINY_EMBEDDINGS, "hidden_size": 8}}},
        ("amazon_tiny_transfer.json", "student_bilstm_mse_unlabeled", "teacher_meta", "test_large"),
    ),
    ModelSpec(
        "textcnn",
        "TextCNN: widths 3/4/5 x 128 filters, MiniLM embeddings (384)",
        {"student_model": {"class_path": "textcnn"}},
        {"student_model": {"class_path": "textcnn", "init_args": {**TINY_EMBEDDINGS, "filters": 8}}},
        ("amazon_tiny.json", "student_textcnn_tang", TINY_TEACHER_RESULTS),
    ),
    ModelSpec(
        "textcnn_pc128",
        "TextCNN: widths 3/4/5 x 100 filters, 128 principal components of MiniLM's embeddings",
        {"student_model": {"class_path": "textcnn", "init_args": {"embedding_dim": 128, "filters": 100}}},
        {"student_model": {"class_path": "textcnn", "init_args": {**TINY_EMBEDDINGS, "filters": 4}}},
        ("amazon_tiny_slice.json", "student_textcnn_pc128_mse_unlabeled", "teacher_meta", "test_large"),
    ),
    ModelSpec(
        "pqrnn",
        "pQRNN: ternary projection 128, bottleneck 128, 2 BiQRNN layers x 96 per direction",
        {"student_model": {"class_path": "pqrnn"}},
        {"student_model": {"class_path": "pqrnn", "init_args": {"projection_size": 16, "hidden_size": 8}}},
        ("amazon_tiny.json", "student_pqrnn_tang", TINY_TEACHER_RESULTS),
    ),
    ModelSpec(
        "textcnn_m2v128",
        "TextCNN: widths 3/4/5 x 100 filters, model2vec embeddings distilled from MiniLM (PCA 128)",
        {
            "student_model": {
                "class_path": "textcnn",
                "init_args": {"embedding_init": "model2vec", "embedding_dim": 128, "filters": 100},
            }
        },
        {"student_model": {"class_path": "textcnn", "init_args": {**TINY_EMBEDDINGS, "filters": 4}}},
        ("amazon_tiny_slice.json", "student_textcnn_m2v128_metakd_mse", "teacher_meta", "test_large"),
    ),
    ModelSpec(
        "pqrnn_features",
        "pQRNN as published: word + character-trigram hashes (8 ids a word), projection 128, "
        "bottleneck 128, 2 BiQRNN layers x 96, quantisation-aware",
        {"tokenizer_name": "pqrnn-features", "student_model": {"class_path": "pqrnn"}},
        {
            "tokenizer_name": "pqrnn-features",
            "student_model": {"class_path": "pqrnn", "init_args": {"projection_size": 16, "hidden_size": 8}},
        },
        ("amazon_tiny_transfer.json", "student_pqrnn_mse_tang", "teacher_meta", "test_large"),
        slots=8,
    ),
    ModelSpec(
        "bag_m2v",
        "Static bag (model2vec's classifier shape): mean of 384-d model2vec embeddings, L2 norm, MLP 512 "
        "(accuracy: its 256-token row)",
        # random weights of the same shapes as the model2vec table (speed does not depend on them)
        {
            "student_model": {
                "class_path": "static_bag",
                "init_args": {"embedding_init": "random", "embedding_dim": 384},
            }
        },
        {"student_model": {"class_path": "static_bag", "init_args": {**TINY_EMBEDDINGS, "hidden_dim": 8}}},
        ("amazon_tiny_bag.json", "student_bag_m2v_long_metakd_mse_transfer", "teacher_meta", "test_large"),
    ),
]
RUNTIMES = ("pytorch", "onnx", "onnx_int8")
"""PyTorch fp32 (eager, inference mode), ONNX Runtime fp32, ONNX Runtime with dynamic int8 quantisation."""


def build_model(args: argparse.Namespace, dm: Any, spec: ModelSpec) -> torch.nn.Module:
    """The architecture of ``spec`` (untrained weights: speed does not depend on them), in eval mode."""
    architecture = {"student_layers": None, "student_config": None}
    architecture.update(spec.tiny if args.tiny else spec.student)
    return make_student(args, dm, **architecture).model.eval()


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def runners(args: argparse.Namespace, workdir: Path, dm: Any, specs: list[ModelSpec]) -> dict[str, Any]:
    """Per model: params, and per runtime a callable ``(batch) -> logits`` and its file size."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from safetensors.torch import save_file

    from metakd.export import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    built: dict[str, Any] = {}
    for spec in specs:
        model = build_model(args, dm, spec)
        weights = workdir / f"{spec.name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        onnx_path, int8_path = workdir / f"{spec.name}.onnx", workdir / f"{spec.name}.int8.onnx"
        export_onnx(model, make_inputs(2, 16 * spec.slots, seed=1), onnx_path)
        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
        sessions = {
            runtime: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for runtime, path in (("onnx", onnx_path), ("onnx_int8", int8_path))
        }
        runtimes: dict[str, Any] = {"pytorch": (torch_runner(model), file_size_mb(weights))}
        for runtime, path in (("onnx", onnx_path), ("onnx_int8", int8_path)):
            runtimes[runtime] = (onnx_runner(sessions[runtime]), file_size_mb(path))
        built[spec.name] = {"label": spec.label, "params": param_count(model), "runtimes": runtimes,
                            "slots": spec.slots}  # fmt: skip
    return built


def torch_runner(model: torch.nn.Module) -> Any:
    def run(inputs: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]).logits

    return run


def onnx_runner(session: Any) -> Any:
    names = [i.name for i in session.get_inputs()]  # the exporter drops the inputs a model ignores

    def run(inputs: dict[str, Any]) -> Any:
        return session.run(["logits"], {name: inputs["numpy"][name] for name in names})[0]

    return run


def make_inputs(batch: int, seq: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    inputs: dict[str, Any] = {
        "input_ids": torch.randint(1000, 29000, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
    }
    inputs["numpy"] = {k: v.numpy() for k, v in inputs.items()}
    return inputs


def timed(fn: Any, inputs: dict[str, Any], clock: Any = time.perf_counter) -> float:
    start = clock()
    fn(inputs)
    return clock() - start


def inference_benchmark(args: argparse.Namespace, workdir: Path, dm: Any) -> dict[str, Any]:
    """Every model on every runtime, in interleaved rounds (each round times every model and runtime once
    at batch ``args.batch`` and ``args.latency_calls`` times at batch 1), so that a change of load on the
    machine hits all of them alike; medians over the rounds."""
    specs = [TEACHER, *STUDENTS]
    models = runners(args, workdir, dm, specs)
    inputs = {slots: (make_inputs(args.batch, args.seq * slots), make_inputs(1, args.seq * slots))
              for slots in {model["slots"] for model in models.values()}}  # fmt: skip
    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, model in models.items():
        big, single = inputs[model["slots"]]
        for runtime, (fn, _) in model["runtimes"].items():
            fn(big), fn(single)  # warm-up (allocations, ONNX Runtime's first run)
            times[name, runtime] = {"batch": [], "single": []}
    for _ in range(args.reps):
        for name, model in models.items():
            big, single = inputs[model["slots"]]
            for runtime, (fn, _) in model["runtimes"].items():
                times[name, runtime]["batch"].append(timed(fn, big, args.clock))
                times[name, runtime]["single"].extend(
                    timed(fn, single, args.clock) for _ in range(args.latency_calls)
                )
    results: dict[str, Any] = {}
    for name, model in models.items():
        entry: dict[str, Any] = {"label": model["label"], "params": model["params"], "runtimes": {}}
        for runtime, (_, size) in model["runtimes"].items():
            batch_s = statistics.median(times[name, runtime]["batch"])
            singles = sorted(times[name, runtime]["single"])
            entry["runtimes"][runtime] = {
                "size_mb": size,
                "examples_per_s": args.batch / batch_s,
                "examples_per_s_batch1": 1.0 / statistics.median(singles),
                "p50_latency_ms": 1000 * statistics.median(singles),
                "p90_latency_ms": 1000 * singles[int(0.9 * (len(singles) - 1))],
                "rounds": len(times[name, runtime]["batch"]),
            }
        results[name] = entry
    teacher = results["teacher"]["runtimes"]
    for entry in results.values():
        for runtime, row in entry["runtimes"].items():
            row["speedup_vs_teacher"] = row["examples_per_s"] / teacher[runtime]["examples_per_s"]
            row["speedup_vs_teacher_batch1"] = (
                row["examples_per_s_batch1"] / teacher[runtime]["examples_per_s_batch1"]
            )
            row["size_vs_teacher"] = row["size_mb"] / teacher[runtime]["size_mb"]
    return results


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


def accuracy_retained(out: Path, spec: ModelSpec) -> dict[str, Any] | None:
    """The student row's average test accuracy over its teacher's, from the pipeline results files: the
    main table, or the named test set's (None where the file lacks it, as for a missing row)."""
    if spec.accuracy is None:
        return None
    results, row, teacher_source, *named = spec.accuracy
    path = out / results
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    # the main table is the report's test set; files written before test sets were named tested on `test`
    test_set = named[0] if named else summary.get("test_set", "test")
    if named:
        summary = summary.get("by_test_set", {}).get(test_set, {})
    table = summary.get("main", {})
    if teacher_source.endswith(".json"):
        teacher_path = out / teacher_source
        teacher = json.loads(teacher_path.read_text()) if teacher_path.is_file() else None
    else:
        teacher = table.get(teacher_source, {}).get("average")
    student = table.get(row, {}).get("average")
    if (
        not student
        or not teacher
        or not student.get("mean")
        or not teacher.get("average", teacher.get("mean"))
    ):
        return None
    teacher_accuracy = teacher.get("average", teacher.get("mean"))
    return {
        "source": str(path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path),
        "student_row": row,
        "test_set": test_set,
        "student": student["mean"],
        "student_std": student.get("std"),
        "student_seeds": student["n"],
        "teacher_source": teacher_source,
        "teacher": teacher_accuracy,
        "retained": student["mean"] / teacher_accuracy,
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better), by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: dict[str, Any], path: Path) -> str | None:
    """Accuracy retained (on the test sets of the accuracy rows) vs speed-up over the teacher (the table's
    batch, same runtime), one colour per runtime; the line joins the Pareto front of each runtime. Needs
    matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    plotted = False
    for runtime, colour in zip(RUNTIMES, ("tab:blue", "tab:orange", "tab:green")):
        names, points = [], []
        for name, entry in report["inference"].items():
            retained = (report["accuracy"].get(name) or {}).get("retained")
            if name == "teacher" or retained is None:
                continue
            names.append(name)
            points.append((entry["runtimes"][runtime]["speedup_vs_teacher"], 100 * retained))
        if not points:
            continue
        plotted = True
        axis.scatter([p[0] for p in points], [p[1] for p in points], color=colour, label=runtime)
        front = pareto_front(points)
        axis.plot([points[i][0] for i in front], [points[i][1] for i in front], color=colour, alpha=0.5)
        for name, (x, y) in zip(names, points):
            axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if not plotted:
        plt.close(figure)
        return None
    inf = report["setup"].get("inference_setup", report["setup"])
    test_sets = ", ".join(sorted({acc["test_set"] for acc in report["accuracy"].values()}))
    axis.set_xscale("log")
    axis.set_xlabel(f"throughput / teacher's on the same runtime (batch {inf['batch']}, seq {inf['seq']})")
    axis.set_ylabel(f"% of the teacher's accuracy (Amazon {test_sets})")
    axis.axhline(98, color="grey", linestyle=":", linewidth=1)
    axis.axvline(50, color="grey", linestyle=":", linewidth=1)
    axis.legend(title="runtime")
    axis.grid(True, which="both", alpha=0.2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


TRAINING_SETUP = ("train_seq", "batch", "steps", "train_reps", "threads", "clock")
"""The keys of a run's ``setup`` that describe its training measurements (kept when they are carried over)."""


def model_order(names: Any) -> list[str]:
    """The teacher, then the students in :data:`STUDENTS` order (a carried-over table comes back from JSON
    with its keys sorted), then any other name."""
    order = ["teacher", *(spec.name for spec in STUDENTS)]
    return sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))


def render(report: dict[str, Any]) -> str:
    setup = report["setup"]
    inf = setup.get("inference_setup", setup)  # --no-inference: the setup of the carried-over table
    rest = (
        "as are the training sections below; the accuracy column is read again"
        if "training_setup" in setup
        else "the training sections below are from this run, started at a load average of "
        f"{setup['load_before']}"
    )
    carried = (
        f" (carried over: measured at {setup['inference_carried_over_from']}; {rest})"
        if "inference_carried_over_from" in setup
        else ""
    )
    lines = [
        f"# Speed benchmark ({'tiny models' if setup['tiny'] else 'MiniLM-L6 teacher and its students'})",
        "",
        f"CPU inference{carried} at seq {inf['seq']}, {inf['threads']} thread(s), timed by the "
        f"{inf.get('clock', 'wall clock')}: throughput at batch "
        f"{inf['batch']} (median of {inf['reps']} rounds) and at batch 1 (median of "
        f"{inf['reps'] * inf['latency_calls']} calls), p50 latency at batch 1. Every model runs on "
        "every runtime in the same interleaved rounds; each ratio compares a student with the teacher's "
        "network on the same runtime and batch. Size: the fp32 safetensors weights (PyTorch) or the ONNX "
        "file. Load average "
        f"{inf['load_before']} before, {inf['load_after']} after.",
        "",
        "| model | runtime | params | size (MB) | ex/s (b32) | vs teacher | ex/s (b1) | vs teacher | "
        "p50 ms (b1) | acc. retained |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for runtime in RUNTIMES:
        for name in model_order(report["inference"]):
            entry = report["inference"][name]
            row = entry["runtimes"][runtime]
            accuracy = report["accuracy"].get(name)
            retained = f"{100 * accuracy['retained']:.1f}%" if accuracy else "-"
            lines.append(
                f"| {name} | {runtime} | {entry['params'] / 1e6:.2f}M | {row['size_mb']:.1f} | "
                f"{row['examples_per_s']:.0f} | {row['speedup_vs_teacher']:.1f}x | "
                f"{row['examples_per_s_batch1']:.0f} | {row['speedup_vs_teacher_batch1']:.1f}x | "
                f"{row['p50_latency_ms']:.2f} | {retained} |"
            )
    lines += ["", "Models:"] + [
        f"- `{name}`: {report['inference'][name]['label']}" for name in model_order(report["inference"])
    ]
    if report["accuracy"]:
        lines += [
            "",
            "Accuracy retained (fp32 PyTorch models; average test accuracy over the domains, each row at "
            f"the max_length it was trained and tested at; the table times every model at seq {inf['seq']}):",
        ]
        for name in model_order(report["accuracy"]):
            acc = report["accuracy"][name]
            lines.append(
                f"- `{name}`: `{acc['student_row']}` {100 * acc['student']:.1f}% vs "
                f"`{acc['teacher_source']}` {100 * acc['teacher']:.1f}% on {acc['test_set']} "
                f"({acc['student_seeds']} seed(s), `{acc['source']}`)"
            )
    if report.get("pareto_png"):
        lines += ["", f"Pareto plot: `{Path(report['pareto_png']).name}`."]
    if report.get("training"):
        train = setup.get("training_setup", setup)  # --no-training: the setup of the carried-over ratios
        lines += [
            "",
            f"Training cost at seq {train['train_seq']}, batch {train['batch']}: {train['steps']} timed "
            f"steps per model and repetition, {train['train_reps']} interleaved repetitions, medians, "
            f"{train['threads']} thread(s), {train.get('clock', 'wall clock')}.",
            "",
            "| training cost | ratio | medians |",
            "| --- | ---: | --- |",
        ]
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
                ratio = (report.get("training") or {}).get(name, {}).get("ratio")
                lines.append(
                    f"| {entry['what']} | {'—' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{entry['pearson_g']:.4f} | {entry['pearson_w']:.4f} |"
                )
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def carried_training(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The training ratios of the previous ``speed.json`` (:func:`carried_report`), each marked with the
    commit it was measured at (``--no-training`` does not measure them again)."""
    if previous is None:
        return None
    commit = previous.get("versions", {}).get("git_commit", "an earlier commit")
    training = previous.get("training") or {}
    for entry in training.values():
        if "carried over" not in entry["what"]:
            entry["what"] += f" (carried over: measured at {commit})"
    return training or None


def carried_report(out: Path) -> dict[str, Any] | None:
    """The previous ``speed.json`` in ``out`` (``--no-inference`` keeps its inference table)."""
    path = out / "speed.json"
    return json.loads(path.read_text()) if path.is_file() else None


def carried_meta_agreement(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The meta-weight agreement of the previous ``speed.json`` (``--no-training``)."""
    return (previous or {}).get("meta_agreement")


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models + a synthetic corpus")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--train-seq", type=int, default=64, help="max_length of the training measurements")
    parser.add_argument(
        "--no-training",
        action="store_true",
        help="skip the training-cost ratios (the previous speed.json's are kept, marked as carried over)",
    )
    parser.add_argument(
        "--no-inference",
        action="store_true",
        help="skip the inference table (the previous speed.json's is kept, marked as carried over); with "
        "--no-training nothing is timed: the accuracy column and the plot are read again from the results "
        "files",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of every runtime (torch's default)"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the calling thread's CPU time instead of the wall clock (needs --threads 1): on a "
        "shared machine this leaves out the time other processes hold the core",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1 (each runtime then computes in the calling thread)")
    args.clock = time.thread_time if args.cpu_time else time.perf_counter
    args.reps = 3 if args.quick else 10
    args.latency_calls = 3 if args.quick else 5
    args.train_reps = 2 if args.quick else 3
    args.steps = 3 if args.quick else 8
    args.epoch_batches = 3 if args.quick else 8
    args.agreement_pairs = 2 if args.quick else 6
    if args.tiny:
        args.train_seq = 32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from metakd.pipeline import package_versions
    from metakd.utils import write_json

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        setup = {
            "tiny": args.tiny,
            "quick": args.quick,
            "batch": args.batch,
            "seq": args.seq,
            "train_seq": args.train_seq,
            "reps": args.reps,
            "latency_calls": args.latency_calls,
            "train_reps": args.train_reps,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "clock": "thread CPU time" if args.cpu_time else "wall clock",
            "load_before": load_average(),
        }
        # the previous speed.json, read once: what --no-inference / --no-training carry over
        previous = carried_report(out) if args.no_inference or args.no_training else None
        if args.no_inference and previous is not None and previous.get("inference"):
            inference = previous["inference"]
            before = previous["setup"]  # a table carried over twice keeps where and how it was measured
            setup["inference_carried_over_from"] = before.get("inference_carried_over_from") or previous.get(
                "versions", {}
            ).get("git_commit", "earlier")
            setup["inference_setup"] = before.get("inference_setup") or before
        elif args.no_inference:
            raise SystemExit(f"--no-inference: no previous {out / 'speed.json'} with an inference table")
        else:
            inference = inference_benchmark(args, workdir, make_datamodule(args, workdir))
        report: dict[str, Any] = {"setup": setup, "inference": inference}
        setup["load_after"] = load_average()
        print(json.dumps(report["inference"], indent=1), flush=True)
        report["accuracy"] = {
            spec.name: acc for spec in STUDENTS if (acc := accuracy_retained(out, spec)) is not None
        }
        report["pareto_png"] = plot_pareto(report, out / "speed_pareto.png")
        if args.no_training:  # the training ratios and meta-weight agreement of the previous speed.json
            old = (previous or {}).get("setup", {})  # where the carried ratios were measured
            measured = old.get("training_setup") or {k: old[k] for k in TRAINING_SETUP if k in old}
            if measured:
                setup["training_setup"] = measured
            report["training"] = carried_training(previous)
            report["meta_agreement"] = carried_meta_agreement(previous)
        else:
            report["training"] = training_benchmark(args, workdir)
            report["meta_agreement"] = meta_weight_agreement(args, workdir)
        report["versions"] = package_versions()
        report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "speed.json", report)
    (out / "speed.md").write_text(render(report), encoding="utf-8")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
