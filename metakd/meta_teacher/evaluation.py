"""The teacher's dev, test and predict steps: accuracy over all domains and per domain.

``val/acc`` and ``test/acc`` over every domain of the batch, ``val/acc_<domain>`` for each domain with
examples, ``val/loss``; ``test_step`` returns each row's outputs for
:class:`metakd.pipeline.PredictionsWriter`. A mixin of :class:`metakd.teacher.MetaTeacher` (as
:class:`metakd.evaluation.TargetDomainEvaluation` is of the Student): it reads the module's ``_run``,
``domain_names`` and ``log``.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from metakd.losses import per_instance_cross_entropy


class PerDomainAccuracy(torchmetrics.Metric):
    """Accuracy per domain; NaN for a domain without examples (DDP-safe: sums of counts)."""

    full_state_update = False

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros(num_domains), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_domains), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, domain_ids: Tensor) -> None:
        self.correct.index_add_(0, domain_ids, (preds == target).float())
        self.total.index_add_(0, domain_ids, torch.ones_like(domain_ids, dtype=torch.float))

    def compute(self) -> Tensor:
        return torch.where(self.total > 0, self.correct / self.total.clamp_min(1), torch.nan)


class TeacherEvaluation:
    """Dev/test/predict steps of a teacher over all domains (see the module docstring)."""

    domain_names: list[str]

    def init_evaluation(self, num_labels: int, num_domains: int) -> None:
        """Create the metrics (``train_acc`` is the training step's)."""
        self.train_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_domain_acc = PerDomainAccuracy(num_domains)
        self.test_domain_acc = PerDomainAccuracy(num_domains)

    def _evaluate(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """Update the split's metrics with one batch; returns the logits."""
        out = self._run(batch)
        preds = out.logits.argmax(-1)
        labels = batch["labels"]
        accuracy = self.val_acc if split == "val" else self.test_acc
        per_domain = self.val_domain_acc if split == "val" else self.test_domain_acc
        accuracy.update(preds, labels)
        per_domain.update(preds, labels, batch["domain_ids"])
        loss = per_instance_cross_entropy(out.logits, labels).mean()
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=labels.shape[0], sync_dist=True)
        self.log(f"{split}/acc", accuracy, on_epoch=True, batch_size=labels.shape[0])
        return out.logits

    def _log_domain_accuracy(self, split: str) -> None:
        metric = self.val_domain_acc if split == "val" else self.test_domain_acc
        values = metric.compute().reshape(-1)  # torchmetrics squeezes a one-domain result to 0-d
        metric.reset()
        for name, value in zip(self.domain_names, values):
            if torch.isfinite(value):
                self.log(f"{split}/acc_{name}", value)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_domain_accuracy("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Test metrics of one batch; returns the rows' ``example_ids``, ``domain_ids``, ``labels`` and
        ``logits`` (what :class:`metakd.pipeline.PredictionsWriter` saves per example)."""
        logits = self._evaluate(batch, "test")
        return {
            "example_ids": batch["example_ids"],
            "domain_ids": batch["domain_ids"],
            "labels": batch["labels"],
            "logits": logits.detach(),
        }

    def on_test_epoch_end(self) -> None:
        self._log_domain_accuracy("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = self._run(batch)
        return {
            "example_ids": batch["example_ids"],
            "domain_ids": batch["domain_ids"],
            "probs": out.logits.softmax(-1),
        }
