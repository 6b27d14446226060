"""The meta look-ahead's parameter scopes (``metakd/weighting/scopes.py``): all, the heads, the heads
and the last k encoder layers."""

from __future__ import annotations

import pytest
from helpers import tiny_encoder_config
from torch import nn

from metakd.errors import ConfigError
from metakd.weighting.scopes import encoder_layers, meta_parameter_names, scoped_parameters


class Network(nn.Module):
    """A 3-layer encoder with a head on it (the layout of the teacher networks)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig

        config = BertConfig(**tiny_encoder_config(vocab_size=50, num_hidden_layers=3))
        self.encoder = AutoModel.from_config(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 2)


def test_scopes_name_their_parameters() -> None:
    network = Network()
    network.encoder.embeddings.requires_grad_(False)  # frozen parameters are never in a scope
    assert meta_parameter_names(network, "all") is None
    assert meta_parameter_names(network, "head") == ["head.weight", "head.bias"]
    assert encoder_layers(network.encoder) == ("encoder.layer", 3)
    last = meta_parameter_names(network, "last_k", 1)
    assert last[:2] == ["head.weight", "head.bias"] and len(last) > 2
    assert all(name.startswith("encoder.encoder.layer.2.") for name in last[2:])
    layer2 = {n for n, _ in network.named_parameters() if n.startswith("encoder.encoder.layer.2.")}
    assert set(last[2:]) == layer2
    two = meta_parameter_names(network, "last_k", 2)
    assert {n.split(".")[3] for n in two[2:]} == {"1", "2"}
    for k in (0, 4):
        with pytest.raises(
            ConfigError, match=f"meta_last_k must be between 1 and the encoder's 3 layers, got {k}"
        ):
            meta_parameter_names(network, "last_k", k)


def test_last_k_needs_a_layer_stack() -> None:
    network = nn.Module()
    network.encoder = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="meta_params 'last_k' needs the encoder's layer stack"):
        meta_parameter_names(network, "last_k", 1)


def test_scoped_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)
    assert list(scoped_parameters(model, None)) == ["0.weight", "1.weight", "1.bias"]
    assert list(scoped_parameters(model, ["1.bias"])) == ["1.bias"]
    with pytest.raises(ValueError, match=r"param_names \['0.bias'\] are not trainable parameters"):
        scoped_parameters(model, ["0.bias"])
    with pytest.raises(ValueError, match="no trainable parameters to move"):
        scoped_parameters(model, [])
