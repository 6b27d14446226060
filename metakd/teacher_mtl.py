"""The multi-task teacher (the paper's BERT-mtl baseline): one encoder, one classifier head per domain.

Trained on all domains mixed; each example's loss is the cross-entropy of *its domain's* head,
without instance weights and without a domain loss:

    logits_i = head_{d_i}(dropout(h_i[CLS])),    L = (1/B) sum_i CE(logits_i, y_i)

It is a :class:`~metakd.teacher.MetaTeacher` in everything else (optimiser, schedule, metrics,
checkpoints, the ``TeacherOutput`` of ``forward``), so a student distils from it like from any teacher:
``logits`` are each example's domain head, ``hidden_states`` and ``attentions`` the shared encoder's.
It has no domain embedding, hence no transferable knowledge: ``transferable`` and ``domain_logits``
are None and :attr:`MultiTaskTeacher.provides` leaves ``"transferable"`` out (a student refuses the
transferable-knowledge term with it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metakd.meta_teacher.network import EncoderNetwork
from metakd.prototypes import masked_mean_pool
from metakd.teacher import MetaTeacher


class MultiTaskNetwork(EncoderNetwork):
    """Encoder and K classifier heads (one per domain) as a plain module."""

    def __init__(self, encoder: nn.Module, num_labels: int, num_domains: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.domain_heads = nn.ModuleList(nn.Linear(hidden, num_labels) for _ in range(num_domains))

    def heads(
        self, states: Tensor, attention_mask: Tensor, domain_ids: Tensor
    ) -> tuple[Tensor, None, Tensor, None]:
        cls = self.dropout(states[:, 0])
        # Every head runs on every row and each row keeps its domain's: all heads stay in the graph
        # (zero gradients for the domains absent from a batch), which DDP needs.
        every = torch.stack([head(cls) for head in self.domain_heads], dim=1)  # (B, K, C)
        logits = every[torch.arange(every.shape[0], device=every.device), domain_ids]
        return logits, None, masked_mean_pool(states, attention_mask), None


class MultiTaskTeacher(MetaTeacher):
    """BERT-mtl: a shared encoder with one classifier head per domain (see the module docstring).

    Takes :class:`~metakd.teacher.MetaTeacher`'s arguments; ``weighting`` and ``domain_loss`` can only
    be ``none`` (the multi-task baseline has neither), the transferability options are unused.
    """

    provides: frozenset[str] = frozenset({"logits", "hidden", "attention"})

    def __init__(self, *args: Any, weighting: str = "none", domain_loss: str = "none", **kwargs: Any) -> None:
        if weighting != "none" or domain_loss != "none":
            raise ValueError(
                "MultiTaskTeacher has no instance weights and no domain loss: weighting and domain_loss must "
                f"be 'none', got {weighting!r} and {domain_loss!r} (use MetaTeacher for those)"
            )
        super().__init__(*args, weighting=weighting, domain_loss=domain_loss, **kwargs)

    def _build_network(
        self, encoder: nn.Module, num_labels: int, num_domains: int, dropout: float, reverse: bool
    ) -> nn.Module:
        return MultiTaskNetwork(encoder, num_labels, num_domains, dropout)
