"""The student of a distillation: a Lightning *system* that wires a **method** (``distillation``: a
:class:`~metakd.distill.Distiller`, stages of loss terms with optional instance weights), a **student
architecture** (``student_model``: a :class:`~metakd.students.StudentModel`; by default the BERT student
of ``student_backbone`` / ``student_layers`` / ``student_config``) and a **teacher** (``teacher_ckpt``: a
MetaTeacher checkpoint or any HF classifier, :class:`~metakd.teachers.FrozenTeacher`). The contracts
between them: docs/ARCHITECTURE.md. The teacher is kept out of the module tree (not in the
``state_dict``, the optimiser or the DDP wrapper).

Model selection: ``val/acc`` is the accuracy on the target domain's dev examples, ``test/acc`` likewise.
During a stage that does not train the classifier (the intermediate stage) ``val/acc`` is logged as 0
and the real value as ``val/stage1_acc`` (a historical name), so that ``ModelCheckpoint(monitor=
"val/acc")`` selects a prediction-stage epoch. DDP: a two-stage run leaves some parameters unused in
each stage, so it needs ``strategy: ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from metakd.backbones import DEFAULT_BACKBONE
from metakd.checkpointing import load_student_weights
from metakd.distill.base import (
    DistillContext,
    Stage,
    StageSchedule,
    StepContext,
    build_term_modules,
    check_needs,
    distiller_from_arguments,
    select_stages,
    stage_loss,
    teacher_request,
)
from metakd.distill.layer_maps import LayerMatch, coerce_match
from metakd.errors import StudentConfigError, TeacherCheckpointError
from metakd.evaluation import TargetDomainEvaluation
from metakd.students import student_from_arguments
from metakd.students.base import StudentOutput, checkpoint_payload, spec_needs_teacher
from metakd.students.hf import HFStudent, build_student_model  # noqa: F401  (historical import path)
from metakd.teacher_sources import load_teacher, recompute_transferability  # noqa: F401  (historical paths)
from metakd.teachers import FrozenTeacher
from metakd.utils import adamw_param_groups
from metakd.validation import check_student_options, data_names

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KEY", "Student", "StudentConfigError", "TeacherCheckpointError"]

CacheMode = Literal["none", "logits", "all"]
CHECKPOINT_KEY = "metakd_student"
"""Key of the student's export metadata in its Lightning checkpoint (architecture, labels, tokenizer)."""


class Student(TargetDomainEvaluation, pl.LightningModule):
    """A student distilled per target domain (Meta-KD and its baselines; any registered method).

    Args:
        teacher_ckpt: a ``MetaTeacher`` checkpoint or an HF sequence classifier (directory or hub name);
            None for methods without a teacher (``none``).
        num_labels, num_domains, domain_names, label_names, target_domain, tokenizer_name: the data's
            (linked from the datamodule); the label set and vocabulary must be the teacher's, and the
            target domain a MetaTeacher's domain unless ``teacher_domain`` names its stand-in.
        student_backbone, student_layers, student_config: the default BERT student: ``student_layers``
            of ``student_backbone`` (e.g. ``[0, 5]``, or n for the first n), or
            ``BertConfig(**student_config)``.
        student_model: another architecture, ``{class_path: <name or dotted path>, init_args: {...}}``.
        distillation: a method of the ``metakd.distill`` registry (``meta``, ``tinybert``, ``vanilla``,
            ``none``, ...) or a dotted class path of a ``Distiller``.
        distillation_options: the method's own options (its constructor arguments).
        stage: run only this stage (``intermediate`` | ``prediction``); ``both``/None: all of them.
        intermediate_epochs, intermediate_lr, prediction_lr: the two stages' length and constant LRs.
        init_from: a Student checkpoint to start from (weights only).
        matches: the layer map (``LayerMatch`` list); None = uniform.
        lambda_tk, instance_weighting, use_transferable: Meta-KD's transferable term and switches.
        temperature, t2_scaling, hard_label_weight: the prediction-layer KD (None: the method's default;
            the Meta-KD presets use 1.0, no T^2, 0).
        weight_decay: AdamW weight decay (not on biases and norms).
        cache_teacher_outputs, cache_dir: cache ``none`` / ``logits`` / ``all`` (token features too) of
            the teacher's outputs on the training set, in memory and (logits) in ``cache_dir``.
        teacher_domain: the teacher domain whose embedding E[d] stands for the target domain.
    """

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        num_labels: int = 2,
        num_domains: int = 1,
        domain_names: list[str] | None = None,
        label_names: list[str] | None = None,
        target_domain: str | None = None,
        tokenizer_name: str | None = None,
        student_backbone: str = DEFAULT_BACKBONE,
        student_layers: list[int] | int | None = None,
        student_config: dict[str, Any] | None = None,
        distillation: str = "meta",
        stage: str | None = None,
        intermediate_epochs: int = 10,
        init_from: str | None = None,
        matches: list[LayerMatch] | None = None,
        lambda_tk: float = 0.5,
        temperature: float | None = None,
        t2_scaling: bool | None = None,
        hard_label_weight: float | None = None,
        instance_weighting: bool | None = None,
        use_transferable: bool | None = None,
        intermediate_lr: float = 5e-5,
        prediction_lr: float = 3e-5,
        weight_decay: float = 0.0,
        cache_teacher_outputs: CacheMode = "logits",
        cache_dir: str | None = None,
        teacher_domain: str | None = None,
        student_model: dict[str, Any] | None = None,
        distillation_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        numbers = {
            "intermediate_lr": intermediate_lr,
            "prediction_lr": prediction_lr,
            "lambda_tk": lambda_tk,
            "weight_decay": weight_decay,
            "temperature": temperature,
            "hard_label_weight": hard_label_weight,
            "intermediate_epochs": intermediate_epochs,
        }
        check_student_options(**{name: value for name, value in numbers.items() if value is not None})
        if matches is not None:  # plain dicts in the checkpoint (loadable with weights_only=True)
            self.hparams["matches"] = [asdict(coerce_match(m)) for m in matches]
        self.label_names, self.domain_names = data_names(
            num_labels, num_domains, label_names, domain_names, target_domain
        )

        # The method and the stages that run (from the arguments, not self.hparams: inside LightningCLI
        # save_hyperparameters records the config's values, which may omit defaults).
        arguments = {
            "stage": stage,
            "matches": None if matches is None else [coerce_match(m) for m in matches],
            "temperature": temperature,
            "t2_scaling": t2_scaling,
            "hard_label_weight": hard_label_weight,
            "instance_weighting": instance_weighting,
            "use_transferable": use_transferable,
            "intermediate_epochs": intermediate_epochs,
            "lambda_tk": lambda_tk,
            "intermediate_lr": intermediate_lr,
            "prediction_lr": prediction_lr,
        }
        self.distiller = distiller_from_arguments(distillation, arguments, distillation_options)
        self.stages = select_stages(distillation, self.distiller.stages(), stage)
        self.schedule = StageSchedule(self.stages)
        self.reads_teacher = any(stage.teacher_needs() for stage in self.stages)
        # The teacher (loaded before the student is built: both draw from the global RNG, in this order).
        self.teacher_source = teacher_for_student(
            teacher_ckpt, distillation, self.reads_teacher, student_model, self.label_names,
            self.domain_names, target_domain, teacher_domain,
        )  # fmt: skip
        self.tokenizer_name = tokenizer_name or (self.teacher_source and self.teacher_source.tokenizer_name)
        self.tokenizer_name = self.tokenizer_name or student_backbone
        if self.teacher_source is not None:
            self.teacher_source.check_tokenizer(self.tokenizer_name)
            requests = [teacher_request(s) for s in self.stages if s.teacher_needs()]
            self.teacher_source.check_own_tokens(cache_teacher_outputs, requests)

        self.num_labels = num_labels
        self.model = student_from_arguments(
            student_model,
            student_backbone,
            student_layers,
            student_config,
            self.label_names,
            self.tokenizer_name,
        )
        if self.teacher_source is not None:
            self.model.bind_teacher(self.teacher_source)
        check_needs(self.distiller, self.stages, self.model, self.teacher_source)
        self._build_distillation_modules()

        domain_map = self.teacher_source.domain_map if self.teacher_source is not None else None
        self.teacher_domain_map = domain_map if domain_map is not None else torch.full((num_domains,), -1)
        self.init_evaluation(num_labels, target_domain, self.domain_names)
        if init_from is not None:
            load_student_weights(self, init_from)
        # What the architecture left trainable: the parameters a stage with `trains` may unfreeze.
        self._trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
        self._example_weights: Tensor | None = None  # the data's v_i by example id (a weighted transfer set)

    # ---------------------------------------------------------------------------------------------
    # construction

    def _build_distillation_modules(self) -> None:
        """Register the trainable modules the terms need (projections, heads); what each stage needs from
        the student and the teacher."""
        context = DistillContext(self.model, self.teacher_source, self.num_labels)
        self.distiller.check(context)
        built = build_term_modules(self.stages, context)
        for name, module in built.items():
            self.add_module(name, module)
        self.distillation_modules = built
        self.student_needs = {stage.name: stage.student_needs() for stage in self.stages}
        self.teacher_requests = {stage.name: teacher_request(stage) for stage in self.stages}
        self.model.prepare(frozenset().union(*self.student_needs.values()))
        for request in self.teacher_requests.values() if self.teacher_source is not None else ():
            self.teacher_source.prepare(request)

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher module (not a submodule), or None for a method without a teacher."""
        return None if self.teacher_source is None else self.teacher_source.module

    # ---------------------------------------------------------------------------------------------
    # stages, optimiser, fit set-up

    def current_stage(self) -> Stage:
        return self.schedule.at_epoch(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW at the current stage's constant learning rate (no decay on biases and norms)."""
        groups = adamw_param_groups(self.named_parameters(), self.hparams.weight_decay)
        return torch.optim.AdamW(groups, lr=self.current_stage().lr)

    def on_fit_start(self) -> None:
        self.schedule.check_epochs(self.trainer.max_epochs)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.teacher_source is not None:
            self.teacher_source.to(self.device)
        self.distiller.setup(self.teacher_source, datamodule, self.stages, self.device)
        weights = getattr(datamodule, "train_example_weights", None)
        self._example_weights = None if weights is None else weights.to(self.device)
        if self.teacher_source is not None and self.reads_teacher:
            self.teacher_source.setup_cache(
                self.hparams.cache_teacher_outputs, datamodule, self.num_labels, self.hparams.cache_dir
            )

    def on_train_epoch_start(self) -> None:
        stage = self.current_stage()
        optimizers = self.optimizers(use_pl_optimizer=False)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = stage.lr
        self._train_parts(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        request = self.teacher_requests[stage.name]
        if (
            self.teacher_source is not None
            and stage.teacher_needs()
            and request.logits_only
            and hasattr(datamodule, "train_eval_dataloader")
        ):
            view = self.teacher_source.view(datamodule)  # the teacher's own tokenization, if it needs one
            self.teacher_source.prefill_logits(view.train_eval_dataloader(), self.device)

    def _train_parts(self, stage: Stage) -> None:
        """Only the stage's ``trains`` parts train (all that the architecture left trainable without)."""
        if any(s.trains is not None for s in self.stages):
            self.model.train_parts(stage.trains, self._trainable)

    def on_train_epoch_end(self) -> None:
        if self.teacher_source is not None and self.global_rank == 0:
            self.teacher_source.save_cache()

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.distiller.on_train_batch_start(self, batch, self.current_stage())

    # ---------------------------------------------------------------------------------------------
    # steps

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        need: frozenset[str] = frozenset(),
    ) -> StudentOutput:
        """The student's forward (:class:`~metakd.students.StudentOutput`)."""
        return self.model(input_ids, attention_mask, token_type_ids, need=need)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        stage = self.current_stage()
        student = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                       need=self.student_needs[stage.name])  # fmt: skip
        request = self.teacher_requests[stage.name]
        teacher = None
        if stage.teacher_needs():
            teacher = self.teacher_source.outputs(batch, request)
        step = StepContext(batch, student, teacher, self.distillation_modules)
        weights = self.distiller.instance_weights(step) if stage.weighted else None
        data_weights = self._example_weights
        example_weights = None if data_weights is None else data_weights[batch["example_ids"]]
        loss, logs = stage_loss(stage, step, weights, example_weights)
        batch_size = batch["labels"].shape[0]
        self.log_dict(logs, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_validation_epoch_end(self) -> None:
        accuracy = self._compute(self.val_acc, "dev")
        if not self.current_stage().selects_model and not self.trainer.sanity_checking:
            self.log("val/stage1_acc", accuracy)  # this stage does not train the classifier
            self.log("val/acc", torch.zeros(()), prog_bar=True)
            return
        self.log("val/acc", accuracy, prog_bar=True)
        self._log_target_domain_metric("val", accuracy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What `python -m metakd export` needs, without re-instantiating the Student (or its teacher).
        checkpoint[CHECKPOINT_KEY] = checkpoint_payload(
            self.model,
            self.label_names,
            self.tokenizer_name,
            self.hparams.target_domain,
            self.hparams.distillation,
        )


def teacher_for_student(
    teacher_ckpt: str | None,
    distillation: str,
    reads_teacher: bool,
    student_model: dict[str, Any] | None,
    label_names: list[str],
    domain_names: list[str],
    target_domain: str | None,
    teacher_domain: str | None,
) -> FrozenTeacher | None:
    """The teacher a Student loads: when a stage's loss reads it (``reads_teacher``) or the architecture
    is built around it (``StudentModel.needs_teacher``); None otherwise. A missing ``teacher_ckpt`` is
    refused, naming what needs it."""
    if reads_teacher and teacher_ckpt is None:
        raise StudentConfigError(
            f"distillation={distillation!r} needs model.teacher_ckpt (a MetaTeacher checkpoint or an HF "
            "classifier); only distillation='none' trains without a teacher"
        )
    architecture_needs_teacher = spec_needs_teacher(student_model)
    if architecture_needs_teacher and teacher_ckpt is None:
        raise StudentConfigError(
            f"the student architecture {student_model['class_path']!r} (model.student_model) is built "
            "around its teacher: set model.teacher_ckpt (a MetaTeacher checkpoint or an HF classifier)"
        )
    if not (reads_teacher or architecture_needs_teacher):
        if teacher_ckpt is not None:
            log.info("distillation=%r: the teacher %s is not used", distillation, teacher_ckpt)
        return None
    return FrozenTeacher(teacher_ckpt, label_names, domain_names, target_domain, teacher_domain)
