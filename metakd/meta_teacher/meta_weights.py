"""Learned instance weights of teacher training (``weighting: meta``): learning to reweight
(:mod:`metakd.weighting`) every ``meta_every_n_steps`` steps, ones on the other steps.

The look-ahead loss is the unweighted per-instance training loss (classification and domain term,
:class:`~metakd.meta_teacher.domain_loss.DomainAdversary`), the held-out loss the classification CE.
The held-out batch is drawn from the *training* split by an independent iterator (a second
``datamodule.train_dataloader()``, its own shuffle): the dev split selects the model (``val/acc``) and
must not feed a training signal. With ``meta_heldout: other_domains`` instance i is weighted by its
effect on the held-out examples of the other domains, which also excludes i itself from its own
held-out set. The engine (``jvp``, ``higher``) and the parameter scope (``all``, ``head``, ``last_k``)
are the :mod:`metakd.weighting` parts of those names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from metakd.errors import ConfigError
from metakd.losses import per_instance_cross_entropy
from metakd.meta_teacher.domain_loss import DomainAdversary
from metakd.weighting import HeldoutRule, MetaEngine, MetaWeights, meta_instance_weights

Run = Callable[[dict[str, Tensor], Any], Any]
"""``(batch, network) -> TeacherOutput``: the teacher's forward of a batch through ``network``."""


class MetaWeighter:
    """The meta weights of a teacher's training batches (module docstring).

    Args:
        domain: the teacher's domain-adversarial part (its per-instance loss is the look-ahead's).
        engine: ``jvp`` or ``higher``.
        param_names: the scope's parameter names (None: all trainable parameters).
        inner_lr: the inner SGD learning rate.
        heldout: ``other_domains`` or ``all``.
        every_n_steps: weights on every n-th optimiser step.
    """

    def __init__(
        self,
        domain: DomainAdversary,
        engine: MetaEngine,
        param_names: Sequence[str] | None,
        inner_lr: float,
        heldout: HeldoutRule,
        every_n_steps: int,
    ) -> None:
        self.domain, self.engine, self.param_names = domain, engine, param_names
        self.inner_lr, self.heldout, self.every_n_steps = inner_lr, heldout, every_n_steps
        self._iterator: Any = None

    def due(self, global_step: int) -> bool:
        """Whether this optimiser step gets meta weights."""
        return global_step % self.every_n_steps == 0

    def reset(self) -> None:
        """Start the held-out draws afresh (a new fit)."""
        self._iterator = None

    def heldout_batch(self, datamodule: Any, device: Any) -> dict[str, Tensor]:
        """The next held-out batch from the datamodule's training split (a new pass when one ends)."""
        if datamodule is None:
            raise ConfigError("meta weighting draws its held-out batch from the datamodule's training split")
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(datamodule.train_dataloader())
            try:
                batch = next(self._iterator)
                return {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
            except StopIteration:
                self._iterator = None
        raise ConfigError(
            "the datamodule's train_dataloader() is empty: no held-out batch for meta weighting"
        )

    def weights(
        self,
        network: nn.Module,
        run: Run,
        batch: dict[str, Tensor],
        heldout: dict[str, Tensor],
        domain_targets: Tensor | None,
        param_names: Sequence[str] | None,
        engine: MetaEngine | None = None,
    ) -> MetaWeights:
        """The meta weights of ``batch`` against ``heldout`` over the parameters ``param_names`` (the
        part's scope is ``self.param_names``); ``engine`` overrides the part's own."""
        train = dict(batch) if domain_targets is None else {**batch, "domain_targets": domain_targets}

        def rows_of(tensors: dict[str, Tensor], rows: Tensor | None) -> dict[str, Tensor]:
            return tensors if rows is None else {k: v[rows] for k, v in tensors.items()}

        def train_losses(network: Any, rows: Tensor | None) -> Tensor:
            part = rows_of(train, rows)
            return self.domain.per_instance(run(part, network), part["labels"], part.get("domain_targets"))

        def heldout_losses(network: Any, rows: Tensor | None) -> Tensor:
            part = rows_of(heldout, rows)
            return per_instance_cross_entropy(run(part, network).logits, part["labels"])

        return meta_instance_weights(
            network,
            train_losses,
            heldout_losses,
            inner_lr=self.inner_lr,
            heldout=self.heldout,
            train_domains=batch["domain_ids"],
            heldout_domains=heldout["domain_ids"],
            engine=engine or self.engine,
            param_names=param_names,
        )
