"""Distillation losses against values computed by hand (plain Python math on tiny tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from metakd.distill import losses as dl


def test_hidden_mse_masks_padding_per_instance() -> None:
    # B=2, T=2, H=2; instance 1 has its second token padded.
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    expected_0 = (1 + 4 + 4 + 9) / (2 * 2)
    expected_1 = (1 + 1) / (1 * 2)
    out = dl.hidden_mse(s, t, mask)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([expected_0, expected_1])
    # Without a mask every token counts.
    assert dl.hidden_mse(s, t)[1].item() == pytest.approx((1 + 1 + 81 + 81) / 4)


def test_attention_mse_same_heads_and_padding() -> None:
    # B=1, heads=2, T=2; key/query 1 padded -> only pair (0, 0) counts.
    s = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]]]])
    t = torch.tensor([[[[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.0, 1.0]]]])
    mask = torch.tensor([[1, 0]])
    expected = ((0.5 - 0.7) ** 2 + (1.0 - 0.6) ** 2) / 2  # mean over the 2 heads of one pair
    assert dl.attention_mse(s, t, mask).item() == pytest.approx(expected)
    full = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / 8
    assert dl.attention_mse(s, t).item() == pytest.approx(full)


def test_attention_mse_different_head_counts_averages_heads_first() -> None:
    s = torch.tensor([[[[0.4, 0.6], [0.5, 0.5]]]])  # 1 head
    t = torch.tensor([[[[0.2, 0.8], [0.5, 0.5]], [[0.6, 0.4], [0.1, 0.9]]]])  # 2 heads
    t_mean = [[0.4, 0.6], [0.3, 0.7]]
    s_list = [[0.4, 0.6], [0.5, 0.5]]
    expected = sum((s_list[q][k] - t_mean[q][k]) ** 2 for q in range(2) for k in range(2)) / 4
    assert dl.attention_mse(s, t).item() == pytest.approx(expected)


def test_transferable_mse() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert dl.transferable_mse(s, t).tolist() == pytest.approx([(0 + 4 + 9) / 3, 1.0])


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("temperature,scaling", [(1.0, False), (2.0, False), (2.0, True)])
def test_soft_cross_entropy(temperature: float, scaling: bool) -> None:
    z_s = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    z_t = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]
    expected = []
    for zs, zt in zip(z_s, z_t):
        p_t = _softmax([v / temperature for v in zt])
        p_s = _softmax([v / temperature for v in zs])
        value = -sum(p * math.log(q) for p, q in zip(p_t, p_s))
        expected.append(value * temperature**2 if scaling else value)
    out = dl.soft_cross_entropy(torch.tensor(z_s), torch.tensor(z_t), temperature, scaling)
    assert out.tolist() == pytest.approx(expected, rel=1e-6)


def test_soft_cross_entropy_rejects_label_mismatch_and_bad_temperature() -> None:
    with pytest.raises(ValueError, match="same label set"):
        dl.soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        dl.soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


def test_domain_expertise_and_instance_weights() -> None:
    logits = [[2.0, 0.0], [0.0, 1.0]]
    labels = [0, 0]
    expected_sigma = []
    for row, y in zip(logits, labels):
        p = _softmax(row)[y]
        expected_sigma.append(1 / (1 + math.exp((1 - p) ** 2)))
    sigma = dl.domain_expertise(torch.tensor(logits), torch.tensor(labels))
    assert sigma.tolist() == pytest.approx(expected_sigma)
    t = torch.tensor([0.5, -0.2])
    weights = dl.instance_weights(t, sigma)
    assert weights.tolist() == pytest.approx([1.5 * expected_sigma[0], 0.8 * expected_sigma[1]])
    # A perfectly confident teacher gives sigma = 1/2.
    assert dl.domain_expertise(torch.tensor([[100.0, -100.0]]), torch.tensor([0])).item() == pytest.approx(
        0.5
    )


def test_weighted_intermediate_loss_formula() -> None:
    hid, att, tk = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 4.0])
    w = torch.tensor([0.25, 0.75])
    expected = (0.25 * (1 + 0.5 + 0.5 * 2) + 0.75 * (2 + 0 + 0.5 * 4)) / 2
    assert dl.weighted_intermediate_loss(hid, att, tk, w, lambda_tk=0.5).item() == pytest.approx(expected)
    unweighted = ((1 + 0.5 + 1) + (2 + 0 + 2)) / 2
    assert dl.weighted_intermediate_loss(hid, att, tk, None).item() == pytest.approx(unweighted)


def test_weights_act_per_instance_not_as_a_batch_scalar() -> None:
    """Different weights move the gradient differently from the same pair at their mean weight."""
    teacher = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]]])  # B=2, T=1, H=2
    zeros = torch.zeros(2)

    def gradient(weights: torch.Tensor) -> torch.Tensor:
        student = torch.zeros(2, 1, 2, requires_grad=True)
        hid = dl.hidden_mse(student, teacher)
        dl.weighted_intermediate_loss(hid, zeros, zeros, weights).backward()
        return student.grad

    per_instance = gradient(torch.tensor([0.1, 0.9]))
    mean_weight = gradient(torch.tensor([0.5, 0.5]))
    assert not torch.allclose(per_instance, mean_weight)
    # d/ds of (1/B) w_i * mean_h (s - t)^2 = w_i * (s - t) / (B * H / 2) -> instance 0: 0.1 * -1 / 2.
    assert per_instance[0, 0, 0].item() == pytest.approx(0.1 * 2 * (0 - 1) / (2 * 2))
    assert per_instance[1, 0, 1].item() == pytest.approx(0.9 * 2 * (0 - 3) / (2 * 2))


def test_registry_lookup_and_registration() -> None:
    assert dl.get_feature_loss("hidden_mse") is dl.hidden_mse
    with pytest.raises(KeyError, match="unknown distillation loss 'nope'.*hidden_mse"):
        dl.get_feature_loss("nope")

    @dl.register_feature_loss("test_l1")
    def l1(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return (student - teacher).abs().flatten(1).mean(1)

    try:
        assert dl.get_feature_loss("test_l1") is l1
        with pytest.raises(ValueError, match="already registered"):
            dl.register_feature_loss("test_l1")(lambda s, t, m=None: s)
    finally:
        del dl.FEATURE_LOSSES["test_l1"]
