"""Shared pytest fixtures (generic): offline environment, the MiniLM tokenizer, a tiny tokenizer."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test`: two workers, the Makefile's PYTEST_ARGS) every worker computes on one
# thread, and so do the subprocesses it starts: two workers of two threads each on two cores would fight
# over them. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

import pytest  # noqa: E402

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the", "a", "good", "bad", "book", "movie", "is", "was", "not", "great", ".", "!", ",",
]  # fmt: skip


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer (offline alias ``minilm-l6``), loaded once."""
    from metakd.backbones import load_tokenizer

    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A directory with a tiny WordPiece (BERT) tokenizer, usable as a backbone name (a local path)."""
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    # positional: the argument is `vocab_file` in transformers 4 and `vocab` (path or dict) in 5
    BertTokenizer(str(vocab)).save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_tokenizer_dir, tmp_path_factory):
    """A 1-layer BERT over the tiny tokenizer, saved as a local sentence-transformer-like directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20, max_position_embeddings=16)  # fmt: skip
    directory = tmp_path_factory.mktemp("tiny_backbone")
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(tmp_path_factory):
    """A tiny MetaTeacher checkpoint (``helpers.train_tiny_teacher``: 2 steps on the toy data), trained
    once per session; tests only read it."""
    from helpers import train_tiny_teacher

    return train_tiny_teacher(str(tmp_path_factory.mktemp("tiny_teacher") / "teacher.ckpt"))


@pytest.fixture
def one_ray_at_a_time(tmp_path_factory):
    """Held by each test that starts a local Ray instance: under pytest-xdist (``make test``) two workers
    never start one side by side (each takes seconds of both cores and GBs of memory)."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps share it
    with open(root / "ray.lock", "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
