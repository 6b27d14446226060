"""Parameter scopes of the meta look-ahead (``meta_params``): which parameters it moves.

- ``all``: every trainable parameter (the exact look-ahead);
- ``head``: the heads on the encoder: the trainable parameters outside the network's ``encoder``;
- ``last_k``: the heads and the encoder's last ``k`` layers.

The dot products of the meta-gradient then run over the scope only; with the ``jvp`` engine the layers
below it run without autograd or tangents, so a smaller scope is cheaper, and its weights approximate
the full ones (``benchmarks/speed.py`` measures their correlation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from metakd.errors import ConfigError

MetaParams = Literal["all", "head", "last_k"]


def encoder_layers(encoder: nn.Module) -> tuple[str, int]:
    """(module path, count) of the encoder's stack of layers: the ``nn.ModuleList`` with
    ``config.num_hidden_layers`` entries (``encoder.layer`` in BERT)."""
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, count
    raise ConfigError(
        "model.init_args.meta_params 'last_k' needs the encoder's layer stack (a ModuleList of "
        f"config.num_hidden_layers={count} layers); {type(encoder).__name__} has none. Use meta_params "
        "'all' or 'head'."
    )


def meta_parameter_names(network: nn.Module, scope: MetaParams, last_k: int = 1) -> list[str] | None:
    """The names (``network.named_parameters()``) of the parameters of ``scope`` for a network whose
    encoder is its ``encoder`` submodule; None for ``all`` (every trainable one)."""
    if scope == "all":
        return None
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    names = [name for name in trainable if not name.startswith("encoder.")]
    if scope == "last_k":
        prefix, count = encoder_layers(network.encoder)
        if not 1 <= last_k <= count:
            raise ConfigError(
                f"model.init_args.meta_last_k must be between 1 and the encoder's {count} layers, "
                f"got {last_k}"
            )
        layers = tuple(f"encoder.{prefix}.{i}." for i in range(count - last_k, count))
        names += [name for name in trainable if name.startswith(layers)]
    return names


def scoped_parameters(model: nn.Module, param_names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    """The trainable parameters named ``param_names`` (all trainable ones when None), by name; unknown or
    frozen names and an empty scope are errors."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if param_names is None:
        chosen = trainable
    else:
        unknown = [name for name in param_names if name not in trainable]
        if unknown:
            raise ValueError(
                f"param_names {unknown} are not trainable parameters of the model "
                f"(it has {len(trainable)}, e.g. {list(trainable)[:3]})"
            )
        chosen = {name: trainable[name] for name in param_names}
    if not chosen:
        raise ValueError("the meta look-ahead has no trainable parameters to move")
    return chosen
