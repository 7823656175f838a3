"""Argument checks for the whole package.

The rule: every public entry point of treeworld (core, envs, agents) checks its arguments through
this module, and numpy scalars (``np.integer``, ``np.floating``, 0-d arrays) are accepted wherever
a Python number is. Bools are never numbers here. Each check returns its argument (numbers as
Python ``int`` / ``float``; ``generator`` fills in ``None``) or raises TypeError (wrong kind) /
ValueError (wrong value) with a message that starts with the argument's name:
``"<name>: expected ..., got ..."``.
"""
from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _scalar(value: Any) -> Any:
    """A 0-d numpy array's element (as a numpy scalar); anything else as it is."""
    return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def instance(value: T, kind: type, name: str) -> T:
    """``value`` if it is a ``kind``, else TypeError."""
    if not isinstance(value, kind):
        raise TypeError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
    return value


def integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """An integer (Python or numpy, not a bool) in ``[low, high]`` (``None``: unbounded), as an int."""
    value = _scalar(value)
    if _is_bool(value) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name}: expected >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected <= {high}, got {value}")
    return value


def count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum``, as an int."""
    return integer(value, name, low=minimum)


def real(value: Any, name: str, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite number (Python or numpy int or float, not a bool) within float32 range, between
    ``low`` and ``high`` (each inclusive unless ``*_open``; ``None``: unbounded), as a float.
    """
    value = _scalar(value)
    if _is_bool(value) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if isinstance(value, (int, np.integer)):
        value = int(value)  # exact magnitude check below, whatever the size
    elif not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name}: expected a magnitude <= {FLOAT32_MAX:.6g} (float32 range), got {value}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name}: expected {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name}: expected {'<' if high_open else '<='} {high}, got {value}")
    return value


def positive(value: Any, name: str, minimum: float = 0, strict: bool = True) -> float:
    """A number ``> minimum`` (``>= minimum`` unless ``strict``), as a float."""
    return real(value, name, low=minimum, low_open=strict)


def float_tensor(tensor: Any, name: str) -> torch.Tensor:
    """A floating-point ``torch.Tensor``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor


def last_dim(tensor: Any, size: int, name: str, what: str) -> torch.Tensor:
    """A floating-point tensor whose last dimension is ``size`` (called ``what`` in the message)."""
    float_tensor(tensor, name)
    if tensor.ndim == 0 or tensor.shape[-1] != size:
        got = tuple(tensor.shape)
        raise ValueError(f"{name}: expected last dimension {what}={size}, got shape {got}")
    return tensor


def matrix(tensor: Any, size: int, name: str, what: str, rows: str = "rows") -> torch.Tensor:
    """``last_dim``, with at least one dimension of rows before it: ``(..., rows, size)``."""
    last_dim(tensor, size, name, what)
    if tensor.ndim < 2:
        raise ValueError(f"{name}: expected shape (..., {rows}, {size}), got {tuple(tensor.shape)}")
    return tensor


def generator(value: Any, name: str = "generator") -> torch.Generator:
    """The random source of a public ``generator=None`` argument: a CPU ``torch.Generator``.

    The rule of the agents modules: random draws happen on the CPU with this generator and are
    then moved (``.to(device)``) to the tensors' device, so one CPU generator serves every device
    and a seeded one gives the same numbers everywhere. ``value`` is returned as it is when it is
    a CPU ``torch.Generator``; ``None`` gives a fresh one seeded from OS entropy (``seed()``), so
    torch's global RNG is neither read nor advanced. A generator on another device is a
    ValueError, anything else a TypeError.
    """
    if value is None:
        fresh = torch.Generator()
        fresh.seed()
        return fresh
    if not isinstance(value, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(value).__name__}")
    if value.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU torch.Generator (draws happen on the CPU, then move to the "
                         f"tensors' device), got one on {value.device}")
    return value


def finite_tensor(tensor: Any, name: str) -> torch.Tensor:
    """A floating-point ``torch.Tensor`` with no NaN or infinite entry.

    One summing pass (and, on an accelerator, one synchronization): a NaN or inf entry makes the sum
    non-finite; only a non-finite sum (or an overflow of finite entries) is checked entry by entry,
    and the entries are counted only to word the error.
    """
    float_tensor(tensor, name)
    if tensor.numel() and math.isfinite(tensor.detach().sum().item()):  # one pass: NaN and inf survive a sum
        return tensor
    if not bool(torch.isfinite(tensor).all()):  # an overflowing sum of finite values lands here too
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} non-finite (NaN or inf) of {tensor.numel()}")
    return tensor
