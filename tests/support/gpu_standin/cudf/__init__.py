"""A stand-in for cuDF on machines without a GPU: the part of cuDF's API the loader calls, on pandas
with Arrow-backed columns, with cuDF's Arrow boundary behaviour (date32 arrives as datetime64[s] and
leaves as timestamp[s]; `unique` gives a Series). Every `DataFrame.from_arrow` appends the process id
and the GPU ids Ray assigned it to the file named by $LOADER_STANDIN_LOG, so a test can see where the
batches ran.

It proves the GPU plumbing (engine choice, Ray's GPU actor pool, the Arrow round trip and the cast back
to the CPU engine's schema), not cuDF's own kernels: tests/unit/transform/test_transform_parity.py does that
on a machine with a GPU. Put tests/gpu_standin on PYTHONPATH to use it; never installed.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pyarrow as pa

__version__ = "0.0-standin"


class Series(pd.Series):  # type: ignore[misc]
    @property
    def _constructor(self) -> type[Series]:
        return Series

    @property
    def _constructor_expanddim(self) -> type[DataFrame]:
        return DataFrame

    def to_arrow(self) -> pa.Array:
        return pa.array(self.array) if isinstance(self.dtype, pd.ArrowDtype) else pa.Array.from_pandas(self)

    def unique(self) -> Series:  # cuDF returns a Series, pandas an array
        return Series(super().unique())


class DataFrame(pd.DataFrame):  # type: ignore[misc]
    @property
    def _constructor(self) -> type[DataFrame]:
        return DataFrame

    @property
    def _constructor_sliced(self) -> type[Series]:
        return Series

    @classmethod
    def from_arrow(cls, table: pa.Table) -> DataFrame:
        _record()
        columns = [c.cast(pa.timestamp("s")) if pa.types.is_date32(c.type) else c for c in table.columns]
        table = pa.table(columns, names=table.column_names)
        return cls(table.to_pandas(types_mapper=pd.ArrowDtype, ignore_metadata=True))

    def to_arrow(self, preserve_index: bool | None = None) -> pa.Table:
        return pa.Table.from_pandas(self, preserve_index=bool(preserve_index))


def Decimal128Dtype(precision: int, scale: int) -> pd.ArrowDtype:  # noqa: N802 - cuDF's name
    if precision > 38:
        raise ValueError("Decimal128Dtype precision cannot exceed 38")
    return pd.ArrowDtype(pa.decimal128(precision, scale))


def _is_decimal_dtype(dtype: Any) -> bool:
    """False: cuDF's decimal dtypes carry .precision/.scale, pandas' do not; the loader then names the
    type through Series.to_arrow, which is exact here."""
    return False


api = SimpleNamespace(types=SimpleNamespace(is_decimal_dtype=_is_decimal_dtype,
                                            is_string_dtype=pd.api.types.is_string_dtype))


def _record() -> None:
    path = os.environ.get("LOADER_STANDIN_LOG")
    if not path:
        return
    gpu_ids: list[Any] = []
    try:
        import ray

        if ray.is_initialized():
            gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    except Exception:
        gpu_ids = []
    with open(path, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "gpu_ids": gpu_ids}) + "\n")
