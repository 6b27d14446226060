"""Tang et al.'s logit distillation (``tang``) and Meta-KD's weighted prediction stage: losses against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from metakd.distill import DISTILLERS, StepContext
from metakd.distill.base import stage_loss
from metakd.errors import StudentConfigError
from metakd.students import StudentOutput
from metakd.teachers import TeacherOutputs

STUDENT = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
TEACHER = torch.tensor([[2.0, 1.0], [1.0, -1.0]])
LABELS = torch.tensor([1, 0])


def step() -> StepContext:
    batch = {"labels": LABELS, "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "example_ids": torch.tensor([0, 1])}  # fmt: skip
    return StepContext(batch, StudentOutput(logits=STUDENT), TeacherOutputs(logits=TEACHER), {})


def hand_ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(z) for z in logits))


def test_mse_objective_with_hard_labels() -> None:
    alpha = 0.25
    (stage,) = DISTILLERS.get("tang")(objective="mse", hard_label_weight=alpha).stages()
    loss, logs = stage_loss(stage, step(), None)
    # mean over classes of (z_S - z_T)^2: row 0 ((1-2)^2 + (3-1)^2) / 2 = 2.5, row 1 (1 + 1) / 2 = 1
    mse = [2.5, 1.0]
    ce = [hand_ce([1.0, 3.0], 1), hand_ce([0.0, 0.0], 0)]
    expected = sum(alpha * c + (1 - alpha) * m for c, m in zip(ce, mse)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(logs["train/loss_mse"]) == pytest.approx(1.75) and float(
        logs["train/loss_ce"]
    ) == pytest.approx(sum(ce) / 2, rel=1e-6)


def test_soft_ce_objective_at_temperature_with_t2() -> None:
    temperature, alpha = 2.0, 0.5
    method = DISTILLERS.get("tang")(objective="soft_ce", hard_label_weight=alpha, temperature=temperature)
    (stage,) = method.stages()
    loss, logs = stage_loss(stage, step(), None)

    def soft_ce(student: list[float], teacher: list[float]) -> float:
        p = [math.exp(t / temperature) for t in teacher]
        p = [v / sum(p) for v in p]
        log_z = math.log(sum(math.exp(s / temperature) for s in student))
        return -sum(pc * (s / temperature - log_z) for pc, s in zip(p, student)) * temperature**2

    kd = [soft_ce([1.0, 3.0], [2.0, 1.0]), soft_ce([0.0, 0.0], [1.0, -1.0])]
    ce = [hand_ce([1.0, 3.0], 1), hand_ce([0.0, 0.0], 0)]
    assert float(loss) == pytest.approx(
        sum(alpha * c + (1 - alpha) * k for c, k in zip(ce, kd)) / 2, rel=1e-6
    )
    assert float(logs["train/loss_kd"]) == pytest.approx(sum(kd) / 2, rel=1e-6)


def test_pure_distillation_logs_ce_without_training_on_it() -> None:
    (stage,) = DISTILLERS.get("tang")().stages()  # mse, alpha 0
    loss, logs = stage_loss(stage, step(), None)
    assert float(loss) == pytest.approx(1.75) and float(logs["train/loss_ce"]) > 0
    assert DISTILLERS.get("tang").teacher_role == "mixed"
    with pytest.raises(StudentConfigError, match="objective must be one of"):
        DISTILLERS.get("tang")(objective="kl")
    with pytest.raises(StudentConfigError, match=r"alpha\) must be in \[0, 1\]"):
        DISTILLERS.get("tang")(hard_label_weight=1.5)


def test_meta_kd_prediction_stage_weighted_by_w_i() -> None:
    from metakd.distill.losses import domain_expertise

    plain = DISTILLERS.get("meta")()
    assert [s.weighted for s in plain.stages()] == [True, False]  # the paper: only the intermediate stage
    method = DISTILLERS.get("meta")(prediction_weighting=True)
    stages = method.stages()
    assert [s.weighted for s in stages] == [True, True]
    method.transferability = torch.tensor([0.5, -0.25])
    context = step()
    weights = method.instance_weights(context)
    sigma = domain_expertise(TEACHER, LABELS)
    torch.testing.assert_close(weights, torch.tensor([1.5, 0.75]) * sigma)
    loss, logs = stage_loss(stages[-1], context, weights)
    # soft CE at T = 1 per instance, times w_i, averaged
    p0 = torch.softmax(TEACHER, -1)
    kd = -(p0 * torch.log_softmax(STUDENT, -1)).sum(-1)
    assert float(loss) == pytest.approx(float((weights * kd).mean()), rel=1e-6)
    assert float(logs["train/weight_mean"]) == pytest.approx(float(weights.mean()))


def test_meta_logit_weights_and_weighted_mse_by_hand() -> None:
    """``meta_logit``: w_i = (1 + t_i) sigma_i, sigma_i = 1 / (1 + exp((1 - p_T(y_i))^2)), on logit MSE."""
    method = DISTILLERS.get("meta_logit")()  # mse, alpha 0
    (stage,) = method.stages()
    assert stage.weighted and DISTILLERS.get("meta_logit").teacher_role == "meta"
    method.weights.transferability = torch.tensor([0.5, -0.25])
    context = step()
    weights = method.instance_weights(context)
    # teacher row 0 [2, 1], gold 1: p = e^1 / (e^2 + e^1); row 1 [1, -1], gold 0: p = e^1 / (e^1 + e^-1)
    p = [math.exp(1) / (math.exp(2) + math.exp(1)), math.exp(1) / (math.exp(1) + math.exp(-1))]
    sigma = [1 / (1 + math.exp((1 - q) ** 2)) for q in p]
    expected_w = [1.5 * sigma[0], 0.75 * sigma[1]]
    assert weights.tolist() == pytest.approx(expected_w, rel=1e-6)
    loss, logs = stage_loss(stage, context, weights)
    # per-instance MSE 2.5 and 1.0 (test_mse_objective_with_hard_labels), weighted, averaged over B = 2
    assert float(loss) == pytest.approx((expected_w[0] * 2.5 + expected_w[1] * 1.0) / 2, rel=1e-6)
    assert float(logs["train/weight_mean"]) == pytest.approx(sum(expected_w) / 2, rel=1e-6)
    # switches: sigma alone, (1 + t) alone, and none (a uniform, unweighted loss)
    only_sigma = DISTILLERS.get("meta_logit")(transferability_weights=False)
    assert only_sigma.instance_weights(context).tolist() == pytest.approx(sigma, rel=1e-6)
    only_t = DISTILLERS.get("meta_logit")(expertise_weights=False)
    only_t.weights.transferability = torch.tensor([0.5, -0.25])
    assert only_t.instance_weights(context).tolist() == [1.5, 0.75]
    assert DISTILLERS.get("meta_logit")(instance_weighting=False).instance_weights(context) is None
    with pytest.raises(StudentConfigError, match="transferability_scale"):
        DISTILLERS.get("meta_logit")(transferability_scale="square")
