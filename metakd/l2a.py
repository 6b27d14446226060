"""L2A's reinforced selector (learning to augment, Feng et al. AAAI 2021) as a Lightning callback.

The candidates are the datamodule's augmented training examples (``data.init_args.augment``, e.g.
:class:`datamodules.l2a.L2ACandidates`). Training runs in *rounds*, one per epoch. Before each round a
policy selects a subset of the candidates, and the student trains that epoch on the target data plus
that subset (``datamodule.select_augmented``), labelled by the teacher through the method's own KD terms.
After the round, the reward updates the policy by REINFORCE with a baseline. This is a callback, not a
method: it composes with any method and student (the ``Student`` stays the wiring).

What we chose (the paper's exact features and reward are not known here):

- **policy**: independent Bernoulli choices, ``pi(a_i = 1 | f_i) = sigmoid(theta . z_i + b)``. z_i holds
  the candidate's features standardised over the candidates: the teacher's confidence
  ``max_c p_T(c | x_i)``, whether the teacher agrees with the kept label, the meta-teacher's t_i of
  its source example, the cosine to the target prototype, source (1) or target (0) candidate, and
  the number of domain words replaced. The bias starts at ``logit(select_fraction)`` and theta at 0, so
  the first round is a uniform random subset of the expected size.
- **reward**: the change of the student's accuracy on the target DEV split over the round,
  ``r_t = acc_t - acc_(t-1)`` (never test). Only rounds of a stage that trains the classifier count; the
  first such round has no earlier accuracy and only starts the baseline.
- **update**: ``theta <- theta + lr * (r_t - b_t) * mean_i grad log pi(a_i | z_i)``, with
  ``grad log pi = (a_i - pi_i) z_i`` for the logistic policy, and the baseline ``b`` an exponential moving
  average of the rewards (``baseline_momentum``). The mean over candidates keeps the step independent of
  how many candidates there are.
- ``learn: false`` keeps the initial policy: a fresh uniform random subset each round (the ablation
  "random selection instead of the learned selector").

Use it with ``trainer.callbacks: [{class_path: metakd.l2a.L2ASelector, init_args: {...}}]``; it sets
``trainer.reload_dataloaders_every_n_epochs = 1`` so each round's subset is loaded. ``history`` keeps
each round's selection size, accuracy, reward and weights; it is also written to
``<log_dir>/l2a_selector.json``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

log = logging.getLogger(__name__)

FEATURES = ("teacher_confidence", "teacher_agrees", "transferability", "closeness", "source", "substitutions")
"""What the policy reads of each candidate (standardised over the candidates)."""


def policy_probabilities(weights: Tensor, bias: Tensor, features: Tensor) -> Tensor:
    """``pi_i = sigmoid(features_i . weights + bias)``, shape (N,)."""
    return torch.sigmoid(features @ weights + bias)


def reinforce_update(
    weights: Tensor, bias: Tensor, features: Tensor, actions: Tensor, advantage: float, lr: float
) -> tuple[Tensor, Tensor]:
    """One REINFORCE step of the logistic Bernoulli policy: ``theta + lr * A * mean_i (a_i - pi_i) z_i``
    (and the bias with ``z = 1``). ``advantage`` is the reward minus the baseline."""
    residual = actions.float() - policy_probabilities(weights, bias, features)
    weights = weights + lr * advantage * (residual[:, None] * features).mean(dim=0)
    bias = bias + lr * advantage * residual.mean()
    return weights, bias


def standardise(values: Tensor) -> Tensor:
    """Columns to zero mean and unit variance (a constant column becomes 0)."""
    std = values.std(dim=0, unbiased=False)
    return (values - values.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))


class L2ASelector(pl.Callback):
    """Selects augmented candidates for each epoch by a policy learnt with REINFORCE (module docstring).

    Args:
        select_fraction: the expected share of candidates selected by the initial policy.
        lr: REINFORCE step size.
        baseline_momentum: ``b <- m * b + (1 - m) * r``.
        learn: False: never update (random selection each round).
        seed: seed of the selection draws.
    """

    def __init__(
        self,
        select_fraction: float = 0.5,
        lr: float = 2.0,
        baseline_momentum: float = 0.5,
        learn: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0.0 < select_fraction < 1.0:
            raise ValueError(f"L2ASelector: select_fraction must be in (0, 1), got {select_fraction}")
        self.select_fraction, self.lr, self.momentum = select_fraction, lr, baseline_momentum
        self.learn, self.seed = learn, seed
        self.weights = torch.zeros(len(FEATURES))
        self.bias = torch.tensor(math.log(select_fraction / (1.0 - select_fraction)))
        self.baseline: float | None = None
        self.previous_accuracy: float | None = None
        self.candidate_ids: Tensor | None = None
        self.features: Tensor | None = None
        self.actions: Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            trainer.reload_dataloaders_every_n_epochs = 1  # each round loads its own subset

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        rows = getattr(datamodule, "augmented_train", None)
        if not rows:
            raise ValueError(
                "L2ASelector selects among augmented training examples, but the datamodule has none: set "
                "data.init_args.augment (e.g. class_path: l2a)"
            )
        if getattr(pl_module, "teacher_source", None) is None:
            raise ValueError("L2ASelector: the candidates are labelled by the teacher; use a method with one")
        self.candidate_ids = torch.tensor([r["example_id"] for r in rows])
        self.features = None  # the teacher's features are read after the first round (its cache is set up)
        self._select(datamodule, torch.full((len(rows),), float(torch.sigmoid(self.bias))))

    def candidate_features(self, pl_module: Any, datamodule: Any) -> Tensor:
        """The standardised feature matrix (N, len(FEATURES)) of the candidates."""
        from metakd.teachers import TeacherRequest

        teacher = pl_module.teacher_source
        probabilities = torch.zeros(len(self.candidate_ids), datamodule.num_labels)
        position = {int(i): k for k, i in enumerate(self.candidate_ids)}
        for batch in datamodule.train_eval_dataloader():
            keep = batch["example_ids"] >= datamodule.num_pooled_train
            if not bool(keep.any()):
                continue
            batch = {k: v[keep].to(pl_module.device) for k, v in batch.items()}
            logits = teacher.outputs(batch, TeacherRequest()).logits.float().cpu()
            rows = [position[int(i)] for i in batch["example_ids"].cpu()]
            probabilities[rows] = torch.softmax(logits, dim=-1)
        labels = torch.tensor([r["label"] for r in datamodule.augmented_train])
        agrees = (probabilities.argmax(dim=-1) == labels).float()
        extra = [
            [float(r["features"].get(name, 0.0)) for name in FEATURES[2:]] for r in datamodule.augmented_train
        ]
        raw = torch.cat(
            [probabilities.max(dim=-1).values[:, None], agrees[:, None], torch.tensor(extra)], dim=1
        )
        return standardise(raw)

    # ------------------------------------------------------------------ rounds
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if self.features is None:
            self.features = self.candidate_features(pl_module, datamodule)
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "selected": int(self.actions.sum())}
        selects_model = (
            pl_module.current_stage().selects_model if hasattr(pl_module, "current_stage") else True
        )
        accuracy = trainer.callback_metrics.get("val/acc")
        if selects_model and accuracy is not None:
            accuracy = float(accuracy)
            record["dev_acc"] = accuracy
            if self.previous_accuracy is not None:
                reward = accuracy - self.previous_accuracy
                baseline = reward if self.baseline is None else self.baseline
                record.update(reward=reward, baseline=baseline)
                if self.learn:
                    self.weights, self.bias = reinforce_update(
                        self.weights, self.bias, self.features, self.actions, reward - baseline, self.lr
                    )
                self.baseline = self.momentum * baseline + (1.0 - self.momentum) * reward
            self.previous_accuracy = accuracy
        record["weights"] = dict(zip(FEATURES, [round(float(w), 4) for w in self.weights]))
        record["bias"] = round(float(self.bias), 4)
        self.history.append(record)
        log.info("L2A round %s", record)
        self._select(datamodule, policy_probabilities(self.weights, self.bias, self.features))
        directory = trainer.log_dir or trainer.default_root_dir
        if directory and trainer.is_global_zero:
            path = Path(directory) / "l2a_selector.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.history, indent=1), encoding="utf-8")

    def _select(self, datamodule: Any, probabilities: Tensor) -> None:
        self.actions = torch.bernoulli(probabilities, generator=self.generator)
        datamodule.select_augmented(self.candidate_ids[self.actions.bool()].tolist())

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "baseline": self.baseline,
                "previous_accuracy": self.previous_accuracy, "history": self.history}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights, self.bias = state_dict["weights"], state_dict["bias"]
        self.baseline, self.previous_accuracy = state_dict["baseline"], state_dict["previous_accuracy"]
        self.history = list(state_dict["history"])
