"""Metadata shared by the assets: sortable tables with a schema, column schemas of table outputs, rounding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import polars as pl
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

_TYPES = ((bool, "bool"), (int, "int"), (float, "float"))


def _cell(v):
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if hasattr(v, "item"):  # numpy scalar
        return _cell(v.item())
    return str(v)


def _type(values) -> str:
    seen = {type(v) for v in values if v is not None}
    for py, name in _TYPES:
        if seen and seen <= {py} | ({int} if py is float else set()):
            return name
    return "string"


def table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, max_rows: int = 200) -> MetadataValue:
    """Rows of dicts as a Dagster table (sortable in the UI) with a schema; floats rounded to 4 decimals."""
    rows = [{k: _cell(v) for k, v in r.items()} for r in list(rows)[:max_rows]]
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    schema = TableSchema(columns=[TableColumn(str(c), _type([r.get(c) for r in rows])) for c in columns])
    return MetadataValue.table([TableRecord({str(c): r.get(c) for c in columns}) for r in rows], schema=schema)


def column_schema(frame, descriptions: Mapping[str, str]) -> TableSchema:
    """The `dagster/column_schema` of a table output (a polars frame or schema, or a pyarrow schema): each
    column's dtype and its description."""
    if isinstance(frame, pl.DataFrame):
        schema = frame.schema
    elif hasattr(frame, "names") and hasattr(frame, "field"):  # pyarrow.Schema
        schema = {f.name: f.type for f in frame}
    else:
        schema = frame
    return TableSchema(columns=[TableColumn(c, str(t), description=descriptions.get(c, "")) for c, t in schema.items()])


def describe(text: str, columns: Mapping[str, str]) -> str:
    """An asset description that lists every column of its output."""
    return text + " Columns: " + "; ".join(f"`{c}` {d}" for c, d in columns.items()) + "."


def rounded(x: float, digits: int = 4) -> MetadataValue:
    return MetadataValue.float(round(float(x), digits))
