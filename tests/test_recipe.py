"""The distillation recipe: uniform map, validation, projections, YAML parsing."""

from __future__ import annotations

import pytest
import torch

from metakd.distill.layer_maps import (
    LayerMatch,
    RecipeError,
    build_projections,
    match_losses,
    uniform_layer_map,
    validate_matches,
)


def _pairs(matches: list[LayerMatch], feature: str) -> list[tuple[int, int]]:
    return [(m.teacher_layer, m.student_layer) for m in matches if m.feature == feature]


def test_uniform_layer_map_tinybert_rule() -> None:
    matches = uniform_layer_map(12, 4)
    assert _pairs(matches, "embeddings") == [(0, 0)]
    assert _pairs(matches, "hidden") == [(3, 1), (6, 2), (9, 3), (12, 4)]
    assert _pairs(matches, "attention") == [(3, 1), (6, 2), (9, 3), (12, 4)]
    assert {m.loss for m in matches if m.feature == "attention"} == {"attention_mse"}
    assert _pairs(uniform_layer_map(6, 4), "hidden") == [(1, 1), (3, 2), (4, 3), (6, 4)]
    assert _pairs(uniform_layer_map(2, 4), "hidden") == [(1, 1), (1, 2), (1, 3), (2, 4)]
    assert _pairs(uniform_layer_map(6, 2, attention=False), "attention") == []


def test_validate_accepts_dicts_and_rejects_out_of_range_with_clear_error() -> None:
    ok = validate_matches([{"teacher_layer": 6, "student_layer": 2, "feature": "hidden"}], 6, 2)
    assert ok == [LayerMatch(6, 2, "hidden", "hidden_mse")]
    with pytest.raises(RecipeError, match=r"matches\[1\].*teacher_layer=7.*valid teacher_layer is 0\.\.6"):
        validate_matches([LayerMatch(0, 0, "embeddings"), LayerMatch(7, 1, "hidden")], 6, 2)
    with pytest.raises(RecipeError, match=r"student_layer=0.*valid student_layer is 1\.\.2"):
        validate_matches([LayerMatch(1, 0, "attention")], 6, 2)
    with pytest.raises(RecipeError, match="unknown distillation loss 'l3'"):
        validate_matches([LayerMatch(1, 1, "hidden", "l3")], 6, 2)
    with pytest.raises(RecipeError, match="unknown keys"):
        validate_matches([{"teacher_layer": 1, "student_layer": 1, "layer_T": 2}], 6, 2)
    with pytest.raises(RecipeError, match="feature must be one of"):
        LayerMatch(1, 1, "logits")  # type: ignore[arg-type]


def test_projections_only_when_widths_differ_and_losses_are_per_instance() -> None:
    matches = uniform_layer_map(2, 1)
    assert len(build_projections(matches, 8, 8)) == 0
    projections = build_projections(matches, 4, 8)
    assert sorted(projections) == ["embeddings_t0_s0", "hidden_t2_s1"]
    assert projections["hidden_t2_s1"].in_features == 4 and projections["hidden_t2_s1"].out_features == 8
    batch, length = 3, 5
    student_hidden = [torch.randn(batch, length, 4) for _ in range(2)]
    teacher_hidden = [torch.randn(batch, length, 8) for _ in range(3)]
    student_att = [torch.softmax(torch.randn(batch, 2, length, length), -1)]
    teacher_att = [torch.softmax(torch.randn(batch, 4, length, length), -1) for _ in range(2)]
    mask = torch.ones(batch, length, dtype=torch.long)
    hidden, attention = match_losses(
        matches, student_hidden, student_att, teacher_hidden, teacher_att, mask, projections
    )
    assert hidden.shape == attention.shape == (batch,)
    assert (hidden > 0).all() and (attention > 0).all()


def test_jsonargparse_parses_a_list_of_matches_from_yaml() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--matches", type=list[LayerMatch] | None, default=None)
    yaml = (
        "matches:\n"
        "  - {teacher_layer: 0, student_layer: 0, feature: embeddings}\n"
        "  - {teacher_layer: 6, student_layer: 2, feature: attention, loss: attention_mse, weight: 2.0}\n"
    )
    config = parser.parse_string(yaml)
    matches = parser.instantiate_classes(config).matches
    assert matches[1] == LayerMatch(6, 2, "attention", "attention_mse", 2.0)
    assert matches[0].loss == "hidden_mse"


def test_a_loss_that_is_not_per_instance_is_rejected() -> None:
    from metakd.distill import losses as distill_losses

    @distill_losses.register_feature_loss("test_per_token")
    def per_token(
        student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return (student - teacher).pow(2).mean(-1)  # (B, T): wrong

    try:
        states = [torch.randn(2, 3, 4) for _ in range(2)]
        with pytest.raises(RecipeError, match=r"'test_per_token'.*shape \(2, 3\).*shape \(2,\)"):
            match_losses(
                [LayerMatch(1, 1, "hidden", "test_per_token")],
                states,
                None,
                states,
                None,
                torch.ones(2, 3),
                build_projections([], 4, 4),
            )
    finally:
        del distill_losses.FEATURE_LOSSES["test_per_token"]
