"""Stage 0 of Meta-KD: domain prototypes and transferability scores t_i.

h_i is a mean of the last-layer token states of the *pre-trained, not fine-tuned* encoder. A domain
prototype p_k is the mean of h_j over the training instances of domain k (or, with ``by_class``, of
domain k and class c). The transferability score of instance i is

    t_i = 1/2 cos(h_i, p_{d_i}) + 1/2 cos(h_i, mean_{k != d_i} p_k)

(class variant: both prototypes are taken within the class y_i).

Empty prototypes. A domain (or (domain, class) cell) without training instances gets an all-zero
prototype, and an all-zero prototype counts as *absent*: it is left out of the "other domains" mean.
When one of the two terms is undefined (no other domain has data; or the instance's own domain has
no prototype, e.g. a target domain the teacher never saw) t_i is the remaining cosine alone; when
both are undefined a ``ValueError`` names the instance.

The pooling, prototypes and scores are pure functions; :func:`compute_transferability` runs an
encoder over a dataloader and :func:`load_or_compute_transferability` adds a disk cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.score_coverage import loaded_example_ids
from metakd.utils import atomic_torch_save

log = logging.getLogger(__name__)

PrototypePooling = Literal["masked_mean", "padded_mean_skip_cls"]
"""``masked_mean``: mean over the real tokens (padding masked out, [CLS] included).
``padded_mean_skip_cls``: what the original scripts did: mean over all positions after [CLS],
padding included, with every sequence padded to ``max_length``."""

CACHE_ENV = "METAKD_CACHE"
CACHE_FORMAT_VERSION = 1


def masked_mean_pool(
    hidden: Tensor, attention_mask: Tensor, skip_cls: bool = False, include_padding: bool = False
) -> Tensor:
    """Mean of token states over the sequence.

    Args:
        hidden: (B, T, H) token states.
        attention_mask: (B, T), 1 for real tokens and 0 for padding.
        skip_cls: leave out position 0 (the [CLS] token).
        include_padding: average over every position, padding included (the original scripts; then
            the result depends on how far the batch is padded, so pad to a fixed length).

    Returns:
        (B, H) pooled states. A row with no token to average (empty mask) is all zeros.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, H) and attention_mask (B, T), got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if include_padding:
        mask = torch.ones_like(attention_mask, dtype=hidden.dtype)
    else:
        mask = attention_mask.to(hidden.dtype)
    if skip_cls:
        hidden, mask = hidden[:, 1:], mask[:, 1:]
    total = (hidden * mask.unsqueeze(-1)).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    return total / count


def pool(hidden: Tensor, attention_mask: Tensor, pooling: PrototypePooling) -> Tensor:
    """Pool token states with a named :data:`PrototypePooling`."""
    if pooling == "masked_mean":
        return masked_mean_pool(hidden, attention_mask)
    if pooling == "padded_mean_skip_cls":
        return masked_mean_pool(hidden, attention_mask, skip_cls=True, include_padding=True)
    raise ValueError(
        f"unknown prototype pooling {pooling!r}; expected 'masked_mean' or 'padded_mean_skip_cls'"
    )


def _check_ids(name: str, ids: Tensor, n: int, upper: int) -> None:
    if ids.dim() != 1 or ids.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(ids.shape)}")
    if n and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in [{int(ids.min())}, {int(ids.max())}]"
        )


def domain_prototypes(h: Tensor, domain_ids: Tensor, num_domains: int) -> Tensor:
    """Per-domain mean p_k of the pooled states.

    Args:
        h: (N, H) pooled states.
        domain_ids: (N,) domain index of each row.
        num_domains: K.

    Returns:
        (K, H) prototypes; a domain without rows gets an all-zero prototype (= absent).
    """
    _check_ids("domain_ids", domain_ids, h.shape[0], num_domains)
    sums = h.new_zeros(num_domains, h.shape[1]).index_add_(0, domain_ids, h)
    counts = torch.bincount(domain_ids, minlength=num_domains).to(h.dtype)
    return sums / counts.clamp_min(1.0).unsqueeze(-1)


def domain_class_prototypes(
    h: Tensor, domain_ids: Tensor, labels: Tensor, num_domains: int, num_labels: int
) -> Tensor:
    """Per-(domain, class) mean p_{k,c} of the pooled states.

    Returns:
        (K, C, H) prototypes; an empty (domain, class) cell is all zeros (= absent).
    """
    _check_ids("domain_ids", domain_ids, h.shape[0], num_domains)
    _check_ids("labels", labels, h.shape[0], num_labels)
    cell = domain_ids * num_labels + labels
    flat = domain_prototypes(h, cell, num_domains * num_labels)
    return flat.view(num_domains, num_labels, h.shape[1])


def prototype_present(prototypes: Tensor) -> Tensor:
    """Boolean mask of the non-empty prototypes ((K,) or (K, C)): empty ones are all zeros."""
    return prototypes.abs().sum(dim=-1) > 0


def transferability_scores(
    h: Tensor, domain_ids: Tensor, prototypes: Tensor, labels: Tensor | None = None
) -> Tensor:
    """t_i = 1/2 cos(h_i, p_{d_i}) + 1/2 cos(h_i, mean_{k != d_i, p_k present} p_k).

    Args:
        h: (N, H) pooled states of the instances to score.
        domain_ids: (N,) their domains.
        prototypes: (K, H) domain prototypes, or (K, C, H) per (domain, class), compared within the
            instance's class (then ``labels`` is required).
        labels: (N,) classes, for the (domain, class) variant.

    Returns:
        (N,) scores in [-1, 1]. See the module docstring for absent prototypes.
    """
    if prototypes.dim() == 3:
        if labels is None:
            raise ValueError("(domain, class) prototypes (K, C, H) need the instances' labels")
        _check_ids("labels", labels, h.shape[0], prototypes.shape[1])
        # Select each instance's class column: (N, K, H), then it is the domain case per row.
        per_row = prototypes.permute(1, 0, 2)[labels]
    elif prototypes.dim() == 2:
        per_row = prototypes.unsqueeze(0).expand(h.shape[0], -1, -1)
    else:
        raise ValueError(f"prototypes must be (K, H) or (K, C, H), got {tuple(prototypes.shape)}")
    num_domains = per_row.shape[1]
    _check_ids("domain_ids", domain_ids, h.shape[0], num_domains)

    present = prototype_present(per_row)  # (N, K)
    own = F.one_hot(domain_ids, num_domains).bool()
    others = present & ~own
    own_present = (present & own).any(dim=1)
    others_present = others.any(dim=1)
    rows = torch.arange(h.shape[0], device=h.device)

    own_proto = per_row[rows, domain_ids]
    weights = others.to(h.dtype)
    other_mean = (per_row * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    cos_own = F.cosine_similarity(h, own_proto, dim=-1)
    cos_other = F.cosine_similarity(h, other_mean, dim=-1)

    missing = ~(own_present | others_present)
    if missing.any():
        i = int(missing.nonzero()[0])
        raise ValueError(
            f"instance {i} (domain {int(domain_ids[i])}) has no prototype to compare with: neither its "
            "own domain nor any other domain has training instances"
            + (" of its class" if labels is not None else "")
        )
    both = own_present & others_present
    return torch.where(both, 0.5 * cos_own + 0.5 * cos_other, torch.where(own_present, cos_own, cos_other))


def _pad_batch_to(batch: Mapping[str, Tensor], length: int, pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad (B, T) token tensors to (B, length) as a fixed-length tokenizer would."""
    out = dict(batch)
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return out
    for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in batch:
            out[key] = F.pad(batch[key], (0, extra), value=value)
    return out


@torch.no_grad()
def compute_transferability(
    encoder: nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    num_examples: int,
    num_domains: int,
    num_labels: int,
    by_class: bool = False,
    pooling: PrototypePooling = "masked_mean",
    pad_to_length: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the pre-trained encoder (eval, no grad) over the training split and score every instance.

    Args:
        encoder: a HF encoder (returns ``last_hidden_state``), *not* fine-tuned.
        dataloader: batches with the keys of docs/ARCHITECTURE.md, e.g.
            ``datamodule.train_eval_dataloader()``.
        num_examples: length of the returned t (``datamodule.num_pooled_train``).
        num_domains, num_labels: K and C.
        by_class: (domain, class) prototypes instead of domain prototypes.
        pooling: see :data:`PrototypePooling`; ``padded_mean_skip_cls`` pads every batch to
            ``pad_to_length`` (the datamodule's ``max_length``) like the original fixed-length input.
        device: where to run; defaults to the encoder's device.

    Returns:
        ``(t, prototypes)``: t is (num_examples,) float32 indexed by ``example_ids``; examples the
        dataloader did not yield (e.g. filtered out by ``target_domain``) are NaN. Prototypes are
        (K, H) or (K, C, H) float32 on the CPU.
    """
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    pad_token_id = getattr(getattr(encoder, "config", None), "pad_token_id", None) or 0
    pooled, domains, labels, example_ids = [], [], [], []
    try:
        for batch in dataloader:
            if pooling == "padded_mean_skip_cls" and pad_to_length is not None:
                batch = _pad_batch_to(batch, pad_to_length, pad_token_id)
            inputs = {
                k: batch[k].to(device)
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in batch
            }
            hidden = encoder(**inputs).last_hidden_state
            pooled.append(pool(hidden, inputs["attention_mask"], pooling).float().cpu())
            domains.append(batch["domain_ids"].cpu())
            labels.append(batch["labels"].cpu())
            example_ids.append(batch["example_ids"].cpu())
    finally:
        encoder.train(was_training)
    if not pooled:
        raise ValueError("the dataloader for the transferability scores yielded no batch")
    h = torch.cat(pooled)
    domain_ids, label_ids, ids = torch.cat(domains), torch.cat(labels), torch.cat(example_ids)
    _check_ids("example_ids", ids, ids.shape[0], num_examples)
    if by_class:
        prototypes = domain_class_prototypes(h, domain_ids, label_ids, num_domains, num_labels)
        scores = transferability_scores(h, domain_ids, prototypes, label_ids)
    else:
        prototypes = domain_prototypes(h, domain_ids, num_domains)
        scores = transferability_scores(h, domain_ids, prototypes)
    t = torch.full((num_examples,), float("nan"))
    t[ids] = scores
    return t, prototypes


def default_cache_dir() -> Path:
    """``$METAKD_CACHE/transferability`` or ``~/.cache/metakd/transferability``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "metakd"
    return base / "transferability"


def encoder_fingerprint(encoder: nn.Module) -> str:
    """Hash of the encoder's resolved config and its weights (a fresh random init hashes differently)."""
    digest = hashlib.sha256()
    config = getattr(encoder, "config", None)
    if config is not None:
        config_dict = config.to_diff_dict() if hasattr(config, "to_diff_dict") else dict(vars(config))
        # Fields that do not change the pooled states (attention kernel, provenance) stay out of the key.
        volatile_keys = (
            "_name_or_path",
            "transformers_version",
            "_attn_implementation",
            "attn_implementation",
            "_attn_implementation_autoset",
        )
        for volatile in volatile_keys:
            config_dict.pop(volatile, None)
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def loaded_examples_fingerprint(dataloader: Iterable[Mapping[str, Tensor]]) -> str | None:
    """Hash of the sorted ``example_ids`` a loader yields (``target_domain`` / ``train_fraction`` load a
    subset of the pooled split without changing ``split_fingerprint``; :func:`.loaded_example_ids`);
    None for a one-shot iterator (it cannot be read twice)."""
    ids = loaded_example_ids(dataloader)
    if ids is None:
        return None
    return hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()[:24]


def transferability_cache_key(
    split_fingerprint: str,
    backbone: str,
    encoder_hash: str,
    max_length: int | None,
    options: Mapping[str, Any],
) -> str:
    """Cache key: pooled split + backbone name + encoder (config and weights) + max_length + options."""
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "split": split_fingerprint,
        "backbone": backbone,
        "encoder": encoder_hash,
        "max_length": max_length,
        "options": dict(sorted(options.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_or_compute_transferability(
    encoder: nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    *,
    split_fingerprint: str,
    backbone: str,
    max_length: int | None,
    num_examples: int,
    num_domains: int,
    num_labels: int,
    by_class: bool = False,
    pooling: PrototypePooling = "masked_mean",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, bool]:
    """:func:`compute_transferability` with a disk cache.

    The cache file is ``<cache_dir>/<key>.pt`` (a dict of tensors, read with ``weights_only=True``)
    under :func:`default_cache_dir` unless ``cache_dir`` is given; the key is
    :func:`transferability_cache_key`. A corrupt or mismatching file is recomputed and overwritten.

    Returns:
        ``(t, prototypes, from_cache)``.
    """
    options = {
        "by_class": by_class,
        "pooling": pooling,
        "num_examples": num_examples,
        "num_domains": num_domains,
        "num_labels": num_labels,
        "examples": loaded_examples_fingerprint(dataloader),  # the loaded subset of the pooled split
    }
    key = transferability_cache_key(
        split_fingerprint, backbone, encoder_fingerprint(encoder), max_length, options
    )
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else default_cache_dir() / f"{key}.pt"
    if use_cache and path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            t, prototypes = stored["transferability"], stored["prototypes"]
            if t.shape == (num_examples,):
                log.info("transferability scores read from cache %s", path)
                return t, prototypes, True
            log.warning("ignoring transferability cache %s: t has shape %s", path, tuple(t.shape))
        except Exception as err:  # a truncated or foreign file: recompute
            log.warning("ignoring unreadable transferability cache %s (%s)", path, err)
    t, prototypes = compute_transferability(
        encoder,
        dataloader,
        num_examples=num_examples,
        num_domains=num_domains,
        num_labels=num_labels,
        by_class=by_class,
        pooling=pooling,
        pad_to_length=max_length,
        device=device,
    )
    if use_cache:
        # atomic: concurrent ranks never read a half-written file
        atomic_torch_save({"transferability": t, "prototypes": prototypes}, path)
        log.info("transferability scores cached in %s", path)
    return t, prototypes, False


TRANSFERABILITY_SCALES = ("none", "mean1", "temperature:<T>")
"""The values of ``transferability_scale`` (see :func:`rescale_transferability`)."""


def parse_transferability_scale(mode: str | float) -> tuple[str, float | None]:
    """``(kind, temperature)`` of a ``transferability_scale`` value; a clear ``ValueError`` otherwise.

    ``"none"`` and ``"mean1"`` have no temperature; ``"temperature:0.1"`` (or a bare number, e.g. ``0.1``)
    is ``("temperature", 0.1)``; the temperature must be a finite number > 0.
    """
    text = str(mode).strip()
    if text in ("none", "mean1"):
        return text, None
    value = text.split(":", 1)[1] if text.startswith("temperature:") else text
    try:
        temperature = float(value)
    except ValueError:
        temperature = float("nan")
    if not (temperature > 0 and temperature < float("inf")):
        raise ValueError(
            f"transferability_scale must be 'none', 'mean1' or 'temperature:<T>' with a number T > 0 "
            f"(e.g. 'temperature:0.1'), got {mode!r}"
        )
    return "temperature", temperature


def rescale_transferability(t: Tensor, mode: str | float = "none") -> Tensor:
    """Rescale the transferability scores of a whole training split (``transferability_scale``).

    ``t`` is the (N,) vector of raw scores indexed by ``example_ids``, NaN for examples without a score;
    the statistics below are taken over its finite entries (the training examples), and NaN stays NaN.

    - ``none``: t unchanged (the paper; a teacher clamps negative scores to 0 when it uses them as weights).
    - ``mean1``: max(t, 0) divided by the mean of max(t, 0): the relative weights of the clamped scores
      with mean 1, so that the weighting no longer scales the loss (and with it the step size) by
      mean(t).
    - ``temperature:<T>`` (or a bare number T): ``N * softmax(t / T)`` over the N scored examples, i.e.
      ``exp(t_i / T)`` divided by the mean of ``exp(t_j / T)``: positive, mean 1; a large T flattens the
      weights towards 1 (a near-uniform t, as anisotropic BERT-base states would give), a small T
      sharpens them. Negative scores need no clamping here.

    Returns a float tensor of t's shape.
    """
    kind, temperature = parse_transferability_scale(mode)
    if kind == "none":
        return t.clone()
    scored = torch.isfinite(t)
    if not bool(scored.any()):
        raise ValueError("rescale_transferability: t has no finite score to take the mean over")
    out = torch.full_like(t, float("nan"), dtype=torch.float64)
    values = t[scored].double()
    if kind == "mean1":
        clamped = values.clamp_min(0.0)
        mean = clamped.mean()
        if not bool(mean > 0):
            raise ValueError("transferability_scale 'mean1': every score is <= 0, so the mean weight is 0")
        out[scored] = clamped / mean
    else:
        logits = values / float(temperature)  # type: ignore[arg-type]
        out[scored] = torch.softmax(logits, dim=0) * values.numel()
    return out.to(t.dtype if t.is_floating_point() else torch.float32)
