"""Moved to :mod:`metakd.distill.layer_maps`; this name stays importable for existing code."""

from metakd.distill.layer_maps import *  # noqa: F403
from metakd.distill.layer_maps import (  # noqa: F401
    DEFAULT_LOSS,
    FEATURES,
    LayerMatch,
    RecipeError,
    build_projections,
    coerce_match,
    match_losses,
    needs_attentions,
    needs_hidden_states,
    uniform_layer_map,
    validate_matches,
)
