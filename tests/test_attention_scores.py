"""TinyBERT's attention loss on unnormalised scores: the recomputed scores against a hand computation and
against HF's own attention probabilities (student and teacher), the loss on a hand-computed case, and
``tinybert``'s default with the post-softmax form as an option (Meta-KD keeps the probabilities)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import (
    ToyMultiDomainDataModule,
    tiny_encoder_config,
    tiny_student,
    tiny_trainer,
    train_tiny_teacher,
)
from torch import nn

from metakd.distill import StepContext
from metakd.distill.attention_scores import attention_scores, self_attentions
from metakd.distill.layer_maps import LayerMatch, RecipeError
from metakd.distill.presets import MetaKD, TinyBERTKD
from metakd.distill.terms import AttentionScoreMatches, LayerMatches
from metakd.errors import StudentConfigError
from metakd.students import StudentOutput
from metakd.teachers import FrozenTeacher, TeacherOutputs, TeacherRequest


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tiny_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt"))


def padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return {"input_ids": torch.randint(1000, 2000, (2, 5)) * mask, "attention_mask": mask}


def probabilities(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(scores + mask) with the padded keys masked, as BERT's eager attention does."""
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(scores.dtype).min
    return torch.softmax(scores + additive, dim=-1)


def test_scores_equal_a_hand_computation_per_head() -> None:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertSelfAttention

    torch.manual_seed(1)
    block = BertSelfAttention(BertConfig(**tiny_encoder_config(hidden_size=8, num_attention_heads=2)))
    hidden = torch.randn(2, 3, 8)
    block.requires_grad_(False)
    scores = attention_scores(block, hidden)
    assert scores.shape == (2, 2, 3, 3)
    for b in range(2):
        for head in range(2):
            rows = slice(4 * head, 4 * head + 4)  # head h owns output units 4h..4h+3
            for i in range(3):
                for j in range(3):
                    q = block.query.weight[rows] @ hidden[b, i] + block.query.bias[rows]
                    k = block.key.weight[rows] @ hidden[b, j] + block.key.bias[rows]
                    assert float(scores[b, head, i, j]) == pytest.approx(float(q @ k) / 2.0, abs=1e-5)


def test_softmax_of_the_scores_is_hf_attention_for_student_and_teacher(teacher_ckpt: str) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    batch = padded_batch()
    student = BertForSequenceClassification(
        BertConfig(**tiny_encoder_config(hidden_size=16, num_hidden_layers=2), attn_implementation="eager")
    ).eval()
    out = student(**batch, output_hidden_states=True, output_attentions=True)
    blocks = self_attentions(student, 2, "student")
    for m in (1, 2):  # layer m's input is hidden_states[m - 1]
        scores = attention_scores(blocks[m - 1], out.hidden_states[m - 1])
        torch.testing.assert_close(probabilities(scores, batch["attention_mask"]), out.attentions[m - 1])

    data = ToyMultiDomainDataModule(backbone="minilm-l6")
    teacher = FrozenTeacher(teacher_ckpt, data.label_names, data.domain_names)
    teacher.prepare(TeacherRequest(frozenset({"attention"})))
    teacher.to(torch.device("cpu"))
    request = TeacherRequest(frozenset({"hidden", "attention"}), frozenset({0, 1, 2}), frozenset({1, 2}))
    outputs = teacher.forward({**batch, "domain_ids": torch.tensor([0, 1])}, request)
    blocks = self_attentions(teacher.module, teacher.num_layers, "teacher")
    for n in (1, 2):
        scores = attention_scores(blocks[n - 1], outputs.hidden_states[n - 1])
        torch.testing.assert_close(probabilities(scores, batch["attention_mask"]), outputs.attentions[n - 1])


class OneHeadBlock(nn.Module):
    """A 1-wide, 1-head self-attention block with fixed projections: ``q = a x``, ``k = x``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.num_attention_heads = 1
        self.query, self.key = nn.Linear(1, 1), nn.Linear(1, 1)
        with torch.no_grad():
            self.query.weight.fill_(a)
            self.key.weight.fill_(1.0)
            self.query.bias.zero_()
            self.key.bias.zero_()


def one_layer(a: float) -> nn.Module:
    model = nn.Sequential(OneHeadBlock(a))
    model.num_layers = 1
    return model


def test_score_loss_by_hand() -> None:
    """Tokens x = (1, 2, pad 5). Student scores 2 x_i x_j = [[2, 4], [4, 8]], teacher x_i x_j =
    [[1, 2], [2, 4]] on the real tokens; squared differences 1, 4, 4, 16: mean 25 / 4 = 6.25. The padded
    token, whose scores differ too, does not count."""
    student, teacher = one_layer(2.0), one_layer(1.0)
    term = AttentionScoreMatches([LayerMatch(1, 1, "attention")])
    context = SimpleNamespace(
        student=student, teacher=SimpleNamespace(num_layers=1, hidden_size=1, module=teacher), num_labels=2
    )
    assert term.build(context) == {}
    states = (torch.tensor([[[1.0], [2.0], [5.0]]]),)
    step = StepContext(
        {"attention_mask": torch.tensor([[1, 1, 0]]), "labels": torch.tensor([0])},
        StudentOutput(logits=torch.zeros(1, 2), hidden_states=states),
        TeacherOutputs(logits=torch.zeros(1, 2), hidden_states=states),
        {},
    )
    loss = term(step)
    assert loss.shape == (1,) and float(loss) == pytest.approx(6.25)
    assert term.student_needs == {"hidden"} and term.teacher_needs == {"hidden"}
    assert term.teacher_layers() == (frozenset({0}), frozenset())  # layer 1 reads the embedding output
    loss.backward()
    assert student[0].query.weight.grad is not None and teacher[0].query.weight.grad is None


def test_tinybert_defaults_to_scores_and_keeps_probabilities_as_an_option(teacher_ckpt: str) -> None:
    def attention_term(method) -> object:
        return method.stages()[0].terms[1]

    assert type(attention_term(TinyBERTKD())) is AttentionScoreMatches
    assert type(attention_term(TinyBERTKD(attention="probabilities"))) is LayerMatches
    assert type(attention_term(MetaKD())) is LayerMatches  # Meta-KD's code compares probabilities
    assert type(attention_term(MetaKD(attention="scores"))) is AttentionScoreMatches
    with pytest.raises(StudentConfigError, match="attention must be one of"):
        TinyBERTKD(attention="logits")

    data = ToyMultiDomainDataModule(backbone="minilm-l6", target_domain="dom1")
    student = tiny_student(teacher_ckpt, data, distillation="tinybert", stage="intermediate")
    # the teacher's token states only (layer 1's input for attention layer 2), no attention maps
    assert student.teacher_requests["intermediate"] == TeacherRequest(
        frozenset({"hidden"}), frozenset({0, 1, 2}), frozenset()
    )
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(student, datamodule=data)
    assert float(trainer.callback_metrics["train/loss_attention"]) > 0.0


def test_a_model_without_bert_attention_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RecipeError, match=r"has 0 of them for 1 layers; use distillation_options.attention"):
        self_attentions(model, 1, "student")
