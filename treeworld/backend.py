"""Array backends: numba (compiled CPU kernels over numpy arrays), numpy, or torch (CPU, CUDA).

The reference physics is written against the array API standard (:mod:`treeworld.kernels`
compiles the same rules for numpy arrays). numpy >= 2 implements it in its main
namespace, which we use directly, with the few functions whose Python wrappers cost several
microseconds (astype, any, min, max) replaced by the equivalent array methods: at small batches
every microsecond of call overhead counts. torch goes through ``array_api_compat``. The one operation the
standard lacks, a row-wise scatter-add, is defined here per backend.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numba", "numpy", "torch")  # numba: numpy arrays stepped by treeworld.kernels


class _NumpyNamespace:
    """numpy's namespace, with method-based astype/any/min/max; other names resolve lazily."""

    __name__ = "numpy"

    @staticmethod
    def astype(x, dtype, /, *, copy=True):
        return x.astype(dtype, copy=copy)

    @staticmethod
    def any(x, /, *, axis=None, keepdims=False):
        return x.any(axis=axis, keepdims=keepdims)

    @staticmethod
    def min(x, /, *, axis=None, keepdims=False):
        return x.min(axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x, /, *, axis=None, keepdims=False):
        return x.max(axis=axis, keepdims=keepdims)

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        setattr(self, name, value)  # cached: later lookups are plain attribute reads
        return value


_NUMPY = _NumpyNamespace()
_NAMESPACES: dict[type, Any] = {np.ndarray: _NUMPY}  # array type -> namespace (lookups cost ~0.2 ms)


def namespace(x: Any) -> ModuleType | _NumpyNamespace:
    """The array namespace of ``x``: numpy's (see module docstring), or torch's compat namespace."""
    found = _NAMESPACES.get(type(x))
    if found is None:
        import array_api_compat

        found = _NAMESPACES[type(x)] = array_api_compat.array_namespace(x)
    return found


def from_numpy(x: np.ndarray, backend: str, device: str | None = None) -> Any:
    """Move a numpy array to ``backend`` (one of BACKENDS) on ``device``."""
    if backend in ("numba", "numpy"):
        if device not in (None, "cpu"):
            raise ValueError(f"device: the {backend} backend runs on 'cpu' only, got {device!r}")
        return x
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(device or "cpu")
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array or torch tensor."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def copy_array(x: Any) -> Any:
    """A copy of a numpy array or torch tensor."""
    return x.copy() if isinstance(x, np.ndarray) else x.clone()


def device_of(x: Any) -> Any:
    """The device of a torch tensor; None for numpy arrays."""
    return None if isinstance(x, np.ndarray) else x.device


def scatter_add_rows(index: Any, values: Any, width: int) -> Any:
    """out[b, index[b, k]] += values[b, k] for index/values (B, K) -> out (B, width)."""
    if isinstance(index, np.ndarray):
        rows = index.shape[0]
        flat = index.ravel() if rows == 1 else (index * rows + np.arange(rows)[:, None]).ravel()
        weights = values.ravel().astype(np.float64)  # bincount's own float32 conversion is 5x slower
        out = np.bincount(flat, weights=weights, minlength=rows * width).astype(values.dtype)
        return out.reshape(width, rows).T  # column-major (B, width): a following matmul runs ~2x faster
    import torch

    out = torch.zeros((index.shape[0], width), dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, index, values)
