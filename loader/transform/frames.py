"""The DataFrame library the transforms run on, chosen once per run: pandas with Arrow-backed columns on
the CPU, cuDF on the GPU.

The transforms (loader/transform/facts.py) are written once against the API pandas and cuDF share. This
module holds only what the two libraries spell differently: moving a pyarrow Table in and out
(cuDF straight from Arrow to device memory, no pandas detour), naming a column type, building a small
keyed lookup, and bringing a handful of values back to the host. Nothing here imports cuDF unless the
GPU engine was chosen (`--engine cpu` never touches it).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

import pyarrow as pa

from loader.errors import BadSourceData, ConfigError
from loader.landing.sources import normalize_strings

log = logging.getLogger(__name__)

EngineName = Literal["cpu", "gpu"]
#: Widest decimal cuDF holds (Decimal128Dtype). pandas (Arrow-backed) goes on to decimal256.
CUDF_MAX_DECIMAL_PRECISION = 38

Frame = Any  # pandas.DataFrame or cudf.DataFrame: the transforms use only what both offer
Series = Any


class PandasFrames:
    """CPU: pandas with every column an `ArrowDtype`, so kernels are pyarrow's and types stay exact
    (decimal128/256, date32, nullable ints and booleans) in both directions."""

    name: EngineName = "cpu"

    def __init__(self) -> None:
        import pandas

        self.xdf: ModuleType = pandas

    def frame(self, table: pa.Table) -> Frame:
        return table.to_pandas(types_mapper=self.xdf.ArrowDtype, ignore_metadata=True)

    def table(self, frame: Frame, schema: pa.Schema | None = None) -> pa.Table:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        return table.cast(schema) if schema is not None else table.replace_schema_metadata(None)

    def dtype(self, arrow_type: pa.DataType) -> Any:
        return self.xdf.ArrowDtype(arrow_type)

    def arrow_type(self, series: Series) -> pa.DataType:
        dtype = series.dtype
        return dtype.pyarrow_dtype if isinstance(dtype, self.xdf.ArrowDtype) else pa.from_numpy_dtype(dtype)

    def full(self, like: Series, value: object, arrow_type: pa.DataType) -> Series:
        return self.xdf.Series(value, index=like.index, dtype=self.dtype(arrow_type))

    def host_list(self, series: Series) -> list[Any]:
        return list(series.tolist())

    def gather(self, keys: Series, lookup: Frame, columns: Sequence[str]) -> dict[str, Series]:
        """`lookup`'s `columns` (lookup indexed by unique keys) for each of `keys`, null where a key is
        absent, indexed like `keys`: what `keys.map(lookup[c])` gives per column, with the keys found
        once and every column taken in one Arrow take (map hashed the keys again for each column)."""
        position = lookup.index.get_indexer(keys)
        taken = self.table(lookup[list(columns)]).take(pa.array(position, mask=position < 0))
        frame = self.frame(taken)
        frame.index = keys.index
        return {column: frame[column] for column in columns}


class CudfFrames:
    """GPU: cuDF. Tables go to device memory with `DataFrame.from_arrow` and back with `to_arrow`.

    cuDF has no date32 (dates arrive as datetime64[s] and leave as timestamp[s]), exports an empty or
    all-null string column as Arrow's null type and decimals unchecked, so the way back casts, safely,
    to the schema the CPU engine declares for the same input: both engines hand the sinks identical
    types (tests/unit/transform/test_transform_parity.py). Values are range-checked before every decimal cast
    (transforms._fit): cuDF's casts neither check precision nor round."""

    name: EngineName = "gpu"

    def __init__(self) -> None:
        self.xdf: ModuleType = importlib.import_module("cudf")

    def frame(self, table: pa.Table) -> Frame:
        return self.xdf.DataFrame.from_arrow(table)

    def table(self, frame: Frame, schema: pa.Schema | None = None) -> pa.Table:
        table = frame.to_arrow(preserve_index=False)
        return table.cast(schema) if schema is not None else table

    def dtype(self, arrow_type: pa.DataType) -> Any:
        if pa.types.is_decimal(arrow_type):
            if arrow_type.precision > CUDF_MAX_DECIMAL_PRECISION:
                raise BadSourceData(
                    f"a value needs {arrow_type} ({arrow_type.precision} digits), more than the "
                    f"{CUDF_MAX_DECIMAL_PRECISION} cuDF holds: run with --engine cpu (pandas computes it "
                    "exactly in decimal256) or narrow the column in the landing zone"
                )
            return self.xdf.Decimal128Dtype(arrow_type.precision, arrow_type.scale)
        if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
            return "str"
        return arrow_type.to_pandas_dtype()

    def arrow_type(self, series: Series) -> pa.DataType:
        types = self.xdf.api.types
        dtype = series.dtype
        if types.is_decimal_dtype(dtype):
            return pa.decimal128(dtype.precision, dtype.scale)
        if types.is_string_dtype(dtype):  # an empty string column exports as Arrow's null type
            return pa.string()
        return series.head(0).to_arrow().type

    def full(self, like: Series, value: object, arrow_type: pa.DataType) -> Series:
        return self.xdf.Series(value, index=like.index, dtype=self.dtype(arrow_type))

    def host_list(self, series: Series) -> list[Any]:
        return list(series.to_arrow().to_pylist())

    def gather(self, keys: Series, lookup: Frame, columns: Sequence[str]) -> dict[str, Series]:
        """See PandasFrames.gather: one `Series.map` per column here (cuDF's map is a join on device)."""
        return {column: keys.map(lookup[column]).astype(lookup[column].dtype) for column in columns}


Frames = PandasFrames | CudfFrames


# ------------------------------------------------------------------------------------------------
# choosing the engine


@dataclass(frozen=True)
class GpuStatus:
    usable: bool
    detail: str
    devices: int = 0
    cudf_version: str | None = None


@cache
def gpu_status() -> GpuStatus:
    """Whether cuDF imports and a CUDA device is visible. Never raises; says what is missing. Probed
    once per process (importing cuDF takes seconds; the start-up check and the run both ask)."""
    if importlib.util.find_spec("cudf") is None:
        return GpuStatus(False, "cuDF is not installed "
                                "(pip install -e '.[gpu]' on a machine with an NVIDIA GPU)")
    try:
        import cupy  # installed with cudf-cu12; counting devices does not need cuDF itself

        devices = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as error:  # no driver, no runtime, CUDA_VISIBLE_DEVICES="" ...: all mean "no GPU"
        return GpuStatus(False, "cuDF is installed but no CUDA device is usable "
                                f"({type(error).__name__}: {error})")
    if devices == 0:
        return GpuStatus(False, "cuDF is installed but no CUDA device is visible "
                                "(check CUDA_VISIBLE_DEVICES)")
    try:
        cudf = importlib.import_module("cudf")
    except Exception as error:
        return GpuStatus(False, f"{devices} CUDA device(s) visible but cuDF does not import "
                                f"({type(error).__name__}: {error})",
                         devices)
    return GpuStatus(True, f"cuDF {cudf.__version__}, {devices} CUDA device(s)", devices,
                     str(cudf.__version__))


@dataclass(frozen=True)
class EngineChoice:
    engine: EngineName
    reason: str


def choose_transform_engine(requested: str, status: GpuStatus | None = None) -> EngineChoice:
    """`cpu` never looks for cuDF; `gpu` fails now (ConfigError, nothing written) if the GPU is not
    usable; `auto` takes the GPU when usable and says why it did not otherwise."""
    if requested == "cpu":
        return EngineChoice("cpu", "transform engine 'cpu' requested")
    if requested not in ("auto", "gpu"):
        raise ConfigError(f"transform engine {requested!r} is not one of auto, cpu, gpu: "
                          "fix transform.engine or --engine")
    status = status or gpu_status()
    if status.usable:
        return EngineChoice("gpu", f"{status.detail} ({requested})")
    if requested == "gpu":
        raise ConfigError(
            f"--engine gpu / transform.engine: gpu needs cuDF and a CUDA device: {status.detail}. "
            "Install the extra on a GPU machine (pip install -e '.[gpu]'), or run with --engine auto or cpu"
        )
    return EngineChoice("cpu", f"auto: {status.detail}; transforms run on the CPU")


_BACKENDS: dict[str, Frames] = {}


def frames_for(engine: EngineName) -> Frames:
    """The backend of `engine`, made once per process (importing cuDF takes seconds)."""
    if engine not in _BACKENDS:
        _BACKENDS[engine] = CudfFrames() if engine == "gpu" else PandasFrames()
    return _BACKENDS[engine]


def on_table(transform: Callable[..., Frame], table: pa.Table, frames: Frames | None = None,
             **options: Any) -> pa.Table:
    """`transform` applied to a pyarrow Table on `frames` (the CPU engine by default).

    On the GPU the result is cast, safely, to the schema the CPU engine gives for the same input (cuDF
    has no date32, and may hand strings back as large_string): both engines give identical types.
    """
    frames = frames or frames_for("cpu")
    table = normalize_strings(table)
    schema = None
    if frames.name != "cpu":
        schema = on_table(transform, table.schema.empty_table(), frames_for("cpu"), **options).schema
    result = frames.table(transform(frames.frame(table), frames, **options), schema)
    return result.replace_schema_metadata(table.schema.metadata)
