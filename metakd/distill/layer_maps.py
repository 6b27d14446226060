"""Layer maps as data: which student layer learns from which teacher layer, and how.

A recipe is a list of :class:`LayerMatch` (TextBrewer style). In YAML (``model.matches``)::

    matches:
      - {teacher_layer: 0, student_layer: 0, feature: embeddings, loss: hidden_mse}
      - {teacher_layer: 3, student_layer: 1, feature: hidden, loss: hidden_mse}
      - {teacher_layer: 3, student_layer: 1, feature: attention, loss: attention_mse, weight: 1.0}

Layer indices follow the HuggingFace ``hidden_states`` convention: ``0`` is the embedding output,
``m`` (1..L) the output of layer ``m``. For ``attention``, ``m`` (1..L) is the attention map of
layer ``m`` (``attentions[m - 1]``). ``embeddings`` is a synonym of ``hidden`` at layer 0.

Per instance, ``L_hid,i = sum_{hidden/embeddings matches} weight * loss_i`` and
``L_att,i = sum_{attention matches} weight * loss_i`` (sums over layers, as TinyBERT).
When the hidden sizes differ, each hidden match has its own learned ``nn.Linear(d_S, d_T)``
projection of the student's states (:func:`build_projections`), trained with the student.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metakd.distill.losses import get_feature_loss
from metakd.errors import MetakdError

Feature = Literal["embeddings", "hidden", "attention"]
FEATURES: tuple[str, ...] = ("embeddings", "hidden", "attention")
DEFAULT_LOSS: dict[str, str] = {
    "embeddings": "hidden_mse",
    "hidden": "hidden_mse",
    "attention": "attention_mse",
}


class RecipeError(MetakdError, ValueError):
    """An invalid layer match in a distillation recipe."""


@dataclass
class LayerMatch:
    """One distillation term: student ``feature`` at ``student_layer`` learns teacher's at ``teacher_layer``.

    Args:
        teacher_layer: teacher layer index (0 = embedding output for hidden features; 1..L_T).
        student_layer: student layer index (same convention, 0..L_S).
        feature: ``"embeddings"`` (layer 0), ``"hidden"`` (token states) or ``"attention"`` (maps).
        loss: name of a per-instance feature loss in ``metakd.distill.losses.FEATURE_LOSSES``
            (None: ``hidden_mse`` for token states, ``attention_mse`` for attention maps).
        weight: multiplier of this term in ``L_hid`` / ``L_att``.
    """

    teacher_layer: int
    student_layer: int
    feature: Feature = "hidden"
    loss: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.feature not in FEATURES:
            raise RecipeError(f"{self}: feature must be one of {FEATURES}, got {self.feature!r}")
        if self.loss is None:
            self.loss = DEFAULT_LOSS[self.feature]
        for name in ("teacher_layer", "student_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RecipeError(f"{self}: {name} must be an integer, got {value!r}")

    @property
    def is_hidden(self) -> bool:
        """True for token-state matches (``hidden`` and ``embeddings``)."""
        return self.feature in ("hidden", "embeddings")

    @property
    def key(self) -> str:
        """A stable name for this match (used for its projection and in logs)."""
        return f"{self.feature}_t{self.teacher_layer}_s{self.student_layer}"


def uniform_layer_map(
    n_teacher_layers: int,
    n_student_layers: int,
    hidden_loss: str = "hidden_mse",
    attention_loss: str = "attention_mse",
    attention: bool = True,
) -> list[LayerMatch]:
    """The uniform (TinyBERT / Meta-KD) map: student layer m learns teacher layer ``m * L_T / L_S``.

    Embeddings (m = 0), hidden states for m = 1..L_S and, if ``attention``, attention maps for
    m = 1..L_S. When ``L_T`` is not a multiple of ``L_S`` the teacher layer is rounded down
    (and kept >= 1, so a student deeper than its teacher repeats teacher layers).
    """
    check_depths(n_teacher_layers, n_student_layers)
    matches = [LayerMatch(0, 0, "embeddings", hidden_loss)]
    for m in range(1, n_student_layers + 1):
        n = max(1, m * n_teacher_layers // n_student_layers)
        matches.append(LayerMatch(n, m, "hidden", hidden_loss))
        if attention:
            matches.append(LayerMatch(n, m, "attention", attention_loss))
    return matches


def check_depths(n_teacher_layers: int, n_student_layers: int) -> None:
    """Both models need at least one layer for a layer map."""
    if n_teacher_layers < 1 or n_student_layers < 1:
        raise RecipeError(
            f"layer counts must be >= 1, got teacher {n_teacher_layers}, student {n_student_layers}"
        )


def _layer_range(feature: str, n_layers: int) -> tuple[int, int]:
    if feature == "embeddings":
        return 0, 0
    if feature == "hidden":
        return 0, n_layers
    return 1, n_layers


def coerce_match(match: LayerMatch | Mapping[str, Any]) -> LayerMatch:
    """Accept a :class:`LayerMatch` or a plain dict (from YAML) and return a :class:`LayerMatch`."""
    if isinstance(match, LayerMatch):
        return match
    if isinstance(match, Mapping):
        known = {f.name for f in fields(LayerMatch)}
        unknown = sorted(set(match) - known)
        if unknown:
            raise RecipeError(f"layer match {dict(match)} has unknown keys {unknown}; known: {sorted(known)}")
        try:
            return LayerMatch(**match)
        except TypeError as err:
            raise RecipeError(f"layer match {dict(match)}: {err}") from err
    raise RecipeError(f"a layer match must be a LayerMatch or a dict, got {type(match).__name__}: {match!r}")


def validate_matches(
    matches: Iterable[LayerMatch | Mapping[str, Any]], n_teacher_layers: int, n_student_layers: int
) -> list[LayerMatch]:
    """Check every match against the two models' depths and the loss registry.

    Raises :class:`RecipeError` naming the offending match (its position and content) and the
    valid range of the index that is out of range.
    """
    checked: list[LayerMatch] = []
    for position, raw in enumerate(matches):
        match = coerce_match(raw)
        where = f"matches[{position}] = {asdict(match)}"
        for side, index, depth in (
            ("teacher_layer", match.teacher_layer, n_teacher_layers),
            ("student_layer", match.student_layer, n_student_layers),
        ):
            low, high = _layer_range(match.feature, depth)
            if not low <= index <= high:
                model = side.split("_")[0]
                raise RecipeError(
                    f"{where}: {side}={index} is out of range for feature {match.feature!r}; the "
                    f"{model} has {depth} layers, valid {side} is {low}..{high}"
                    + (" (0 = embedding output)" if match.feature == "hidden" else "")
                )
        try:
            get_feature_loss(match.loss)
        except KeyError as err:
            raise RecipeError(f"{where}: {err.args[0]}") from None
        checked.append(match)
    if not checked:
        raise RecipeError("the distillation recipe is empty; give at least one layer match or None (uniform)")
    return checked


def build_projections(
    matches: Sequence[LayerMatch], student_hidden: int, teacher_hidden: int
) -> nn.ModuleDict:
    """One ``nn.Linear(d_S, d_T)`` per hidden match when the widths differ (empty dict otherwise)."""
    projections = nn.ModuleDict()
    if student_hidden != teacher_hidden:
        for match in matches:
            if match.is_hidden and match.key not in projections:
                projections[match.key] = nn.Linear(student_hidden, teacher_hidden)
    return projections


def match_losses(
    matches: Sequence[LayerMatch],
    student_hidden_states: Sequence[Tensor] | None,
    student_attentions: Sequence[Tensor] | None,
    teacher_hidden_states: Sequence[Tensor] | None,
    teacher_attentions: Sequence[Tensor] | None,
    attention_mask: Tensor,
    projections: nn.ModuleDict,
) -> tuple[Tensor, Tensor]:
    """Per-instance ``(L_hid, L_att)``, each (B,), summed over the recipe's matches with their weights."""
    batch = attention_mask.shape[0]
    reference = next(
        t for t in (*(student_hidden_states or ()), *(student_attentions or ())) if t is not None
    )
    hidden = reference.new_zeros(batch, dtype=torch.float32)
    attention = reference.new_zeros(batch, dtype=torch.float32)

    def checked(match: LayerMatch, value: Tensor) -> Tensor:
        if value.shape != (batch,):
            raise RecipeError(
                f"loss {match.loss!r} of {match.key} returned shape {tuple(value.shape)}; a feature loss "
                f"must return one value per instance, shape ({batch},)"
            )
        return match.weight * value

    for match in matches:
        loss = get_feature_loss(match.loss)
        if match.is_hidden:
            student = student_hidden_states[match.student_layer]
            if match.key in projections:
                student = projections[match.key](student)
            teacher = teacher_hidden_states[match.teacher_layer]
            hidden = hidden + checked(match, loss(student.float(), teacher.float(), attention_mask))
        else:
            student = student_attentions[match.student_layer - 1]
            teacher = teacher_attentions[match.teacher_layer - 1]
            attention = attention + checked(match, loss(student.float(), teacher.float(), attention_mask))
    return hidden, attention


def needs_attentions(matches: Sequence[LayerMatch]) -> bool:
    """Whether any match reads attention maps (the models must then run with eager attention)."""
    return any(match.feature == "attention" for match in matches)


def needs_hidden_states(matches: Sequence[LayerMatch]) -> bool:
    """Whether any match reads token states."""
    return any(match.is_hidden for match in matches)
