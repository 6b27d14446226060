"""L2A's reinforced selector (learning to augment, Feng et al. AAAI 2021) as a Lightning callback.

L2A has two halves: the candidate generator (:mod:`datamodules.l2a_generator`, ``augment: {class_path:
l2a}``), which puts its candidates into the training split, and this selector, which decides while the
student trains which candidates each batch keeps. It is a callback, not a method, so it composes with
any method and student (the ``Student`` stays the wiring).

- **state**: per candidate, ``source_share`` (the share of its words from source-domain text),
  ``closeness`` (cosine to the target prototype), ``teacher_confidence`` (``max_c p_T(c | x)`` of the
  teacher the student distils from), ``length`` (words), each standardised over the candidates, and its
  edit type one-hot (:data:`datamodules.l2a_generator.EDIT_KINDS`); see :func:`candidate_features`.
- **policy**: independent Bernoulli choices ``pi_i = sigmoid(theta . z_i + b)``; ``b`` starts at
  ``logit(select_fraction)`` and theta at 0, so at first every candidate is kept with
  ``select_fraction``.
- **actions**: at the start of every training batch the policy draws ``a_i`` for the batch's candidates;
  the rejected ones are taken out of the batch before the step (the original target examples always
  stay; a batch that would be empty keeps its most probable candidate, recorded as selected).
- **reward**: every ``reward_every`` steps, the decrease of the student's cross-entropy on
  ``reward_examples`` target-domain DEV examples (never test) since the last reward, the student in eval
  mode: ``r_t = L_(t-1) - L_t``. Only stages that train the classifier (``selects_model``) learn; the
  first loss of such a stage is measured before its first step, so the first reward is a real one.
- **update**: REINFORCE, ``theta <- theta + lr * A_t * mean_i (a_i - pi_i) z_i`` over the decisions since
  the last reward (the bias with ``z = 1``), with ``A_t = (r_t - b) / sqrt(v)``: ``b`` a moving average of
  the rewards that starts at 0 (so the first reward moves the policy) and ``v`` a moving average of
  ``(r - b)^2`` that starts at the first one (:func:`advantage`).
- ``learn: false`` keeps the initial policy: every batch keeps a uniform random share of its candidates
  (the ablation "random selection instead of the learned selector").

What it wrote is ``<default_root_dir>/l2a_selection.json`` (each epoch and at the end): the weights,
every update (reward, baseline, advantage), and the spread of the selection probabilities over the
candidates (mean, std, quantiles, per edit type), which the pipeline's scarcity report summarises.
Single process: under DDP each rank would learn its own policy. Differences from the paper:
docs/METAKD.md, "Other methods".
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.l2a_generator import EDIT_KINDS

log = logging.getLogger(__name__)

NUMERIC_FEATURES = ("source_share", "closeness", "teacher_confidence", "length")
FEATURES = NUMERIC_FEATURES + tuple(f"edit_{kind}" for kind in EDIT_KINDS)
"""The columns of the policy's input (the numeric ones standardised over the candidates)."""


def candidate_features(rows: list[dict[str, Any]], confidence: Tensor) -> Tensor:
    """The raw state (N, len(FEATURES)) of the candidates ``rows`` (augmented records): their
    ``features`` ``source_share``, ``closeness`` and ``length``, the teacher's ``confidence`` (N,), and
    the one-hot edit type (``kind``)."""
    raw = torch.zeros(len(rows), len(FEATURES))
    for i, row in enumerate(rows):
        raw[i, 0] = float(row["features"].get("source_share", 0.0))
        raw[i, 1] = float(row["features"].get("closeness", 0.0))
        raw[i, 3] = float(row["features"].get("length", 0.0))
        if row["kind"] in EDIT_KINDS:
            raw[i, len(NUMERIC_FEATURES) + EDIT_KINDS.index(row["kind"])] = 1.0
    raw[:, 2] = confidence
    return raw


def policy_inputs(raw: Tensor) -> Tensor:
    """``raw`` with its numeric columns standardised over the candidates (zero mean, unit variance; a
    constant column becomes 0); the one-hot columns as they are."""
    numeric = raw[:, : len(NUMERIC_FEATURES)]
    std = numeric.std(dim=0, unbiased=False)
    numeric = (numeric - numeric.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    return torch.cat([numeric, raw[:, len(NUMERIC_FEATURES) :]], dim=1)


def policy_probabilities(weights: Tensor, bias: Tensor, features: Tensor) -> Tensor:
    """``pi_i = sigmoid(features_i . weights + bias)``, shape (N,)."""
    return torch.sigmoid(features @ weights + bias)


def reinforce_update(
    weights: Tensor, bias: Tensor, features: Tensor, actions: Tensor, advantage: float, lr: float
) -> tuple[Tensor, Tensor]:
    """One REINFORCE step of the logistic Bernoulli policy: ``theta + lr * A * mean_i (a_i - pi_i) z_i``
    (and the bias with ``z = 1``) over the decisions ``(features, actions)``."""
    residual = actions.float() - policy_probabilities(weights, bias, features)
    weights = weights + lr * advantage * (residual[:, None] * features).mean(dim=0)
    bias = bias + lr * advantage * residual.mean()
    return weights, bias


def advantage(
    reward: float, baseline: float, mean_square: float | None, momentum: float
) -> tuple[float, float, float]:
    """``(A, b', v')``: ``d = r - b``, ``v' = d^2`` the first time, else ``m v + (1 - m) d^2``,
    ``A = d / sqrt(v')`` (0 when ``v'`` is 0), ``b' = m b + (1 - m) r``."""
    deviation = reward - baseline
    square = deviation**2 if mean_square is None else momentum * mean_square + (1 - momentum) * deviation**2
    scaled = deviation / math.sqrt(square) if square > 0 else 0.0
    return scaled, momentum * baseline + (1 - momentum) * reward, square


def probability_summary(probabilities: Tensor, kinds: list[str]) -> dict[str, Any]:
    """Mean, std (over the candidates), quantiles and share above 1/2 of the selection probabilities,
    also per edit type."""
    p = probabilities.double()
    quantiles = torch.quantile(p, torch.tensor([0.1, 0.5, 0.9], dtype=p.dtype)).tolist()
    out: dict[str, Any] = {
        "n": int(p.numel()), "mean": float(p.mean()), "std": float(p.std(unbiased=False)),
        "min": float(p.min()), "max": float(p.max()), "q10": quantiles[0], "median": quantiles[1],
        "q90": quantiles[2], "mean_abs_from_half": float((p - 0.5).abs().mean()),
        "share_above_half": float((p > 0.5).double().mean()),
    }  # fmt: skip
    by_kind = {}
    for kind in sorted(set(kinds)):
        chosen = p[torch.tensor([k == kind for k in kinds])]
        by_kind[kind] = {"n": int(chosen.numel()), "mean": float(chosen.mean()),
                         "std": float(chosen.std(unbiased=False))}  # fmt: skip
    out["by_kind"] = by_kind
    return out


class L2ASelector(pl.Callback):
    """Keeps, in each training batch, the candidates a policy learnt with REINFORCE selects (module
    docstring).

    Args:
        select_fraction: the initial policy's probability of keeping a candidate.
        lr: REINFORCE step size.
        baseline_momentum: ``m`` of the reward baseline and of the advantage's scale.
        reward_every: training steps per reward (and policy update).
        reward_examples: target-domain dev examples the reward's loss is measured on.
        learn: False: never update (random selection at ``select_fraction``).
        seed: seed of the selection draws; None: the run's seed (``torch.initial_seed()`` when training
            starts, i.e. ``seed_everything``), so every seed of a study draws its own selections.
        output: the file written in ``trainer.default_root_dir``.
    """

    def __init__(
        self,
        select_fraction: float = 0.5,
        lr: float = 0.5,
        baseline_momentum: float = 0.9,
        reward_every: int = 1,
        reward_examples: int = 64,
        learn: bool = True,
        seed: int | None = None,
        output: str = "l2a_selection.json",
    ) -> None:
        if not 0.0 < select_fraction < 1.0:
            raise ValueError(f"L2ASelector: select_fraction must be in (0, 1), got {select_fraction}")
        if reward_every < 1 or reward_examples < 1:
            raise ValueError("L2ASelector: reward_every and reward_examples must be >= 1")
        self.select_fraction, self.lr, self.momentum = select_fraction, lr, baseline_momentum
        self.reward_every, self.reward_examples = reward_every, reward_examples
        self.learn, self.seed, self.output = learn, seed, output
        self.weights = torch.zeros(len(FEATURES))
        self.bias = torch.tensor(math.log(select_fraction / (1.0 - select_fraction)))
        self.baseline, self.mean_square = 0.0, None
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.raw: Tensor | None = None  # (N, len(FEATURES)) candidate state
        self.inputs: Tensor | None = None
        self.kinds: list[str] = []
        self.first_id = 0
        self.pending: list[tuple[Tensor, Tensor]] = []  # (rows, actions) since the last reward
        self.previous_loss: float | None = None
        self.steps = 0
        self.history: list[dict[str, Any]] = []
        self.reward_batches: list[dict[str, Tensor]] = []
        self.restored = False

    # ------------------------------------------------------------------ set-up
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        rows = getattr(datamodule, "augmented_train", None)
        if not rows:
            raise ValueError(
                "L2ASelector selects among augmented training examples, but the datamodule has none: set "
                "data.init_args.augment (class_path: l2a)"
            )
        if getattr(pl_module, "teacher_source", None) is None:
            raise ValueError("L2ASelector: a candidate's state reads the teacher; use a method with one")
        if self.seed is None and not self.restored:  # on a resume the generator's state was loaded
            self.generator.manual_seed(torch.initial_seed())
        self.first_id = int(datamodule.num_pooled_train)
        if [r["example_id"] for r in rows] != list(range(self.first_id, self.first_id + len(rows))):
            raise ValueError(
                "L2ASelector: the augmented examples' ids are not consecutive from num_pooled_train"
            )
        self.kinds = [r["kind"] for r in rows]
        self.raw = candidate_features(rows, self.teacher_confidence(pl_module, datamodule))
        self.inputs = policy_inputs(self.raw)
        self.reward_batches = self.target_dev_batches(datamodule)
        if self.learn and not self.reward_batches:
            raise ValueError(
                "L2ASelector: the reward needs target-domain dev examples, and the dev split has none"
            )

    def teacher_confidence(self, pl_module: Any, datamodule: Any) -> Tensor:
        """``max_c p_T(c | x)`` of every candidate, by the student's teacher (through its output cache)."""
        from metakd.teachers import TeacherRequest

        confidence = torch.zeros(len(datamodule.augmented_train))
        for batch in datamodule.train_eval_dataloader():
            keep = batch["example_ids"] >= self.first_id
            if bool(keep.any()):
                batch = {k: v[keep].to(pl_module.device) for k, v in batch.items()}
                logits = pl_module.teacher_source.outputs(batch, TeacherRequest()).logits.float()
                rows = batch["example_ids"].cpu() - self.first_id
                confidence[rows] = torch.softmax(logits, dim=-1).max(dim=-1).values.cpu()
        return confidence

    def target_dev_batches(self, datamodule: Any) -> list[dict[str, Tensor]]:
        """The first ``reward_examples`` dev examples of the target domain, in loader order."""
        target = getattr(datamodule, "target_domain", None)
        domain = datamodule.domain_names.index(target) if target is not None else None
        out, count = [], 0
        for batch in datamodule.val_dataloader():
            keep = torch.ones_like(batch["labels"], dtype=torch.bool)
            if domain is not None:
                keep = batch["domain_ids"] == domain
            keep &= torch.cumsum(keep.long(), 0) <= self.reward_examples - count
            if bool(keep.any()):
                out.append({k: v[keep] for k, v in batch.items()})
                count += int(keep.sum())
            if count >= self.reward_examples:
                break
        return out

    # ------------------------------------------------------------------ acting and learning
    def probabilities(self) -> Tensor:
        return policy_probabilities(self.weights, self.bias, self.inputs)

    def learning(self, pl_module: Any) -> bool:
        stage = pl_module.current_stage() if hasattr(pl_module, "current_stage") else None
        return self.learn and (stage is None or stage.selects_model)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        is_candidate = batch["example_ids"] >= self.first_id
        if bool(is_candidate.any()):
            actions = self.act(
                (batch["example_ids"][is_candidate] - self.first_id).cpu(), bool((~is_candidate).any())
            )
            keep = ~is_candidate
            keep[is_candidate] = actions.bool().to(keep.device)
            for key in list(batch):
                batch[key] = batch[key][keep]
        if self.learning(pl_module) and self.previous_loss is None:
            self.previous_loss = self.reward_loss(pl_module)

    def act(self, rows: Tensor, others: bool = True) -> Tensor:
        """Draw the actions (0/1) of the candidates ``rows`` and remember them for the next update. Without
        ``others`` (no original example in the batch) at least the most probable candidate is kept."""
        pi = policy_probabilities(self.weights, self.bias, self.inputs[rows])
        actions = torch.bernoulli(pi, generator=self.generator)
        if not others and not bool(actions.any()):
            actions[int(pi.argmax())] = 1.0
        self.pending.append((rows, actions))
        return actions

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.learning(pl_module):
            self.pending, self.previous_loss = [], None
            return
        self.steps += 1
        if self.steps % self.reward_every:
            return
        loss = self.reward_loss(pl_module)
        self.update(self.previous_loss - loss, trainer.global_step)
        self.previous_loss = loss

    def update(self, reward: float, step: int) -> dict[str, Any]:
        """One policy update from ``reward`` over the decisions since the last one."""
        scaled, baseline, self.mean_square = advantage(reward, self.baseline, self.mean_square, self.momentum)
        record = {"step": step, "reward": reward, "baseline": self.baseline, "advantage": scaled}
        if self.pending:
            rows = torch.cat([r for r, _ in self.pending])
            actions = torch.cat([a for _, a in self.pending])
            self.weights, self.bias = reinforce_update(
                self.weights, self.bias, self.inputs[rows], actions, scaled, self.lr
            )
            record.update(decisions=int(actions.numel()), selected=float(actions.mean()))
        self.baseline, self.pending = baseline, []
        self.history.append(record)
        return record

    @torch.no_grad()
    def reward_loss(self, pl_module: Any) -> float:
        """The student's mean cross-entropy on the reward examples (eval mode; the mode is restored)."""
        was_training = pl_module.training
        pl_module.eval()
        total, count = 0.0, 0
        for batch in self.reward_batches:
            batch = {k: v.to(pl_module.device) for k, v in batch.items()}
            logits = pl_module(
                batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
            ).logits
            total += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
            count += int(batch["labels"].numel())
        pl_module.train(was_training)
        return total / max(count, 1)

    # ------------------------------------------------------------------ what it wrote
    def report(self) -> dict[str, Any]:
        """The policy, its updates and the spread of its selection probabilities (the JSON file)."""
        return {
            "learn": self.learn,
            "updates": len(self.history),
            "features": list(FEATURES),
            "weights": dict(zip(FEATURES, [round(float(w), 5) for w in self.weights])),
            "bias": round(float(self.bias), 5),
            "probabilities": probability_summary(self.probabilities(), self.kinds),
            "history": self.history,
        }

    def _write(self, trainer: pl.Trainer) -> None:
        if self.inputs is None or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=1), encoding="utf-8")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = probability_summary(self.probabilities(), self.kinds)
        log.info("L2A selection after epoch %d: mean %.3f, std %.3f, %d updates", trainer.current_epoch,
                 summary["mean"], summary["std"], len(self.history))  # fmt: skip
        self._write(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "baseline": self.baseline,
                "mean_square": self.mean_square, "steps": self.steps, "history": self.history,
                "generator": self.generator.get_state()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights, self.bias = state_dict["weights"], state_dict["bias"]
        self.baseline, self.mean_square = state_dict["baseline"], state_dict["mean_square"]
        self.steps, self.history = state_dict["steps"], list(state_dict["history"])
        self.generator.set_state(state_dict["generator"])
        self.previous_loss = None  # measured again before the next step
        self.restored = True
