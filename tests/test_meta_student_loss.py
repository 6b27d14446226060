"""The assembled Meta-KD student loss on a tiny case, against a value computed by hand (docs/METAKD.md):

    L_inter = (1/B) sum_i w_i (L_hid,i + L_att,i + lambda_tk L_tk,i),   w_i = (1 + t_i) sigma_i,
    sigma_i = 1 / (1 + exp((1 - p_T(y_i | x_i))^2)),

with the uniform layer map of a 1-layer student and a 1-layer teacher (embeddings 0-0, hidden 1-1,
attention 1-1): L_hid,i is the per-token squared error over the valid tokens and the H features,
averaged (one term per hidden match), L_att,i the squared error of the attention maps over the valid
(query, key) pairs and the heads, averaged, and L_tk,i the mean squared error between the learned head
of the student's pooled vector and the teacher's g. The Student builds the terms, their projections
and head, and the weights; the test sets the inputs and the learned matrices to simple numbers.
"""

from __future__ import annotations

import math

import torch
from golden.teacher_golden import CHECKPOINTS
from helpers import tiny_student_config

from metakd.distill import StepContext
from metakd.distill.base import stage_loss
from metakd.student import Student
from metakd.students import StudentOutput
from metakd.teachers import TeacherOutputs

H_T, H_S = 8, 16  # the teacher checkpoint's width; the student is wider, so it has projections
MASK = [[1, 1, 1], [1, 1, 0]]


def features(scalars: list[list[float]], width: int, rest: float = 0.0) -> torch.Tensor:
    """(B, T, width) token states: each token's first H_T features equal its scalar, the others ``rest``
    (which the projections below ignore)."""
    out = torch.full((len(scalars), len(scalars[0]), width), rest)
    out[..., :H_T] = torch.tensor(scalars).unsqueeze(-1)
    return out


def test_meta_kd_intermediate_loss_matches_the_formula_by_hand() -> None:
    student = Student(
        teacher_ckpt=str(CHECKPOINTS["teacher"]), num_labels=2, num_domains=3,
        domain_names=["dom0", "dom1", "dom2"], label_names=["label0", "label1"], target_domain="dom1",
        tokenizer_name="minilm-l6", student_config=tiny_student_config(num_hidden_layers=1),
        distillation="meta", stage="intermediate",
    )  # fmt: skip
    (stage,) = student.stages
    modules = student.distillation_modules
    with torch.no_grad():  # projections: the first H_T features; the head: 0.5 x + 0.1 on them
        for projection in modules["projections"].values():
            projection.weight.copy_(torch.cat([torch.eye(H_T), torch.zeros(H_T, H_S - H_T)], dim=1))
            projection.bias.zero_()
        head = modules["transferable_head"]
        head.weight.copy_(torch.cat([0.5 * torch.eye(H_T), torch.zeros(H_T, H_S - H_T)], dim=1))
        head.bias.fill_(0.1)

    # Row 1's third token is padding: its wild values must not count.
    uniform = torch.full((2, 2, 3, 3), 1 / 3)
    teacher_attention = torch.stack([torch.eye(3).expand(2, 3, 3), torch.full((2, 3, 3), 1 / 3)], dim=1)
    teacher_attention[1, :, 2, :] = teacher_attention[1, :, :, 2] = 5.0
    batch = {
        "attention_mask": torch.tensor(MASK),
        "labels": torch.tensor([0, 0]),
        "example_ids": torch.tensor([5, 2]),
    }
    student_out = StudentOutput(
        logits=torch.zeros(2, 2),
        hidden_states=(
            features([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]], H_S, rest=7.0),
            features([[1.0, 1.0, 1.0], [2.0, 2.0, 5.0]], H_S, rest=-3.0),
        ),
        attentions=(uniform,),
        pooled=features([[1.0], [2.0]], H_S, rest=4.0)[:, 0],
    )
    teacher_out = TeacherOutputs(
        logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        transferable=torch.tensor([[0.2] * H_T, [1.6] * H_T]),
        hidden_states=(features([[0.0] * 3] * 2, H_T), features([[0.5, 1.0, 1.5], [2.0, 1.0, 0.0]], H_T)),
        attentions=(teacher_attention,),
    )
    student.distiller.transferability = torch.tensor([0.0, 0.0, -0.2, 0.0, 0.0, 0.3])
    step = StepContext(batch, student_out, teacher_out, modules)
    loss, logs = stage_loss(stage, step, student.distiller.instance_weights(step))

    # By hand. Hidden: the squared differences of the valid tokens, averaged (each feature has the same).
    embeddings = [(0.1**2 + 0.2**2 + 0.3**2) / 3, (0.4**2 + 0.5**2) / 2]
    layer1 = [(0.5**2 + 0 + 0.5**2) / 3, (0 + 1.0**2) / 2]
    hidden = [embeddings[i] + layer1[i] for i in range(2)]
    # Attention: head 0 differs by 2/3 on the diagonal and 1/3 elsewhere, head 1 not at all;
    # row 0 has 3 x 3 valid pairs, row 1 has 2 x 2; mean over pairs and the 2 heads.
    attention = [
        (3 * (2 / 3) ** 2 + 6 * (1 / 3) ** 2) / (9 * 2),
        (2 * (2 / 3) ** 2 + 2 * (1 / 3) ** 2) / (4 * 2),
    ]
    # Transferable knowledge: head(pooled) = 0.5 * pooled + 0.1 = 0.6, 1.1 against g = 0.2, 1.6.
    transferable = [(0.6 - 0.2) ** 2, (1.1 - 1.6) ** 2]
    # sigma_i from the teacher's probability of the gold class 0: e^2 / (e^2 + 1) and 1 / (1 + e).
    gold = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)]
    sigma = [1 / (1 + math.exp((1 - p) ** 2)) for p in gold]
    w = [(1 + 0.3) * sigma[0], (1 - 0.2) * sigma[1]]  # t of example ids 5 and 2
    lambda_tk = 0.5
    expected = sum(w[i] * (hidden[i] + attention[i] + lambda_tk * transferable[i]) for i in range(2)) / 2

    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(logs["train/loss_hidden"].item(), sum(hidden) / 2, rel_tol=1e-5)
    assert math.isclose(logs["train/loss_attention"].item(), sum(attention) / 2, rel_tol=1e-5)
    assert math.isclose(logs["train/loss_tk"].item(), sum(transferable) / 2, rel_tol=1e-5)
    assert math.isclose(logs["train/weight_mean"].item(), sum(w) / 2, rel_tol=1e-6)
