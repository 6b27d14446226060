"""Checks of numeric options at construction, with messages that name the config key.

Each check raises :class:`metakd.errors.ConfigError` (a ``ValueError``) such as
``model.init_args.learning_rate must be >= 0, got -1.0`` and returns the value. NaN and infinities are
refused too (``must be a finite number``), and so are booleans and strings.
"""

from __future__ import annotations

import math
from typing import Any

from metakd.errors import ConfigError, StudentConfigError

MODEL_KEY = "model.init_args"


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return value


def check_non_negative(key: str, value: Any) -> float:
    """``value >= 0``."""
    if not _number(key, value) >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    return value


def check_positive(key: str, value: Any) -> float:
    """``value > 0``."""
    if not _number(key, value) > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")
    return value


def check_interval(
    key: str, value: Any, low: float, high: float, low_closed: bool = True, high_closed: bool = True
) -> float:
    """``value`` in the interval from ``low`` to ``high`` (closed or open at each end)."""
    number = _number(key, value)
    above = number >= low if low_closed else number > low
    below = number <= high if high_closed else number < high
    if not (above and below):
        interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        raise ConfigError(f"{key} must be in {interval}, got {value!r}")
    return value


def check_fraction(key: str, value: Any) -> float:
    """``value`` in (0, 1]."""
    return check_interval(key, value, 0.0, 1.0, low_closed=False)


def check_int_at_least(key: str, value: Any, minimum: int) -> int:
    """An integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


# Student options, checked by check_student_options: name -> check (the Student module calls it).
_STUDENT_CHECKS = {
    "intermediate_lr": check_non_negative,
    "prediction_lr": check_non_negative,
    "weight_decay": check_non_negative,
    "temperature": check_positive,
    "lambda_tk": check_non_negative,
    "hard_label_weight": check_non_negative,
    "intermediate_epochs": lambda key, value: check_int_at_least(key, value, 0),
}


def check_max_length_fits(
    key: str, max_length: int, limit: int | None, reader: str, error: type[Exception] = ConfigError
) -> None:
    """``max_length <= limit``: no input longer than an encoder's position embeddings (None: no limit).
    ``reader`` names the encoder in the message, e.g. ``backbone 'minilm-l6'``."""
    if limit is not None and max_length > limit:
        raise error(
            f"{key} is {max_length}, more than the {limit} positions {reader} reads (its "
            f"max_position_embeddings); use at most {limit}"
        )


def check_data_fits_model(datamodule: Any, model: Any) -> None:
    """The datamodule's ``max_length`` against every HF encoder in the model and in a Student's frozen
    teacher (kept outside the module tree), e.g. a MetaTeacher ``encoder_config`` with fewer positions
    than its backbone's tokenizer data; the key is the config's ``data.init_args.max_length``."""
    from torch import nn
    from transformers import PretrainedConfig

    from metakd.backbones import position_limit

    max_length = getattr(datamodule, "max_length", None)
    if not isinstance(max_length, int) or not isinstance(model, nn.Module):
        return
    modules = [("model", name, module) for name, module in model.named_modules()]
    teacher = getattr(model, "teacher", None)
    if isinstance(teacher, nn.Module):
        modules += [("teacher", name, module) for name, module in teacher.named_modules()]
    readers: dict[int, tuple[int, str]] = {}  # per config, the outermost module that holds it
    for owner, name, module in modules:
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and (limit := position_limit(config)) is not None:
            readers.setdefault(id(config), (limit, f"the {owner}'s encoder" + (f" `{name}`" if name else "")))
    if readers:
        limit, reader = min(readers.values(), key=lambda found: found[0])
        check_max_length_fits("data.init_args.max_length", max_length, limit, reader)


def check_student_options(prefix: str = MODEL_KEY, **init_args: Any) -> None:
    """Check the Student's numeric options among ``init_args`` (others are ignored).

    ``intermediate_lr``, ``prediction_lr``, ``weight_decay``, ``lambda_tk``, ``hard_label_weight`` >= 0;
    ``temperature`` > 0; ``intermediate_epochs`` an integer >= 0. ``None`` means "the method's
    default" and is not checked. Meant for ``Student.__init__``.
    """
    for name, check in _STUDENT_CHECKS.items():
        if init_args.get(name) is not None:
            check(f"{prefix}.{name}", init_args[name])


def check_teacher_options(prefix: str = MODEL_KEY, **init_args: Any) -> None:
    """Check the MetaTeacher's numeric options among ``init_args`` (others are ignored).

    ``learning_rate``, ``weight_decay``, ``domain_loss_weight`` >= 0; ``warmup_ratio`` in [0, 1];
    ``dropout`` in [0, 1); ``gradient_clip_norm`` > 0 or None; ``meta_inner_lr`` > 0;
    ``meta_every_n_steps`` an integer >= 1.
    """

    def key(name: str) -> str:
        return f"{prefix}.{name}"

    for name in ("learning_rate", "weight_decay", "domain_loss_weight"):
        if name in init_args:
            check_non_negative(key(name), init_args[name])
    if "warmup_ratio" in init_args:
        check_interval(key("warmup_ratio"), init_args["warmup_ratio"], 0.0, 1.0)
    if "dropout" in init_args:
        check_interval(key("dropout"), init_args["dropout"], 0.0, 1.0, high_closed=False)
    if init_args.get("gradient_clip_norm") is not None:
        check_positive(key("gradient_clip_norm"), init_args["gradient_clip_norm"])
    if "meta_inner_lr" in init_args:
        check_positive(key("meta_inner_lr"), init_args["meta_inner_lr"])
    if "meta_every_n_steps" in init_args:
        check_int_at_least(key("meta_every_n_steps"), init_args["meta_every_n_steps"], 1)


def data_names(
    num_labels: int,
    num_domains: int,
    label_names: list[str] | None,
    domain_names: list[str] | None,
    target_domain: str | None,
) -> tuple[list[str], list[str]]:
    """The label and domain names a model was given (``"0"``.. / ``domain0``.. when None), checked
    against their counts and the target domain."""
    labels = list(label_names) if label_names else [str(i) for i in range(num_labels)]
    domains = list(domain_names) if domain_names else [f"domain{i}" for i in range(num_domains)]
    if len(labels) != num_labels or len(domains) != num_domains:
        raise StudentConfigError(
            f"num_labels={num_labels} / num_domains={num_domains} disagree with label_names={labels} / "
            f"domain_names={domains}"
        )
    if target_domain is not None and target_domain not in domains:
        raise StudentConfigError(
            f"target_domain {target_domain!r} is not a domain of the data; known: {domains}"
        )
    return labels, domains
