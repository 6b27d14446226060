"""The four methods of the Meta-KD paper's comparison (docs/METAKD.md): fine-tuning without a teacher,
vanilla KD, TinyBERT-KD and Meta-KD. Meta-KD is TinyBERT-KD plus per-instance weights and the
transferable-knowledge term."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from metakd.distill.base import Distiller, Stage, register_distiller
from metakd.distill.layer_maps import LayerMatch
from metakd.distill.meta_weights import MetaInstanceWeights, MetaWeighted
from metakd.distill.terms import AttentionScoreMatches, HardCE, LayerMatches, LogitKD, TransferableMSE
from metakd.errors import StudentConfigError


def prediction_stage(temperature: float, t2_scaling: bool, hard_label_weight: float, lr: float) -> Stage:
    """Soft-logit KD at temperature T (+ a hard-label CE term, always logged as ``train/loss_ce``)."""
    return Stage(
        "prediction",
        [LogitKD(1.0, temperature, t2_scaling), HardCE(hard_label_weight, monitor=True)],
        lr=lr,
    )


@register_distiller("none")
class NoKD(Distiller):
    """Fine-tuning on the gold labels, no teacher."""

    label = "fine-tune, no KD"
    teacher_role = None

    def __init__(self, prediction_lr: float = 3e-5) -> None:
        self.prediction_lr = prediction_lr

    def stages(self) -> list[Stage]:
        return [Stage("prediction", [HardCE(1.0)], lr=self.prediction_lr)]


@register_distiller("vanilla")
class VanillaKD(Distiller):
    """Hinton et al. 2015: the student's logits learn the teacher's softened distribution."""

    label = "vanilla KD"
    teacher_role = "mixed"

    def __init__(
        self,
        temperature: float = 1.0,
        t2_scaling: bool = False,
        hard_label_weight: float = 0.0,
        prediction_lr: float = 3e-5,
    ) -> None:
        self.temperature, self.t2_scaling = temperature, t2_scaling
        self.hard_label_weight, self.prediction_lr = hard_label_weight, prediction_lr

    def stages(self) -> list[Stage]:
        return [
            prediction_stage(self.temperature, self.t2_scaling, self.hard_label_weight, self.prediction_lr)
        ]


ATTENTION_FORMS = ("scores", "probabilities")
"""What an intermediate stage's attention matches compare: the unnormalised scores ``Q K^T / sqrt(d)``
(TinyBERT's paper and code) or the softmax probabilities HF returns (Meta-KD's code, EasyNLP)."""


@register_distiller("tinybert")
class TinyBERTKD(Distiller):
    """TinyBERT's task distillation (Jiao et al. 2020): the intermediate stage matches embeddings,
    hidden states and attention matrices through a layer map (uniform by default), then the prediction
    stage distils the logits.

    ``attention``: ``scores`` (default, the paper's eq. 3 and the authors' code: the attention matrices
    before the softmax, :class:`~metakd.distill.terms.AttentionScoreMatches`) or ``probabilities`` (the
    softmax maps HF returns, after attention dropout in training; the form before this option existed).
    """

    label = "TinyBERT-KD"
    teacher_role = "single"
    transferable_weight = 0.0  # Meta-KD switches the transferable-knowledge term on

    def __init__(
        self,
        matches: Sequence[LayerMatch | dict[str, Any]] | None = None,
        intermediate_epochs: int = 10,
        intermediate_lr: float = 5e-5,
        temperature: float = 1.0,
        t2_scaling: bool = False,
        hard_label_weight: float = 0.0,
        prediction_lr: float = 3e-5,
        attention: Literal["scores", "probabilities"] = "scores",
    ) -> None:
        if intermediate_epochs < 0:
            raise StudentConfigError(f"intermediate_epochs must be >= 0, got {intermediate_epochs}")
        if attention not in ATTENTION_FORMS:
            raise StudentConfigError(
                f"distillation_options.attention must be one of {list(ATTENTION_FORMS)}, got {attention!r}"
            )
        self.attention = attention
        self.matches = matches
        self.intermediate_epochs, self.intermediate_lr = intermediate_epochs, intermediate_lr
        self.temperature, self.t2_scaling = temperature, t2_scaling
        self.hard_label_weight, self.prediction_lr = hard_label_weight, prediction_lr

    def intermediate_stage(self) -> Stage:
        return Stage(
            "intermediate",
            [
                LayerMatches(self.matches, "hidden"),
                AttentionScoreMatches(self.matches)
                if self.attention == "scores"
                else LayerMatches(self.matches, "attention"),
                TransferableMSE(self.transferable_weight),
            ],
            epochs=self.intermediate_epochs,
            lr=self.intermediate_lr,
            weighted=True,
            selects_model=False,  # the classifier is not trained in this stage
        )

    def stages(self) -> list[Stage]:
        return [
            self.intermediate_stage(),
            prediction_stage(self.temperature, self.t2_scaling, self.hard_label_weight, self.prediction_lr),
        ]


@register_distiller("meta")
class MetaKD(MetaWeighted, TinyBERTKD):
    """Meta-distillation (Pan et al. 2021): TinyBERT-KD's stages, the intermediate one weighted per
    instance by ``w_i = (1 + t_i) * sigma_i`` (transferability from the meta-teacher's prototypes times
    the teacher's domain expertise) and with the transferable-knowledge term ``lambda_tk * L_tk``.

    Switches (ablations of one objective): ``instance_weighting`` (both factors),
    ``transferability_weights`` (the ``1 + t_i`` factor), ``expertise_weights`` (the ``sigma_i``
    factor), ``use_transferable`` (the ``L_tk`` term), and ``transferability_scale`` (t_i rescaled over the
    training split before it enters ``1 + t_i``: ``none``, ``mean1`` or ``temperature:<T>``, as the
    MetaTeacher option of that name; ``metakd.prototypes.rescale_transferability``).
    ``prediction_weighting`` (off in the paper) weights the prediction stage by the same ``w_i``: with
    ``stage: prediction`` it is Meta-KD for a student without token states or attention maps (BiLSTM,
    TextCNN, pQRNN), whose intermediate stage cannot run; ``meta_logit``
    (:mod:`metakd.distill.meta_weights`) puts the same weights on Tang et al.'s logit losses.

    ``attention`` defaults to ``probabilities``: the authors' code (EasyNLP) compares the softmax maps its
    BERT returns (its TinyBERT-style zeroing of scores <= -100 never fires on probabilities);
    ``scores`` gives TinyBERT's form.
    """

    label = "Meta-KD"
    teacher_role = "meta"

    def __init__(
        self,
        matches: Sequence[LayerMatch | dict[str, Any]] | None = None,
        intermediate_epochs: int = 10,
        intermediate_lr: float = 5e-5,
        temperature: float = 1.0,
        t2_scaling: bool = False,
        hard_label_weight: float = 0.0,
        prediction_lr: float = 3e-5,
        lambda_tk: float = 0.5,
        instance_weighting: bool = True,
        use_transferable: bool = True,
        transferability_weights: bool = True,
        expertise_weights: bool = True,
        transferability_scale: str = "none",
        prediction_weighting: bool = False,
        attention: Literal["scores", "probabilities"] = "probabilities",
    ) -> None:
        super().__init__(
            matches,
            intermediate_epochs,
            intermediate_lr,
            temperature,
            t2_scaling,
            hard_label_weight,
            prediction_lr,
            attention,
        )
        if lambda_tk < 0:
            raise StudentConfigError(f"lambda_tk must be >= 0, got {lambda_tk}")
        self.transferable_weight = lambda_tk if use_transferable else 0.0
        self.weights = MetaInstanceWeights(
            instance_weighting and transferability_weights,
            instance_weighting and expertise_weights,
            transferability_scale,
        )
        self.prediction_weighting = prediction_weighting

    def stages(self) -> list[Stage]:
        stages = super().stages()
        stages[-1].weighted = self.prediction_weighting
        return stages

    def setup(self, teacher: Any, datamodule: Any, stages: list[Stage], device: Any = None) -> None:
        """Read t_i once (by ``example_ids``) when a weighted stage will run."""
        if any(stage.weighted for stage in stages):
            self.weights.setup(teacher, datamodule, device)
