"""Moved to :mod:`metakd.distill.losses`; this name stays importable for existing code."""

from metakd.distill.losses import *  # noqa: F403
from metakd.distill.losses import (  # noqa: F401
    FEATURE_LOSSES,
    FeatureLoss,
    attention_mse,
    domain_expertise,
    get_feature_loss,
    hidden_cosine,
    hidden_mse,
    instance_weights,
    register_feature_loss,
    soft_cross_entropy,
    transferable_mse,
    weighted_intermediate_loss,
)
