"""Shared test helpers: tiny encoder configs, a toy multi-domain datamodule, tiny teachers and students,
a user-defined student architecture and command-line runners."""

from __future__ import annotations

import hashlib
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from metakd.prototypes import masked_mean_pool
from metakd.students import StudentModel, StudentOutput

TINY_VOCAB = 30522  # the MiniLM tokenizer's vocabulary, so real tokenised text fits too


def tiny_encoder_config(**overrides: Any) -> dict[str, Any]:
    """A 2-layer, hidden-32 BERT config (kwargs for ``BertConfig``), random weights, fast on CPU."""
    config = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    config.update(overrides)
    return config


class _ListDataset(Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def pad_collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest row (docs/ARCHITECTURE.md batch keys)."""
    length = max(len(r["input_ids"]) for r in rows)
    batch = {k: torch.zeros(len(rows), length, dtype=torch.long) for k in ("input_ids", "attention_mask")}
    batch["token_type_ids"] = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        batch["attention_mask"][i, :n] = 1
    for key in ("labels", "domain_ids", "example_ids"):
        batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
    return batch


class ToyMultiDomainDataModule(pl.LightningDataModule):
    """Random token sequences in a few domains, following the datamodule contract of ARCHITECTURE.md.

    The label is learnable: class c sequences carry the marker token ``1000 + c`` (plus a
    domain marker ``2000 + d``). ``example_ids`` index the pooled training split; ``target_domain``
    filters every split to one domain without changing them.
    """

    def __init__(
        self,
        num_domains: int = 3,
        num_labels: int = 2,
        train_per_domain: int = 12,
        eval_per_domain: int = 4,
        batch_size: int = 8,
        max_length: int = 12,
        target_domain: str | None = None,
        seed: int = 0,
        backbone: str = "tiny-test-bert",
    ) -> None:
        super().__init__()
        self.domain_names = [f"dom{k}" for k in range(num_domains)]
        self.num_domains = num_domains
        self.label_names = [f"label{c}" for c in range(num_labels)]
        self.num_labels = num_labels
        self.backbone = backbone
        self.max_length = max_length
        self.target_domain = target_domain
        self.train_fraction: float | None = None
        self.batch_size = batch_size
        self.train_per_domain, self.eval_per_domain, self.seed = train_per_domain, eval_per_domain, seed
        if target_domain is not None and target_domain not in self.domain_names:
            raise ValueError(f"unknown target_domain {target_domain!r}")

    def _make_split(self, per_domain: int, generator: torch.Generator) -> list[dict[str, Any]]:
        rows = []
        for d in range(self.num_domains):
            for _ in range(per_domain):
                label = int(torch.randint(self.num_labels, (1,), generator=generator))
                n = int(torch.randint(4, self.max_length - 1, (1,), generator=generator))
                body = torch.randint(3000, 5000, (n,), generator=generator).tolist()
                ids = [101, 1000 + label, 2000 + d, *body][: self.max_length - 1] + [102]
                rows.append({"input_ids": ids, "labels": label, "domain_ids": d})
        for i, row in enumerate(rows):
            row["example_ids"] = i
        return rows

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        pooled = {
            "train": self._make_split(self.train_per_domain, generator),
            "val": self._make_split(self.eval_per_domain, generator),
            "test": self._make_split(self.eval_per_domain, generator),
        }
        self.num_pooled_train = len(pooled["train"])
        digest = hashlib.sha256(repr((pooled, self.domain_names, self.label_names)).encode()).hexdigest()
        self.split_fingerprint = digest[:16]
        self.data_fingerprint = hashlib.sha256(
            f"{digest}|{self.backbone}|{self.max_length}|{self.target_domain}".encode()
        ).hexdigest()[:16]
        keep = self.domain_names.index(self.target_domain) if self.target_domain is not None else None
        splits = {
            name: [r for r in rows if keep is None or r["domain_ids"] == keep]
            for name, rows in pooled.items()
        }
        self.train_dataset = _ListDataset(splits["train"])
        self.val_dataset = _ListDataset(splits["val"])
        self.test_dataset = _ListDataset(splits["test"])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, self.batch_size, shuffle=True, collate_fn=pad_collate)

    def train_eval_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, self.batch_size, shuffle=False, collate_fn=pad_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, self.batch_size, collate_fn=pad_collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, self.batch_size, collate_fn=pad_collate)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def tiny_trainer(**overrides: Any) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints or progress bar (2 steps unless told otherwise)."""
    kwargs: dict[str, Any] = {
        "max_steps": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
    }
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


# --- student / export helpers ---------------------------------------------------------------------


def tiny_student_config(**overrides: Any) -> dict[str, Any]:
    """A 1-layer, hidden-16 student (narrower than :func:`tiny_encoder_config`, so projections exist)."""
    config = tiny_encoder_config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20
    )
    config.update(overrides)
    return config


def train_tiny_teacher(path: str, datamodule: pl.LightningDataModule | None = None, **overrides: Any) -> str:
    """Fit a tiny MetaTeacher (backbone ``minilm-l6`` tokenizer, tiny random encoder) for 2 steps and
    save it with ``trainer.save_checkpoint(path)``; returns ``path``."""
    datamodule = datamodule or ToyMultiDomainDataModule(backbone="minilm-l6")
    trainer = tiny_trainer()
    trainer.fit(tiny_teacher(datamodule, **overrides), datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


def tiny_teacher(datamodule: Any, teacher_class: Any = None, **overrides: Any) -> Any:
    """A MetaTeacher (or ``teacher_class``) with the tiny random encoder for ``datamodule``'s labels and
    domains (no t_i cache)."""
    from metakd.teacher import MetaTeacher

    kwargs: dict[str, Any] = {
        "backbone": "minilm-l6",
        "num_labels": datamodule.num_labels,
        "num_domains": datamodule.num_domains,
        "domain_names": datamodule.domain_names,
        "label_names": datamodule.label_names,
        "encoder_config": tiny_encoder_config(),
        "transferability_cache": False,
    }
    kwargs.update(overrides)
    return (teacher_class or MetaTeacher)(**kwargs)


def tiny_student(teacher_ckpt: str | None, datamodule: Any, **overrides: Any) -> Any:
    """A Student with the tiny student encoder for ``datamodule``'s target domain, distilled from
    ``teacher_ckpt`` (the Student's own defaults otherwise)."""
    from metakd.student import Student

    kwargs: dict[str, Any] = {
        "teacher_ckpt": teacher_ckpt,
        "num_labels": datamodule.num_labels,
        "num_domains": datamodule.num_domains,
        "domain_names": datamodule.domain_names,
        "label_names": datamodule.label_names,
        "target_domain": datamodule.target_domain,
        "tokenizer_name": datamodule.backbone,
        "student_config": tiny_student_config(),
    }
    kwargs.update(overrides)
    return Student(**kwargs)


# --- command-line helpers (shared by the CLI, logging, fault, reliability and pipeline tests) ------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def metakd_env(wandb_mode: str = "disabled", extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a metakd subprocess: offline, W&B ``wandb_mode``, the repo on PYTHONPATH."""
    import os

    env = dict(os.environ, WANDB_MODE=wandb_mode, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra_env or {})
    return env


def run_python(
    *args: Any,
    cwd: Any = None,
    check: bool = True,
    timeout: int = 300,
    wandb_mode: str = "disabled",
    extra_env: dict[str, str] | None = None,
):
    """Run ``python ARGS`` in a subprocess with :func:`metakd_env`; with ``check`` a non-zero exit fails the
    test with the end of its output. Returns the ``CompletedProcess`` (text output captured)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=str(cwd or REPO),
        env=metakd_env(wandb_mode, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"python {' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def run_metakd(*args: Any, **kwargs: Any):
    """Run ``python -m metakd ARGS`` offline (:func:`run_python`)."""
    return run_python("-m", "metakd", *args, **kwargs)


def run_metakd_batch(cases: dict[str, dict[str, Any]], out_dir: Any, cwd: Any = None, timeout: int = 600):
    """Run several ``python -m metakd`` command lines in one subprocess (tests/metakd_batch.py: the same
    code path, one interpreter start-up). ``cases`` maps a name to ``{"argv": [...], "env"?: {...},
    "watch"?: path}``; returns per name a ``CompletedProcess`` (exit status, stdout, stderr) and whether
    ``watch`` existed after the case (``{name: (result, watched)}``)."""
    import json
    import subprocess
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = [{"name": name, **case} for name, case in cases.items()]
    for case in listing:
        case["argv"] = [str(word) for word in case["argv"]]
        case["watch"] = str(case["watch"]) if case.get("watch") else None
    (out_dir / "cases.json").write_text(json.dumps(listing), encoding="utf-8")
    run_python(REPO / "tests" / "metakd_batch.py", out_dir / "cases.json", out_dir, cwd=cwd, timeout=timeout)
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    return {
        name: (
            subprocess.CompletedProcess(
                ["python", "-m", "metakd", *cases[name]["argv"]],
                results[name]["returncode"],
                (out_dir / f"{name}.out").read_text(encoding="utf-8", errors="replace"),
                (out_dir / f"{name}.err").read_text(encoding="utf-8", errors="replace"),
            ),
            results[name]["watched"],
        )
        for name in cases
    }


# --- tiny text corpora and CLI error output (shared by the CLI, fault and reliability tests) ------

SENTIMENT_WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "boring"]}


def tiny_corpus_records(domains: tuple[str, ...] = ("books", "dvd"), per_domain: int = 20) -> list[dict]:
    """Sentiment records ``{"text", "label", "domain"}``: labels ``neg``/``pos`` alternate, 1-3 sentiment
    words per text (learnable), ``per_domain`` records per domain."""
    records = []
    for domain in domains:
        for i in range(per_domain):
            label = "pos" if i % 2 else "neg"
            words = [SENTIMENT_WORDS[label][(i + k) % 4] for k in range(1 + i % 3)]
            records.append(
                {"text": f"the {domain} {i} is " + " ".join(words), "label": label, "domain": domain}
            )
    return records


def write_jsonl(path: Any, records: list[Any]) -> Any:
    """Write ``records`` (dicts as JSON, strings as they are) one a line to ``path``; returns ``path``."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_tiny_corpus(path: Any, domains: tuple[str, ...] = ("books", "dvd"), per_domain: int = 20) -> Any:
    """:func:`tiny_corpus_records` as a JSONL file at ``path``; returns ``path``."""
    return write_jsonl(path, tiny_corpus_records(domains, per_domain))


def stderr_lines(result: Any) -> list[str]:
    """The non-empty lines of a finished subprocess's stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def tiny_fit_config(directory: Any, train_file: Any) -> dict[str, Any]:
    """A ``python -m metakd fit`` config: a tiny MetaTeacher (MiniLM tokenizer, :func:`tiny_encoder_config`)
    on a ``JsonlDataModule`` over ``train_file``, one CPU step, no logger, run folder ``directory/run``."""
    from pathlib import Path

    directory = Path(directory)
    return {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            # one real step (not fast_dev_run, which never writes checkpoints): a fit that got as far as
            # training leaves run/checkpoints/, which the fault tests check is absent
            "max_steps": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(directory / "run"),
        },
        "model": {
            "class_path": "metakd.MetaTeacher",
            "init_args": {
                "backbone": "minilm-l6",
                "encoder_config": tiny_encoder_config(),
                "transferability_cache": False,
            },
        },
        "data": {
            "class_path": "datamodules.JsonlDataModule",
            "init_args": {
                "train_file": str(train_file),
                "backbone": "minilm-l6",
                "max_length": 16,
                "batch_size": 8,
                "cache_dir": str(directory / "cache"),
            },
        },
    }


def write_tiny_fit_setup(directory: Any) -> Any:
    """``directory/corpus.jsonl`` (:func:`write_tiny_corpus`), ``directory/tiny.yaml``
    (:func:`tiny_fit_config` on it) and ``directory/truncated.ckpt`` (the first bytes of a torch zip,
    then nothing: a checkpoint cut off while written); returns ``directory``."""
    from pathlib import Path

    import yaml

    directory = Path(directory)
    corpus = write_tiny_corpus(directory / "corpus.jsonl")
    config = tiny_fit_config(directory, corpus)
    (directory / "tiny.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (directory / "truncated.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    return directory


# --- a user's own student architecture (no token states, no attention) -----------------------------


class MeanPoolMLPStudent(StudentModel):
    """A two-layer MLP over mean-pooled word embeddings: no hidden states, no attention maps."""

    provides = frozenset({"pooled"})

    def __init__(self, num_labels: int, vocab_size: int, pad_token_id: int = 0, dim: int = 16) -> None:
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh())
        self.classifier = torch.nn.Linear(dim, num_labels)
        self.dim = dim

    @property
    def hidden_size(self) -> int:
        return self.dim

    def forward(self, input_ids, attention_mask, token_type_ids=None, need=frozenset()) -> StudentOutput:
        pooled = self.mlp(masked_mean_pool(self.embeddings(input_ids), attention_mask))
        return StudentOutput(logits=self.classifier(pooled), pooled=pooled if "pooled" in need else None)


class WeightSnapshots(pl.Callback):
    """The Student's architecture weights (``module.model``) at the start of fit and after every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _take(self, module: Any) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._take(module)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self._take(module)


class SlowAfterFirstEpoch(pl.Callback):
    """Sleeps ``seconds`` before every training batch after the first epoch (whose end writes
    ``last.ckpt``): a window, costing no CPU, in which a test can stop a run mid-fit. No number changes."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch >= 1:
            import time

            time.sleep(self.seconds)


class SlowTeardown(pl.Callback):
    """On an exception (a stop), writes this process's id to ``pid_file`` and sleeps ``seconds``: a
    teardown that takes long (e.g. a logger upload), for testing that a second Ctrl-C exits at once."""

    def __init__(self, pid_file: str, seconds: float = 60.0) -> None:
        self.pid_file, self.seconds = pid_file, seconds

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        import os
        import time

        with open(self.pid_file, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        time.sleep(self.seconds)
