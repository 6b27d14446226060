"""Distillation methods as data: a method is a list of stages, a stage a list of loss terms.

The objective of a training step in stage ``s`` is

    L = (1/B) sum_i v_i * w_i * sum_k c_k * l_k,i

over the stage's loss terms ``k`` (each a per-instance loss ``l_k,i`` with its weight ``c_k``), where
``w_i`` are the method's instance weights in a ``weighted`` stage and 1 otherwise, and ``v_i`` the data's
example weights (1, unless a transfer set weights its examples: the datamodule's
``train_example_weights``, logged as ``train/example_weight_mean``). Every term is logged
as ``train/loss_<name>`` (its batch mean before ``c_k``); a term whose weight is 0 is switched off
(nothing is built or computed for it, and it logs 0) unless it is a ``monitor`` term, which is
computed and logged but adds nothing. A weighted stage logs ``train/weight_mean``.

Stages run one after another: each for its ``epochs`` (the last one for the rest of the run), at its
learning rate. A stage with ``selects_model=False`` (e.g. an intermediate stage, whose classifier is not
trained) logs ``val/acc`` as 0 and its real dev accuracy as ``val/stage1_acc`` (the historical name),
so that checkpoint selection on ``val/acc`` picks an epoch of a later stage.

Writing a method (one file, e.g. ``metakd/distill/pkd.py``)::

    @DISTILLERS.register("mykd")
    class MyKD(Distiller):
        label = "my KD"
        teacher_role = "mixed"         # the benchmark pipeline's default teacher for its rows

        def __init__(self, temperature: float = 2.0, prediction_lr: float = 3e-5) -> None:
            self.temperature, self.lr = temperature, prediction_lr

        def stages(self) -> list[Stage]:
            return [Stage("prediction", [LogitKD(1.0, self.temperature), HardCE(0.5)], lr=self.lr)]

Constructor arguments named like a ``metakd.Student`` argument (``temperature``, ``prediction_lr``,
``matches``, ...) receive its value; others come from ``model.init_args.distillation_options``. A YAML
config names the method by its registered name or by a dotted class path
(``distillation: mypackage.methods.MyKD``), so users add methods without editing metakd.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from metakd.errors import StudentConfigError
from metakd.utils import Registry

if TYPE_CHECKING:  # pragma: no cover
    from metakd.students.base import StudentModel, StudentOutput
    from metakd.teachers import FrozenTeacher, TeacherOutputs

TEACHER_ROLES: dict[str, str] = {
    "single": "single-domain teacher",
    "mixed": "mixed teacher",
    "meta": "meta-teacher",
}
"""Teachers the benchmark pipeline trains, by role, with the words a table row uses for them."""


@dataclass
class DistillContext:
    """What a method sees when the Student is built: the student, the teacher (None without one)."""

    student: StudentModel
    teacher: FrozenTeacher | None
    num_labels: int


@dataclass
class StepContext:
    """One training step's inputs to the loss terms."""

    batch: Mapping[str, Tensor]
    student: StudentOutput
    teacher: TeacherOutputs | None
    modules: Mapping[str, nn.Module]

    @property
    def attention_mask(self) -> Tensor:
        return self.batch["attention_mask"]


class LossTerm:
    """One per-instance loss of a stage (``__call__`` returns shape (B,)).

    Attributes:
        name: logged as ``train/loss_<name>``.
        weight: ``c_k`` in the stage's sum; 0 switches the term off (unless ``monitor``).
        monitor: compute and log the term even with weight 0.
    """

    name: str = "term"
    student_needs: frozenset[str] = frozenset()
    teacher_needs: frozenset[str] = frozenset()

    def __init__(self, weight: float = 1.0, name: str | None = None, monitor: bool = False) -> None:
        self.weight = float(weight)
        self.monitor = monitor
        if name is not None:
            self.name = name

    @property
    def active(self) -> bool:
        return self.weight != 0.0 or self.monitor

    def teacher_layers(self) -> tuple[frozenset[int], frozenset[int]]:
        """``(hidden layers, attention layers)`` of the teacher this term reads (cache trimming)."""
        return frozenset(), frozenset()

    def build(self, ctx: DistillContext) -> dict[str, nn.Module]:
        """Trainable modules this term needs (projections, heads), registered on the Student by name."""
        return {}

    def __call__(self, step: StepContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Stage:
    """A phase of training: loss terms, length, learning rate.

    Attributes:
        name: e.g. ``intermediate`` or ``prediction`` (selectable with ``model.init_args.stage``).
        terms: the loss terms summed in this stage.
        epochs: epochs of this stage; None for the last stage (the rest of the run).
        lr: the stage's constant learning rate.
        weighted: multiply the per-instance loss by the method's instance weights.
        selects_model: False: ``val/acc`` is logged as 0 during this stage (see the module docstring).
        trains: the parts of the student (``StudentModel.parts()``) that train in this stage; the Student
            freezes its other parameters when the stage starts (they get no gradient, so the optimiser
            does not step them). None: every parameter the architecture left trainable. The method's own
            modules (projections, heads) always train.
    """

    name: str
    terms: list[LossTerm]
    epochs: int | None = None
    lr: float = 3e-5
    weighted: bool = False
    selects_model: bool = True
    trains: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.trains is not None:
            self.trains = frozenset(self.trains)

    @property
    def active_terms(self) -> list[LossTerm]:
        return [term for term in self.terms if term.active]

    def student_needs(self) -> frozenset[str]:
        return frozenset().union(*(t.student_needs for t in self.active_terms))

    def teacher_needs(self) -> frozenset[str]:
        return frozenset().union(*(t.teacher_needs for t in self.active_terms))


class Distiller:
    """A distillation method: its stages of loss terms and, optionally, per-instance weights.

    Class attributes: ``label`` (the table row's words), ``teacher_role`` (which teacher the benchmark
    pipeline distils it from: ``single``, ``mixed``, ``meta``, or None for a method without one).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    teacher_role: ClassVar[str | None] = None

    def stages(self) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def instance_weights(self, step: StepContext) -> Tensor | None:
        """Per-instance weights (B,) for weighted stages; None: uniform."""
        return None

    def setup(
        self, teacher: FrozenTeacher | None, datamodule: Any, stages: list[Stage], device: Any = None
    ) -> None:
        """Called at the start of ``fit`` with the stages that will run (e.g. read t_i once)."""

    def on_train_batch_start(self, module: Any, batch: Mapping[str, Tensor], stage: Stage) -> None:
        """A per-batch hook (e.g. a replacement rate that follows the step)."""

    def check(self, context: DistillContext) -> None:
        """Called once when the Student is built: refuse (``StudentConfigError``) a student or teacher
        this method cannot train for a reason its loss terms do not declare (e.g. a method that drives
        a module-replacing architecture). Default: nothing."""


DISTILLERS: Registry[type[Distiller]] = Registry("distillation method")
"""Distillation methods by name; ``metakd/distill/*.py`` register the built-in ones."""


def register_distiller(name: str) -> Any:
    """Class decorator: register a :class:`Distiller` under ``name`` (sets its ``name``)."""

    def decorator(cls: type[Distiller]) -> type[Distiller]:
        cls.name = name
        return DISTILLERS.register(name)(cls)

    return decorator


def distiller_class(name: str) -> type[Distiller]:
    """A registered method name or a dotted class path, checked to be a :class:`Distiller`. (The built-in
    methods are registered: this module is imported through the ``metakd.distill`` package, whose
    ``__init__`` imports every method file.)"""
    try:
        cls = DISTILLERS.get(name)
    except KeyError as err:
        raise StudentConfigError(
            f"distillation must be one of {sorted(DISTILLERS.names())}, got {name!r} ({err.args[0]})"
        ) from None
    if not (inspect.isclass(cls) and issubclass(cls, Distiller)):
        raise StudentConfigError(f"distillation {name!r} is {cls!r}, not a metakd.distill.Distiller subclass")
    return cls


def build_distiller(
    name: str,
    shared: Mapping[str, Any],
    options: Mapping[str, Any] | None,
    strict: tuple[str, ...] = (),
) -> Distiller:
    """Instantiate a method: ``shared`` (the Student's arguments) fill the constructor arguments of the
    same name (None values are left to the method's defaults); ``options`` (``distillation_options``)
    must all be constructor arguments, and so must the ``strict`` shared arguments that are set."""
    cls = distiller_class(name)
    parameters = {p for p in inspect.signature(cls.__init__).parameters if p != "self"}
    options = dict(options or {})
    unknown = sorted(set(options) - parameters)
    if unknown:
        raise StudentConfigError(
            f"model.init_args.distillation_options: {cls.__name__} ({name!r}) takes no {unknown}; its "
            f"options: {sorted(parameters)}"
        )
    refused = sorted(key for key in strict if shared.get(key) is not None and key not in parameters)
    refused = [key for key in refused if key != "stage"]  # the Student selects stages itself
    if refused:
        raise StudentConfigError(
            f"distillation={name!r} takes no {refused} (model.init_args); {cls.__name__}'s options: "
            f"{sorted(parameters)}"
        )
    kwargs = {key: value for key, value in shared.items() if key in parameters and value is not None}
    kwargs.update(options)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise StudentConfigError(f"cannot build the distillation method {name!r}: {err}") from err


# Student arguments a method may not take. A value other than "unset" (None, or the default these had
# before the method registry, which older checkpoints' hyperparameters carry) is the user's, and a
# method that takes no such argument refuses it instead of ignoring it.
STUDENT_ARGUMENTS_UNSET = {"stage": None, "matches": None, "temperature": 1.0, "t2_scaling": False,
                           "hard_label_weight": 0.0, "instance_weighting": None,
                           "use_transferable": None}  # fmt: skip


def distiller_from_arguments(
    name: str, arguments: Mapping[str, Any], options: Mapping[str, Any] | None
) -> Distiller:
    """The method ``name`` built from the Student's ``arguments`` (those of its constructor arguments,
    see :func:`build_distiller`) and ``distillation_options``; a Student argument the method does not
    take is refused when it is set (:data:`STUDENT_ARGUMENTS_UNSET`)."""
    strict = tuple(
        key
        for key, unset in STUDENT_ARGUMENTS_UNSET.items()
        if arguments.get(key) is not None and arguments[key] != unset
    )
    return build_distiller(name, arguments, options, strict=strict)


def check_needs(
    distiller: Distiller, stages: list[Stage], student: StudentModel, teacher: FrozenTeacher | None
) -> None:
    """Refuse, at construction, a method whose terms need a student or teacher feature that is missing,
    or whose stages train parts the student does not have."""
    for stage in stages:
        if stage.trains is not None:
            parts = set(student.parts())
            unknown = sorted(stage.trains - parts)
            if unknown:
                raise StudentConfigError(
                    f"distillation {distiller.name!r} (stage {stage.name!r}) trains the student's parts "
                    f"{unknown}, but the student {type(student).__name__} has parts {sorted(parts)}"
                )
        for term in stage.active_terms:
            missing = term.student_needs - student.provides
            if missing:
                raise StudentConfigError(
                    f"distillation {distiller.name!r} (stage {stage.name!r}, term {term.name!r}) needs the "
                    f"student's {sorted(missing)}, but the student {type(student).__name__} provides "
                    f"{sorted(student.provides)} (and logits)"
                )
            if not term.teacher_needs:
                continue
            if teacher is None:
                raise StudentConfigError(
                    f"distillation={distiller.name!r} needs model.teacher_ckpt (a MetaTeacher checkpoint or "
                    "an "
                    "HF classifier); only distillation='none' trains without a teacher"
                )
            missing = term.teacher_needs - teacher.provides
            if missing:
                raise StudentConfigError(
                    f"distillation {distiller.name!r} (stage {stage.name!r}, term {term.name!r}) needs the "
                    f"teacher's {sorted(missing)}, which the teacher {teacher.source!r} "
                    f"({type(teacher.module).__name__}) does not provide "
                    f"(it provides {sorted(teacher.provides)});"
                    " the transferable-knowledge term needs a MetaTeacher's domain heads"
                )


def stage_loss(
    stage: Stage, step: StepContext, weights: Tensor | None, example_weights: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(L, logs)``: the stage objective of the module docstring and ``train/loss_<term>`` values;
    ``weights`` are w_i (used in a weighted stage), ``example_weights`` v_i (always used)."""
    total: Tensor | None = None
    logs: dict[str, Tensor] = {}
    for term in stage.terms:
        if not term.active:
            logs[f"train/loss_{term.name}"] = torch.zeros(())
            continue
        value = term(step)
        batch = step.batch["labels"].shape[0]
        if value.shape != (batch,):
            raise StudentConfigError(
                f"loss term {term.name!r} returned shape {tuple(value.shape)}; a loss term must return "
                "one value "
                f"per instance, shape ({batch},)"
            )
        logs[f"train/loss_{term.name}"] = value.detach().mean()
        if term.weight != 0.0:
            contribution = value if term.weight == 1.0 else term.weight * value
            total = contribution if total is None else total + contribution
    if total is None:
        raise StudentConfigError(f"stage {stage.name!r} has no active loss term with a non-zero weight")
    if stage.weighted:
        if weights is not None:
            if weights.shape != total.shape:
                raise StudentConfigError(
                    f"instance weights {tuple(weights.shape)} != losses {tuple(total.shape)}"
                )
            total = weights * total
        logs["train/weight_mean"] = weights.detach().mean() if weights is not None else torch.ones(())
    if example_weights is not None:
        total = example_weights * total
        logs["train/example_weight_mean"] = example_weights.detach().mean()
    return total.mean(), logs


@dataclass
class StageSchedule:
    """Which stage runs in which epoch (each stage for its ``epochs``, the last one for the rest)."""

    stages: list[Stage] = field(default_factory=list)

    def at_epoch(self, epoch: int) -> Stage:
        start = 0
        for stage in self.stages[:-1]:
            if stage.epochs is None or epoch < start + stage.epochs:
                return stage
            start += stage.epochs
        return self.stages[-1]

    def check_epochs(self, max_epochs: int | None) -> None:
        """Every stage must get at least one epoch of ``trainer.max_epochs``."""
        if len(self.stages) < 2 or max_epochs is None or max_epochs <= 0:
            return
        before = sum(stage.epochs or 0 for stage in self.stages[:-1])
        if max_epochs <= before:
            names = " + ".join(stage.name for stage in self.stages[:-1])
            raise StudentConfigError(
                f"the {names} stage runs {before} epoch(s) first, but trainer.max_epochs={max_epochs} leaves "
                f"none for the {self.stages[-1].name} stage (stage 'both' with intermediate_epochs={before})"
            )


def select_stages(method: str, stages: list[Stage], stage: str | None) -> list[Stage]:
    """The method's stages that run: all (``stage`` None or ``both``) or the one named ``stage``."""
    names = [s.name for s in stages]
    if stage is None or (stage == "both" and names == ["intermediate", "prediction"]):
        return stages
    if stage in names:
        return [s for s in stages if s.name == stage]
    missing = "intermediate-layer" if stage in ("both", "intermediate") else repr(stage)
    raise StudentConfigError(
        f"distillation={method!r} has no {missing} stage; its stages: {names} "
        f"(use stage: {names[-1]}, or leave stage unset for all of them)"
    )


def teacher_request(stage: Stage) -> Any:
    """What a stage reads from the teacher (features beyond logits and which layers)."""
    hidden: set[int] = set()
    attention: set[int] = set()
    for term in stage.active_terms:
        h, a = term.teacher_layers()
        hidden |= h
        attention |= a
    from metakd.teachers import TeacherRequest

    return TeacherRequest(stage.teacher_needs() - {"logits"}, frozenset(hidden), frozenset(attention))


def build_term_modules(stages: list[Stage], context: DistillContext) -> dict[str, nn.Module]:
    """The trainable modules the active terms of ``stages`` build, by name (first builder wins)."""
    modules: dict[str, nn.Module] = {}
    for stage in stages:
        for term in stage.active_terms:
            for name, module in term.build(context).items():
                modules.setdefault(name, module)
    return modules
