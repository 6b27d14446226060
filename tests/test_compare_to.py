"""`compare_to` names the reference row of the paired intervals: a method, or one `variants` entry."""

from __future__ import annotations

from metakd.pipeline.analysis import reference_rows
from metakd.pipeline.tables import Row

CELLS = {"books": "x"}


def rows() -> list[Row]:
    return [
        Row("teacher_meta", "t", "teacher", CELLS),
        Row("student_none", "n", "student", CELLS, method="none"),
        Row("student_cnn_metaw", "w", "student", CELLS, method="meta_logit"),
        Row("student_cnn_metaw_transfer", "wt", "student", CELLS, method="meta_logit"),
        Row("student_meta@A", "m", "student", CELLS, budget="A", method="meta"),
        Row("student_meta@B", "m", "student", CELLS, budget="B", method="meta"),
    ]


def test_a_method_names_its_rows_per_budget_and_a_variant_names_its_own_row() -> None:
    assert {b: r.key for b, r in reference_rows({"compare_to": "meta"}, rows()).items()} == {
        "A": "student_meta@A",
        "B": "student_meta@B",
    }
    by_variant = reference_rows({"compare_to": "cnn_metaw"}, rows())
    assert {b: r.key for b, r in by_variant.items()} == {None: "student_cnn_metaw"}
    by_method = reference_rows({"compare_to": "meta_logit"}, rows())  # two variants: the last one
    assert {b: r.key for b, r in by_method.items()} == {None: "student_cnn_metaw_transfer"}
