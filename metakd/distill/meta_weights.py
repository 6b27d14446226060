"""Meta-KD's instance weights ``w_i = (1 + t_i) * sigma_i`` (Pan et al. 2021) as a part any method can
use, and the method that puts them on a logit loss: ``meta_logit``, for students without token states
or attention maps (TextCNN, BiLSTM, pQRNN), whose intermediate stage cannot run.

``t_i`` is the meta-teacher's transferability of training example ``i`` (read once, by ``example_ids``:
:meth:`metakd.teachers.FrozenTeacher.transferability`), ``sigma_i = 1 / (1 + exp((1 - p_T(y_i |
x_i))^2))`` the teacher's domain expertise on it (:func:`metakd.distill.losses.domain_expertise`).

``meta_logit`` is Tang et al.'s logit distillation (``tang``: ``mse`` or ``soft_ce``, optional hard-label
CE with weight ``alpha``) with each example's loss multiplied by ``w_i``::

    L = (1/B) sum_i w_i [alpha CE(z_S,i, y_i) + (1 - alpha) l_KD(z_S,i, z_T,i)]

The paper weights only its intermediate stage (``meta`` with ``stage: prediction`` and
``prediction_weighting: true`` is the same weights on a soft CE at T = 1); putting them on the logit
loss is this method's deviation, stated in docs/METAKD.md.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from metakd.distill.base import Stage, StepContext, register_distiller
from metakd.distill.losses import domain_expertise, instance_weights
from metakd.distill.tang import TangKD
from metakd.errors import StudentConfigError
from metakd.prototypes import parse_transferability_scale, rescale_transferability


class MetaInstanceWeights:
    """``w_i = (1 + t_i) * sigma_i`` by ``example_ids``, with either factor switched off.

    Args:
        transferability: use the ``1 + t_i`` factor.
        expertise: use the ``sigma_i`` factor.
        scale: how t_i is rescaled over the training split before it enters ``1 + t_i`` (``none``,
            ``mean1``, ``temperature:<T>``: :func:`metakd.prototypes.rescale_transferability`).
    """

    def __init__(self, transferability: bool, expertise: bool, scale: str = "none") -> None:
        try:
            parse_transferability_scale(scale)
        except ValueError as err:
            raise StudentConfigError(f"distillation_options.{err}") from None
        self.use_transferability, self.use_expertise, self.scale = transferability, expertise, scale
        self.transferability: Tensor | None = None

    @property
    def active(self) -> bool:
        return self.use_transferability or self.use_expertise

    def setup(self, teacher: Any, datamodule: Any, device: Any = None) -> None:
        """Read t_i once (by ``example_ids``) when the t_i factor is on."""
        if self.use_transferability:
            t = rescale_transferability(teacher.transferability(datamodule), self.scale)
            self.transferability = t.to(device) if device is not None else t

    def __call__(self, step: StepContext) -> Tensor | None:
        """(B,) detached weights of the step's examples; None when both factors are off."""
        if not self.active:
            return None
        labels = step.batch["labels"]
        expertise = domain_expertise(step.teacher.logits, labels) if self.use_expertise else None
        if not self.use_transferability:
            return expertise
        if self.transferability is None:
            raise StudentConfigError("the Meta-KD weights' t_i were not read: call the method's setup first")
        t = self.transferability[step.batch["example_ids"]]
        if bool(t.isnan().any()):
            raise StudentConfigError("some training examples have no transferability score (NaN t_i)")
        if expertise is None:
            return (1.0 + t).detach()
        return instance_weights(t, expertise)


class MetaWeighted:
    """A method weighted by :class:`MetaInstanceWeights` (``self.weights``); ``transferability`` is the
    t_i it read (by ``example_ids``)."""

    weights: MetaInstanceWeights

    @property
    def transferability(self) -> Tensor | None:
        return self.weights.transferability

    @transferability.setter
    def transferability(self, value: Tensor | None) -> None:
        self.weights.transferability = value

    def instance_weights(self, step: StepContext) -> Tensor | None:
        return self.weights(step)


@register_distiller("meta_logit")
class MetaLogitKD(MetaWeighted, TangKD):
    """Tang et al.'s logit distillation weighted per instance by Meta-KD's ``w_i`` (module docstring).

    Options: those of ``tang`` (``objective``, ``hard_label_weight``, ``temperature``, ``t2_scaling``,
    ``prediction_lr``) and the weights' switches of ``meta`` (``instance_weighting`` for both factors,
    ``transferability_weights``, ``expertise_weights``, ``transferability_scale``). Needs a meta-teacher
    (its t_i); the benchmark pipeline distils it from the ``meta`` teacher.
    """

    label = "logit KD + Meta-KD instance weights"
    teacher_role = "meta"

    def __init__(
        self,
        objective: Literal["mse", "soft_ce"] = "mse",
        hard_label_weight: float = 0.0,
        temperature: float = 2.0,
        t2_scaling: bool = True,
        prediction_lr: float = 3e-5,
        instance_weighting: bool = True,
        transferability_weights: bool = True,
        expertise_weights: bool = True,
        transferability_scale: str = "none",
    ) -> None:
        super().__init__(objective, hard_label_weight, temperature, t2_scaling, prediction_lr)
        self.weights = MetaInstanceWeights(
            instance_weighting and transferability_weights,
            instance_weighting and expertise_weights,
            transferability_scale,
        )

    def stages(self) -> list[Stage]:
        stages = super().stages()
        for stage in stages:
            stage.weighted = True
        return stages

    def setup(self, teacher: Any, datamodule: Any, stages: list[Stage], device: Any = None) -> None:
        self.weights.setup(teacher, datamodule, device)
