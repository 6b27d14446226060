"""Backbone names: the offline alias, pass-through of any other name, and the errors a user sees."""

from __future__ import annotations

import pytest

from metakd import backbones as B


def test_alias_resolves_to_the_shipped_model_directory() -> None:
    path = B.resolve_backbone("minilm-l6")
    config = B.load_config("minilm-l6")
    assert path.endswith("model") and config.num_hidden_layers == 6 and config.hidden_size == 384


def test_other_names_pass_through_unchanged(tmp_path) -> None:
    assert B.resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    assert B.resolve_backbone(str(tmp_path)) == str(tmp_path)


def test_missing_alias_package_names_the_pip_command(monkeypatch) -> None:
    monkeypatch.setitem(
        B.BACKBONE_ALIASES,
        "gone",
        B.BackboneAlias(module="no_such_pkg_xyz", pip_install="pip install no-such-pkg", description="x"),
    )
    with pytest.raises(B.BackboneError, match="install it with: pip install no-such-pkg"):
        B.resolve_backbone("gone")


def test_unloadable_name_says_offline_and_lists_the_aliases(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(B.BackboneError) as info:
        B.load_tokenizer(str(tmp_path / "not-a-model"))
    message = str(info.value)
    assert "offline" in message and "Known offline aliases: minilm-l6" in message
    with pytest.raises(B.BackboneError, match="non-empty string"):
        B.resolve_backbone("")


def test_position_limit_is_the_longest_input_an_encoder_reads() -> None:
    from transformers import BertConfig, RobertaConfig

    assert B.position_limit(BertConfig(max_position_embeddings=512)) == 512
    # RoBERTa numbers positions from pad_token_id + 1: 514 embeddings hold 512 tokens
    assert B.position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert B.position_limit(object()) is None
    assert B.backbone_position_limit("minilm-l6") == 512


def test_a_backbone_without_a_model_config_has_no_known_limit(tiny_tokenizer_dir: str) -> None:
    assert B.backbone_position_limit(tiny_tokenizer_dir) is None
