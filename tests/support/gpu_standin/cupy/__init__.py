"""A stand-in for cupy: only `cuda.runtime.getDeviceCount()`, from $LOADER_STANDIN_GPUS (default 1)."""

from cupy import cuda as cuda
