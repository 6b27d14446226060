"""FastBERT, self-distillation with adaptive inference (Liu et al., ACL 2020, arXiv 2004.02178).

No teacher: the model distils itself. Two stages on an early-exit student (``metakd/students/
early_exit.py``: a branch classifier after every layer):

1. ``finetune`` (``finetune_epochs``): the backbone and the final classifier on the gold labels
   (cross-entropy); the branches are frozen. Its epochs are not selected on ``val/acc`` (logged as 0;
   the real value is ``val/stage1_acc``): the model that is kept has trained branches.
2. ``self_distillation`` (the rest of the run): the branches learn the final classifier, the backbone and
   the final classifier frozen:

       L_i = sum_{m=1}^{L-1} KL(p_L,i || p_m,i),   p_m = softmax(branch m's logits),

   with p_L (the final classifier's) a constant. It needs no labels (the paper uses unlabeled data too).

Learning rates: ``prediction_lr`` for fine-tuning, ``distill_lr`` for the branches (default 10 x
``prediction_lr``, as the authors' code). Inference exits each sample at the first branch whose
normalised entropy is below the student's ``speed``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metakd.distill.base import DistillContext, Distiller, LossTerm, Stage, StepContext, register_distiller
from metakd.distill.terms import HardCE
from metakd.errors import StudentConfigError


class BranchSelfDistillation(LossTerm):
    """``sum_{m<L} KL(p_L || p_m)`` per instance over the student's ``exit_logits`` (the final
    classifier's distribution p_L is detached: the branches learn it, it does not learn them)."""

    name = "self_distill"
    student_needs = frozenset({"exit_logits"})

    def __call__(self, step: StepContext) -> Tensor:
        *branches, final = step.student.exit_logits
        log_target = F.log_softmax(final.detach().float(), dim=-1)
        target = log_target.exp()
        total = final.new_zeros(final.shape[0], dtype=log_target.dtype)
        for logits in branches:
            total = total + (target * (log_target - F.log_softmax(logits.float(), dim=-1))).sum(dim=-1)
        return total


@register_distiller("fastbert")
class FastBERT(Distiller):
    """FastBERT (see the module docstring)."""

    label = "FastBERT"
    teacher_role = None

    def __init__(
        self, finetune_epochs: int = 2, prediction_lr: float = 3e-5, distill_lr: float | None = None
    ) -> None:
        key = "model.init_args.distillation_options"
        if not isinstance(finetune_epochs, int) or finetune_epochs < 1:
            raise StudentConfigError(
                f"{key}.finetune_epochs must be an integer >= 1, got {finetune_epochs!r}"
            )
        if distill_lr is not None and distill_lr <= 0:
            raise StudentConfigError(f"{key}.distill_lr must be > 0, got {distill_lr!r}")
        self.finetune_epochs, self.prediction_lr = finetune_epochs, prediction_lr
        self.distill_lr = 10.0 * prediction_lr if distill_lr is None else distill_lr

    def stages(self) -> list[Stage]:
        return [
            Stage(
                "finetune",
                [HardCE()],
                epochs=self.finetune_epochs,
                lr=self.prediction_lr,
                selects_model=False,
                trains=frozenset({"backbone", "classifier"}),
            ),
            Stage(
                "self_distillation",
                [BranchSelfDistillation()],
                lr=self.distill_lr,
                trains=frozenset({"branches"}),
            ),
        ]

    def check(self, context: DistillContext) -> None:
        if context.student.num_layers is not None and context.student.num_layers < 2:
            raise StudentConfigError(
                "distillation='fastbert' needs a student with at least 2 layers (a branch after each but "
                f"the last); {type(context.student).__name__} has {context.student.num_layers}"
            )
