"""Evaluation of a model that serves one target domain (the :class:`~metakd.student.Student`): dev, test
and predict steps on that domain's rows of a multi-domain batch, accuracy metrics, and the per-example
outputs of ``test_step`` (what the pipeline's ``PredictionsWriter`` saves).

The host is a ``LightningModule`` with ``self.model.predict_logits(input_ids, attention_mask,
token_type_ids)`` and ``self.hparams.target_domain``; it calls :meth:`init_evaluation` in its constructor
and logs ``val/acc`` itself (model selection may depend on its training stage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from metakd.errors import StudentConfigError


class TargetDomainEvaluation:
    """Mixin: the evaluation steps of a per-domain model (module docstring)."""

    def init_evaluation(self, num_labels: int, target_domain: str | None, domain_names: list[str]) -> None:
        self.target_index = None if target_domain is None else domain_names.index(target_domain)
        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")

    def _evaluate(
        self, batch: dict[str, Tensor], metric: MulticlassAccuracy, prefix: str
    ) -> dict[str, Tensor] | None:
        rows = torch.ones_like(batch["labels"], dtype=torch.bool)
        if self.target_index is not None:
            rows = batch["domain_ids"] == self.target_index
        if not bool(rows.any()):
            return None
        logits = self.model.predict_logits(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        )
        logits, labels = logits[rows], batch["labels"][rows]
        metric.update(logits, labels)
        self.log(f"{prefix}/loss", F.cross_entropy(logits.float(), labels), batch_size=int(rows.sum()),
                 sync_dist=True)  # fmt: skip
        return {"example_ids": batch["example_ids"][rows], "domain_ids": batch["domain_ids"][rows],
                "labels": labels, "logits": logits.detach()}  # fmt: skip

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor] | None:
        """Returns the evaluated rows' ``example_ids``, ``domain_ids``, ``labels`` and ``logits``."""
        return self._evaluate(batch, self.test_acc, "test")

    def on_test_epoch_end(self) -> None:
        accuracy = self._compute(self.test_acc, "test")
        self.log("test/acc", accuracy)
        self._log_target_domain_metric("test", accuracy)

    def _log_target_domain_metric(self, split: str, accuracy: Tensor) -> None:
        # The teacher's per-domain name (`<split>/acc_<domain>`) for the one domain a student serves.
        if self.hparams.target_domain is not None:
            self.log(f"{split}/acc_{self.hparams.target_domain}", accuracy)

    def _compute(self, metric: MulticlassAccuracy, split: str) -> Tensor:
        if not metric.update_called:
            raise StudentConfigError(
                f"the {split} set has no example of the target domain {self.hparams.target_domain!r}"
            )
        value = metric.compute()
        metric.reset()
        return value

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, C)."""
        logits = self.model.predict_logits(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        )
        return torch.softmax(logits.float(), dim=-1)
