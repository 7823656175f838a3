"""Argument checks shared by the agents modules.

Each returns its argument (numbers converted; ``generator`` fills in ``None``) or raises TypeError /
ValueError with a message that starts with the argument's name: ``"<name>: expected ..., got ..."``.
"""
from __future__ import annotations

import torch


def instance(value, kind: type, name: str):
    """``value`` if it is a ``kind``, else TypeError."""
    if not isinstance(value, kind):
        raise TypeError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
    return value


def count(value, name: str, minimum: int = 1) -> int:
    """An int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected >= {minimum}, got {value}")
    return value


def positive(value, name: str, minimum: float = 0, strict: bool = True) -> float:
    """A number (not a bool) ``> minimum`` (``>= minimum`` unless ``strict``), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not (value > minimum if strict else value >= minimum):
        raise ValueError(f"{name}: expected {'>' if strict else '>='} {minimum}, got {value}")
    return float(value)


def float_tensor(tensor, name: str) -> torch.Tensor:
    """A floating-point ``torch.Tensor``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor


def last_dim(tensor, size: int, name: str, what: str) -> torch.Tensor:
    """A floating-point tensor whose last dimension is ``size`` (called ``what`` in the message)."""
    float_tensor(tensor, name)
    if tensor.ndim == 0 or tensor.shape[-1] != size:
        got = tuple(tensor.shape)
        raise ValueError(f"{name}: expected last dimension {what}={size}, got shape {got}")
    return tensor


def matrix(tensor, size: int, name: str, what: str, rows: str = "rows") -> torch.Tensor:
    """``last_dim``, with at least one dimension of rows before it: ``(..., rows, size)``."""
    last_dim(tensor, size, name, what)
    if tensor.ndim < 2:
        raise ValueError(f"{name}: expected shape (..., {rows}, {size}), got {tuple(tensor.shape)}")
    return tensor


def generator(value, name: str = "generator") -> torch.Generator:
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
