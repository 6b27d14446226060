"""Property test of the JSONL/CSV readers: any file content either loads or raises DataError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules import DataError
from datamodules.readers import iter_records, label_index, require_field, require_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(st.sampled_from(["text", "label", "domain", "extra", ""]), json_values, max_size=4)
json_lines = st.lists(
    st.one_of(records.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=20).map(repr)),
    max_size=6,
)
csv_cells = st.text(alphabet=st.sampled_from(list('ab,"\n\r\t \ufeff\x00é')), max_size=12)


def _consume(path) -> None:
    for lineno, record in iter_records(path):
        for field in ("text", "label", "domain"):
            try:
                require_text(record, field, path, lineno)
            except DataError:
                pass
        try:
            label_index(require_field(record, "label", path, lineno), ["neg", "pos"], path, lineno)
        except DataError:
            pass


def _check(path) -> None:
    try:
        _consume(path)
    except DataError:
        pass


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=json_lines, raw=st.binary(max_size=40), bom=st.booleans())
def test_jsonl_loads_or_raises_data_error(tmp_path, lines, raw, bom):
    data = ("\ufeff" if bom else "").encode() + "\n".join(lines).encode("utf-8", "surrogatepass") + raw
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    _check(path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=csv_cells, rows=st.lists(csv_cells, max_size=5), bom=st.booleans())
def test_csv_loads_or_raises_data_error(tmp_path, header, rows, bom):
    text = ("\ufeff" if bom else "") + "\n".join([header, *rows])
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8", newline="")
    _check(path)
