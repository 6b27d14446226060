"""The teacher-output cache (``metakd/teacher_cache.py``): by example id, features trimmed to each
example's length and padded back to the batch's, the logits table on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from metakd.teacher_cache import TeacherOutputCache
from metakd.teachers import TeacherOutputs

MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def outputs() -> TeacherOutputs:
    torch.manual_seed(0)
    return TeacherOutputs(
        logits=torch.randn(2, 2),
        transferable=torch.randn(2, 4),
        hidden_states=(torch.randn(2, 3, 4), None),
        attentions=(torch.rand(2, 1, 3, 3),),
    )


def test_all_mode_round_trip_with_other_padding() -> None:
    cache = TeacherOutputCache("all", num_examples=10, num_labels=2)
    out = outputs()
    ids = torch.tensor([7, 2])
    assert cache.lookup(ids, MASK, need_features=True) is None  # nothing cached yet
    cache.store(ids, MASK, out)
    # example 2 alone in a batch padded to 4 tokens: its 1 real token, zeros after
    mask = torch.tensor([[1, 0, 0, 0]])
    logits, g, hidden, attentions = cache.lookup(torch.tensor([2]), mask, need_features=True)
    assert torch.equal(logits, out.logits[1:]) and torch.equal(g, out.transferable[1:])
    assert hidden[1] is None and hidden[0].shape == (1, 4, 4)
    assert torch.equal(hidden[0][0, :1], out.hidden_states[0][1, :1]) and not hidden[0][0, 1:].any()
    assert attentions[0].shape == (1, 1, 4, 4) and attentions[0][0, 0, 0, 0] == out.attentions[0][1, 0, 0, 0]
    assert cache.lookup(torch.tensor([2, 3]), MASK, need_features=False) is None  # 3 is missing


def test_logits_mode_and_the_file(tmp_path: Path) -> None:
    cache = TeacherOutputCache("logits", num_examples=10, num_labels=2)
    out = outputs()
    cache.store(torch.tensor([7, 2]), MASK, out)
    assert cache.lookup(torch.tensor([7]), MASK[:1], need_features=True) is None  # no features kept
    logits, *rest = cache.lookup(torch.tensor([2, 7]), MASK, need_features=False)
    assert torch.equal(logits, out.logits[[1, 0]]) and rest == [None, None, None]
    path = tmp_path / "logits.pt"
    cache.write_logits(path)
    other = TeacherOutputCache("logits", num_examples=10, num_labels=2)
    other.read_logits(path)
    assert torch.equal(other.logits, cache.logits) and other.filled.tolist() == cache.filled.tolist()
    wrong = TeacherOutputCache("logits", num_examples=11, num_labels=2)
    wrong.read_logits(path)  # another table size: ignored
    assert not wrong.filled.any()
    path.write_text("not a tensor file")
    wrong.read_logits(path)  # unreadable: ignored with a warning
    cache.reset("key")
    assert cache.key == "key" and not cache.filled.any()
