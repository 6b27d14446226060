"""The benchmark pipeline, ``python -m metakd pipeline --config configs/amazon/benchmark.yaml``.

Trains the paper's comparison on one split, seed and step budget and writes a results JSON and a
Markdown table (rows = methods, columns = target domains + average; test accuracy, selected on dev):

- teachers: single-domain (one per domain: ``weighting: none``, ``domain_loss: none``,
  ``data.target_domain``), mixed-domain (``weighting: none``, ``domain_loss: none``), meta-teacher
  (the defaults);
- students per domain, one row per method of ``methods`` (default: the paper's fine-tuning without KD,
  vanilla KD, TinyBERT-KD and Meta-KD; or any other method of the ``metakd.distill`` registry),
  each distilled from the teacher its registry entry names (``teacher_role``: the mixed-domain teacher,
  that domain's single-domain teacher, the meta-teacher, or none) and labelled by its entry;
- budgets (``budgets: [A, B]``): B gives every student the same total epochs, A the same
  prediction-stage epochs with a staged method's intermediate stage on top (its own cells);
- optional studies (``studies: [main, scarcity, zero_shot, ablation]``): data scarcity (rows of
  ``methods`` or ``variants``, e.g. Meta-KD vs TinyBERT-KD or with augmentation, on one or more target
  domains at several ``train_fraction``; PNG plot when matplotlib is installed),
  zero-shot (a meta-teacher trained without the target domain, the student distilled with
  ``teacher_domain``) and ablations (``extra_teachers`` and the rows named in ``ablations``).

Every seed trains its own teachers and students. The report gives mean ± std over seeds, paired bootstrap
intervals of Meta-KD minus each other row from the cells' per-example predictions, CPU minutes per row, the
teachers' dev curves, and warnings about teachers whose dev accuracy is below the no-KD student's.

Each *cell* is one model, kept in the cell store under its key (its resolved config and seed: a cell that
another config or study already finished is reused, not trained again), with ``cell.yaml`` (the exact, fully
merged LightningCLI config), the logs of ``python -m metakd fit --config cell.yaml`` and ``python -m metakd
test --config cell.yaml --ckpt_path best``, and its result once both succeeded; ``<runs_dir>/<name>/<seed>/
<cell>`` links to it. A finished cell is skipped, so an interrupted pipeline continues where it stopped (a
fit cut off mid-way resumes from its ``last.ckpt``). Test metrics, the dev curve and the per-example test
predictions are written by callbacks placed in the cell's config (:class:`TestMetricsWriter`,
:class:`DevCurveWriter`, :class:`PredictionsWriter`; no log parsing).

The rooms (docs/ARCHITECTURE.md draws the map: which imports which, with no circle):

- :mod:`.config`: reading and checking a pipeline config; what a row (``methods``, ``variants``) means;
- :mod:`.plan`: the cells of one seed and what each needs; ``--kinds``/``--cells`` selection; priorities;
- :mod:`.writers`: the callbacks a cell records its test metrics, dev curve and predictions with;
- :mod:`.cellstore` (keys, result files) and :mod:`.store` (a planned cell's config, key, folders, result);
- :mod:`.invoke`, :mod:`.robustness`, :mod:`.runner`: running one cell (a metakd command in a subprocess or
  in this process, its attack, its result);
- :mod:`.costs` (the cost model) and :mod:`.ledger` (the CPU plan: every cell's state, estimate and
  priority, the totals, what fits in ``--max-cpu-minutes``);
- :mod:`.progress`: the run's progress lines and ETA; :mod:`.ray_runner` and :mod:`.run`: every cell, in
  priority order, one after another or on Ray;
- the report: :mod:`.analysis` (intervals, costs, curves, warnings), :mod:`.scarcity_report` (the scarcity
  study's pairs and L2A selections), :mod:`.tables` (the summary), :mod:`.formats`, :mod:`.markdown`,
  :mod:`.report` (the files);
- :mod:`.command`: the command line.

This package's names are its public face: ``from metakd import pipeline`` gives the functions of every room
below, and the class paths ``metakd.pipeline.TestMetricsWriter`` etc. in cells' configs resolve here.
"""

from __future__ import annotations

from metakd.pipeline.analysis import RESAMPLES
from metakd.pipeline.cellstore import package_versions
from metakd.pipeline.command import build_parser, main
from metakd.pipeline.config import (
    BUDGETS,
    DEFAULT_METHODS,
    DEFAULTS_FILE,
    KEEP_CHECKPOINTS,
    STUDIES,
    TEACHER_ROWS,
    PipelineError,
    RowSpec,
    check_choices,
    deep_merge,
    is_staged,
    load_pipeline_config,
    main_rows,
    method_entry,
    read_extended,
    registered_methods,
    row_spec,
    scarcity_settings,
    zero_shot_settings,
)
from metakd.pipeline.formats import format_seconds
from metakd.pipeline.invoke import output_to, run_cli
from metakd.pipeline.ledger import cost_model, cpu_plan, render_plan, within_budget
from metakd.pipeline.markdown import REPORT_END_OF_PRINTED, budget_line, render_markdown
from metakd.pipeline.plan import (
    Cell,
    budget_overrides,
    main_cell_name,
    ordered_jobs,
    plan_cells,
    planned_cell,
    priorities,
    search_cell_name,
    selected,
    student_cell_name,
    zero_shot_cell_name,
)
from metakd.pipeline.progress import Progress, resume_note
from metakd.pipeline.report import write_results
from metakd.pipeline.robustness import robustness_domains, robustness_path, run_cell_robustness
from metakd.pipeline.run import run_all
from metakd.pipeline.runner import ensure_local, run_cell, run_cell_and_attack
from metakd.pipeline.store import (
    RESULT_FILE,
    RETRAINED_FILE,
    TEACHER_CKPT_PLACEHOLDER,
    best_checkpoint,
    cell_config,
    cell_dir,
    cell_identity,
    cell_key,
    cell_predictions,
    prune_checkpoints,
    read_result,
    results_store,
    search_cell_config,
    store_dir,
    store_path,
)
from metakd.pipeline.tables import Row, cell_accuracy, collect, report_test_set, row_accuracy, table_rows
from metakd.pipeline.writers import (
    DEV_CURVE_FILE,
    PREDICTIONS_FILE,
    TEST_METRICS_FILE,
    DevCurveWriter,
    PredictionsWriter,
    TestMetricsWriter,
    read_predictions,
    test_set_path,
)

__all__ = [
    "BUDGETS",
    "DEFAULTS_FILE",
    "DEFAULT_METHODS",
    "DEV_CURVE_FILE",
    "KEEP_CHECKPOINTS",
    "PREDICTIONS_FILE",
    "REPORT_END_OF_PRINTED",
    "RESAMPLES",
    "RESULT_FILE",
    "RETRAINED_FILE",
    "STUDIES",
    "TEACHER_CKPT_PLACEHOLDER",
    "TEACHER_ROWS",
    "TEST_METRICS_FILE",
    "Cell",
    "DevCurveWriter",
    "PipelineError",
    "PredictionsWriter",
    "Progress",
    "Row",
    "RowSpec",
    "TestMetricsWriter",
    "best_checkpoint",
    "budget_line",
    "budget_overrides",
    "build_parser",
    "cell_accuracy",
    "cell_config",
    "cell_dir",
    "cell_key",
    "cell_predictions",
    "cell_identity",
    "check_choices",
    "collect",
    "cost_model",
    "deep_merge",
    "ensure_local",
    "format_seconds",
    "is_staged",
    "cpu_plan",
    "load_pipeline_config",
    "main",
    "main_cell_name",
    "main_rows",
    "method_entry",
    "ordered_jobs",
    "output_to",
    "package_versions",
    "plan_cells",
    "planned_cell",
    "priorities",
    "prune_checkpoints",
    "read_extended",
    "read_predictions",
    "read_result",
    "registered_methods",
    "render_markdown",
    "render_plan",
    "report_test_set",
    "results_store",
    "resume_note",
    "robustness_domains",
    "robustness_path",
    "row_accuracy",
    "row_spec",
    "run_all",
    "run_cell",
    "run_cell_and_attack",
    "run_cell_robustness",
    "run_cli",
    "scarcity_settings",
    "search_cell_config",
    "search_cell_name",
    "selected",
    "store_dir",
    "store_path",
    "student_cell_name",
    "table_rows",
    "test_set_path",
    "within_budget",
    "write_results",
    "zero_shot_cell_name",
    "zero_shot_settings",
]
