"""Static word embeddings distilled from a sentence-transformer backbone with ``model2vec`` (Tulkens and
van Dongen 2024, https://github.com/MinishLab/model2vec), aligned to the data's WordPiece ids: what
``embedding_init: model2vec`` starts a TextCNN or BiLSTM from.

``model2vec.distill.distill(backbone)`` runs the backbone once on every token of its vocabulary (each
token alone, mean-pooled), reduces the outputs to ``pca_dims`` principal components and weights each row
by SIF (``sif_coefficient``, from the token's rank). Unlike ``embedding_init: backbone`` (the raw input
embedding table, or its principal components) these vectors have passed through every layer of the
teacher's backbone. model2vec drops the ``[unused*]`` tokens and re-orders its vocabulary; rows are
matched to the data's tokenizer by token string, and a token model2vec dropped gets a zero row.

The static model is computed once per (backbone weights, PCA width, SIF coefficient, model2vec version)
and cached as ``<cache>/model2vec/<key>/`` (model2vec's own format; ``$METAKD_CACHE`` or
``~/.cache/metakd``); the model2vec peer classifier (``benchmarks/model2vec_peer.py``) starts from the
same one: distilling MiniLM-L6's 30522 tokens takes minutes on a CPU, loading the cache a
fraction of a second. Nothing is downloaded: the backbone is a local directory or an offline alias
(:mod:`metakd.backbones`). ``model2vec`` is an optional dependency (``pip install -e .[model2vec]``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metakd.errors import StudentConfigError
from metakd.utils import file_fingerprint, sha256_json

log = logging.getLogger(__name__)

SIF_COEFFICIENT = 1e-4
"""model2vec's default SIF weighting of its distilled rows."""


def model2vec_cache_dir() -> Path:
    """``$METAKD_CACHE/model2vec`` or ``~/.cache/metakd/model2vec``."""
    root = os.environ.get("METAKD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "metakd") / "model2vec"


def _backbone_identity(path: str) -> str:
    """The backbone directory's weights and config, hashed (a directory is what model2vec distils)."""
    directory = Path(path)
    if not directory.is_dir():
        raise StudentConfigError(
            f"embedding_init 'model2vec' distils a local model directory; the backbone resolves to {path!r}, "
            "which is not one (use an offline alias such as 'minilm-l6' or a saved model directory)"
        )
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return sha256_json({p.name: file_fingerprint(p) for p in files}, length=64)


def _import_distill():
    try:
        from model2vec.distill import distill
    except ImportError as err:
        raise StudentConfigError(
            "embedding_init 'model2vec' needs the model2vec package: pip install -e '.[model2vec]' "
            f"({type(err).__name__}: {err})"
        ) from None
    return distill


def static_model(
    backbone: str,
    pca_dims: int | None,
    sif_coefficient: float | None = SIF_COEFFICIENT,
    cache_dir: str | Path | None = None,
) -> Any:
    """model2vec's ``StaticModel`` distilled from ``backbone`` (float32, ``pca_dims`` wide, None: no PCA),
    computed once and then read from ``<cache>/model2vec/<key>/`` (``StaticModel.save_pretrained``)."""
    from metakd.backbones import resolve_backbone

    distill = _import_distill()
    from importlib.metadata import version

    from model2vec import StaticModel

    path = resolve_backbone(backbone)
    key = sha256_json({"backbone": _backbone_identity(path), "pca_dims": pca_dims, "sif": sif_coefficient,
                       "model2vec": version("model2vec")})  # fmt: skip
    directory = (Path(cache_dir) if cache_dir is not None else model2vec_cache_dir()) / key
    if (directory / "config.json").is_file():
        log.info("model2vec static model read from %s", directory)
        return StaticModel.from_pretrained(str(directory))
    log.info("distilling static embeddings from %s with model2vec (once; cached in %s)", backbone, directory)
    static = distill(path, pca_dims=pca_dims, sif_coefficient=sif_coefficient, quantize_to="float32")
    partial = directory.with_name(f"{key}.{os.getpid()}.partial")
    static.save_pretrained(str(partial))
    try:
        os.replace(partial, directory)  # atomic: a concurrent reader sees the whole directory or none
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
    return static


def aligned_rows(static: Any, vocabulary: dict[str, int]) -> Tensor:
    """``static``'s rows in the order of ``vocabulary`` (token string -> data id), (max id + 1, width);
    a token model2vec dropped gets zeros."""
    rows = torch.as_tensor(static.embedding, dtype=torch.float32)
    ids = static.tokenizer.get_vocab()
    table = rows.new_zeros(max(vocabulary.values()) + 1, rows.shape[1])
    matched = 0
    for token, data_id in vocabulary.items():
        row = ids.get(token)
        if row is not None:
            table[data_id] = rows[row]
            matched += 1
    log.info("model2vec: %d of the data's %d tokens have a distilled row", matched, len(vocabulary))
    return table


def model2vec_word_embeddings(
    backbone: str,
    tokenizer_name: str,
    vocab_size: int,
    pca_dims: int | None,
    sif_coefficient: float | None = SIF_COEFFICIENT,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """The (vocab_size, width) table of ``backbone``'s model2vec embeddings for the data's tokenizer
    ``tokenizer_name`` (distilled once, then read from the cache; see the module docstring)."""
    from metakd.backbones import check_same_tokenizer, load_tokenizer

    check_same_tokenizer(tokenizer_name, "data", backbone, "embedding backbone")
    static = static_model(backbone, pca_dims, sif_coefficient, cache_dir)
    table = aligned_rows(static, load_tokenizer(tokenizer_name).get_vocab())
    if table.shape[0] < vocab_size:
        raise StudentConfigError(
            f"the model2vec table of {backbone!r} has {table.shape[0]} rows, fewer than the tokenizer's "
            f"{vocab_size} tokens"
        )
    return table[:vocab_size]
