"""Tables in general: conforming a stage output to its declared Arrow schema, and Markdown.

Pure functions, no I/O: the IO manager calls :func:`to_arrow` before it writes a file, and
metadata uses :func:`markdown_table`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from conceptmine_assets.errors import SchemaError
from conceptmine_assets.schemas import SCHEMAS, VECTOR_COLUMNS


def _fix_vector_columns(table: pa.Table, dims: dict[str, int], where: str) -> pa.Table:
    """Store declared vector columns as ``fixed_size_list<float32>[dim]``."""
    for name in VECTOR_COLUMNS & set(table.column_names):
        col = table.column(name).combine_chunks()
        lengths = pc.unique(pc.list_value_length(col)).to_pylist()
        if len(lengths) > 1:
            raise SchemaError(f"{where}: column {name!r} holds vectors of different lengths {lengths}")
        dim = lengths[0] if lengths else dims.get(name)
        if dim is None:
            raise SchemaError(f"{where}: empty table needs df.attrs['vector_dims'][{name!r}]")
        if col.null_count:
            raise SchemaError(f"{where}: column {name!r} has {col.null_count} null vectors")
        values = col.flatten()
        if len(values) and not pc.all(pc.is_finite(values)).as_py():
            raise SchemaError(f"{where}: column {name!r} contains NaN or inf")
        fixed = pa.FixedSizeListArray.from_arrays(values, dim)
        idx = table.column_names.index(name)
        table = table.set_column(idx, pa.field(name, fixed.type), fixed)
    return table


def to_arrow(df: pd.DataFrame | pa.Table, asset_name: str, where: str) -> pa.Table:
    """Conform a stage output to its declared schema (see :mod:`conceptmine_assets.schemas`)."""
    if isinstance(df, pa.Table):
        table, dims = df, {}
    else:
        schema = SCHEMAS.get(asset_name)
        dims = dict(df.attrs.get("vector_dims", {}))
        if schema is None:
            table = pa.Table.from_pandas(df, preserve_index=False)
        else:
            missing = [c for c in schema.names if c not in df.columns]
            extra = [c for c in df.columns if c not in schema.names]
            if missing or extra:
                raise SchemaError(f"{where}: missing columns {missing}, unexpected columns {extra}")
            frame = df[schema.names]
            if frame.empty:  # pandas gives empty columns float64/object dtypes; let the schema decide
                frame = frame.astype(object)
            try:
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: does not match the {asset_name} schema: {exc}") from exc
    return _fix_vector_columns(table, dims, where)


def markdown_table(df: pd.DataFrame) -> str:
    """A plain Markdown table (no tabulate dependency)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def stack_vectors(values: pd.Series | np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) float32 matrix of a column of vectors (an empty one for no rows)."""
    return np.stack(list(values)).astype(np.float32) if len(values) else np.zeros((0, dim), np.float32)


def arrow_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, dim) float32 matrix of an Arrow list column without a Python object per row."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else 0
        return np.zeros((0, dim), np.float32)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(col), -1)
