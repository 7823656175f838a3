"""Drawing primitives in world coordinates, for agents to show their beliefs on rendered frames.

Agents return plain frozen dataclasses (points, circles, segments, text, heat maps) and the
renderer (:mod:`treeworld.envs.rendering`) maps them through the same world -> screen transform as
the trees and the agent, so no agent imports pygame. Positions and radii are in world units,
widths and point radii in screen pixels, colors are ``(r, g, b)`` ints in [0, 255].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

import numpy as np

from treeworld import checks
from treeworld.backend import to_numpy

Color = tuple[int, int, int]

# Anchor colors (low -> high) of the heat-map colormaps, interpolated linearly.
COLORMAPS: dict[str, tuple[Color, ...]] = {
    "bluered": ((40, 60, 220), (240, 240, 240), (220, 40, 40)),
    "viridis": ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    "gray": ((0, 0, 0), (255, 255, 255)),
}


@dataclass(frozen=True)
class Point:
    """A dot of ``radius_px`` screen pixels at world position ``xy`` (2,)."""

    xy: tuple[float, float]
    color: Color = (0, 0, 0)
    radius_px: int = 3

    def __post_init__(self) -> None:
        _set(self, "xy", _xy(self.xy, "xy"))
        _set(self, "color", _color(self.color))
        _set(self, "radius_px", checks.count(self.radius_px, "radius_px"))


@dataclass(frozen=True)
class Circle:
    """A ring of ``radius`` world units around world position ``center`` (2,), ``width_px`` thick."""

    center: tuple[float, float]
    radius: float
    color: Color = (0, 0, 0)
    width_px: int = 1

    def __post_init__(self) -> None:
        _set(self, "center", _xy(self.center, "center"))
        _set(self, "radius", checks.positive(self.radius, "radius"))
        _set(self, "color", _color(self.color))
        _set(self, "width_px", checks.count(self.width_px, "width_px"))


@dataclass(frozen=True)
class Segment:
    """A straight line between world positions ``start`` and ``end`` (2,), ``width_px`` thick."""

    start: tuple[float, float]
    end: tuple[float, float]
    color: Color = (0, 0, 0)
    width_px: int = 1

    def __post_init__(self) -> None:
        _set(self, "start", _xy(self.start, "start"))
        _set(self, "end", _xy(self.end, "end"))
        _set(self, "color", _color(self.color))
        _set(self, "width_px", checks.count(self.width_px, "width_px"))


@dataclass(frozen=True)
class Text:
    """A one-line label whose top-left corner sits at world position ``xy`` (2,)."""

    xy: tuple[float, float]
    text: str
    color: Color = (0, 0, 0)

    def __post_init__(self) -> None:
        _set(self, "xy", _xy(self.xy, "xy"))
        if not isinstance(self.text, str):
            raise TypeError(f"text: expected str, got {type(self.text).__name__}")
        if "\n" in self.text:
            raise ValueError(f"text: expected one line, got {self.text!r}")
        _set(self, "color", _color(self.color))


@dataclass(frozen=True, eq=False)
class HeatMap:
    """A translucent image of ``values`` (H, W) over the world rectangle ``extent``.

    ``extent = (xmin, xmax, ymin, ymax)`` in world units; ``values[i, j]`` covers the cell of row i
    (from ymin upwards) and column j (from xmin rightwards), as matplotlib's ``origin="lower"``.
    Values map linearly from [vmin, vmax] (default: their finite min and max) onto ``colormap``
    (a name in :data:`COLORMAPS`); NaN cells are transparent. ``alpha`` in [0, 1] is the opacity.
    """

    values: np.ndarray
    extent: tuple[float, float, float, float]
    alpha: float = 0.5
    colormap: str = "bluered"
    vmin: float | None = None
    vmax: float | None = None

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)  # a private copy: the dataclass is frozen
        if values.ndim != 2 or values.size == 0:
            raise ValueError(f"values: expected a non-empty 2-D (H, W) array, got shape {values.shape}")
        if np.isinf(values).any():
            raise ValueError("values: expected finite numbers or NaN, got inf")
        values.setflags(write=False)
        _set(self, "values", values)
        try:
            xmin, xmax, ymin, ymax = (float(v) for v in self.extent)
        except (TypeError, ValueError) as e:
            raise ValueError(f"extent: expected four numbers (xmin, xmax, ymin, ymax), got {self.extent!r}") from e
        if not all(math.isfinite(v) for v in (xmin, xmax, ymin, ymax)) or xmin >= xmax or ymin >= ymax:
            raise ValueError(f"extent: expected finite xmin < xmax and ymin < ymax, got {self.extent!r}")
        _set(self, "extent", (xmin, xmax, ymin, ymax))
        _set(self, "alpha", checks.real(self.alpha, "alpha", low=0.0, high=1.0))
        if self.colormap not in COLORMAPS:
            raise ValueError(f"colormap: expected one of {sorted(COLORMAPS)}, got {self.colormap!r}")
        for name in ("vmin", "vmax"):
            if getattr(self, name) is not None:
                _set(self, name, checks.real(getattr(self, name), name))
        if self.vmin is not None and self.vmax is not None and self.vmin >= self.vmax:
            raise ValueError(f"vmin: expected vmin < vmax, got vmin={self.vmin}, vmax={self.vmax}")

    def rgba(self) -> np.ndarray:
        """(H, W, 4) uint8 colors of the cells, row 0 at ymin; alpha 0 where values are NaN."""
        finite = np.isfinite(self.values)
        low = self.vmin if self.vmin is not None else (self.values[finite].min() if finite.any() else 0.0)
        high = self.vmax if self.vmax is not None else (self.values[finite].max() if finite.any() else 1.0)
        t = np.clip((np.where(finite, self.values, low) - low) / max(high - low, 1e-12), 0.0, 1.0)  # (H, W)
        anchors = np.array(COLORMAPS[self.colormap], dtype=np.float64)  # (K, 3)
        position = np.linspace(0.0, 1.0, len(anchors))
        rgb = np.stack([np.interp(t, position, anchors[:, c]) for c in range(3)], axis=-1)  # (H, W, 3)
        alpha = np.where(finite, round(255 * self.alpha), 0)[..., None]  # (H, W, 1)
        return np.concatenate([np.rint(rgb), alpha], axis=-1).astype(np.uint8)


Overlay = Union[Point, Circle, Segment, Text, HeatMap]
OVERLAY_TYPES = (Point, Circle, Segment, Text, HeatMap)


def translated(overlays: list, offset) -> list:
    """``overlays`` moved by ``offset`` (2,) world units: e.g. an agent's, drawn in its own frame
    (origin at its start), onto the world's (``offset``: the start position)."""
    dx, dy = _xy(offset, "offset")

    def move(xy: tuple[float, float]) -> tuple[float, float]:
        return (xy[0] + dx, xy[1] + dy)

    moved = []
    for item in overlays:
        if isinstance(item, (Point, Text)):
            item = replace(item, xy=move(item.xy))
        elif isinstance(item, Circle):
            item = replace(item, center=move(item.center))
        elif isinstance(item, Segment):
            item = replace(item, start=move(item.start), end=move(item.end))
        elif isinstance(item, HeatMap):
            xmin, xmax, ymin, ymax = item.extent
            item = replace(item, extent=(xmin + dx, xmax + dx, ymin + dy, ymax + dy))
        else:
            raise TypeError(f"overlays: expected treeworld.overlay primitives, got {type(item).__name__}")
        moved.append(item)
    return moved


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalize a field of a frozen dataclass in __post_init__




def _xy(value: object, name: str) -> tuple[float, float]:
    try:
        xy = np.asarray(to_numpy(value) if hasattr(value, "detach") else value, dtype=np.float64)  # (2,)
    except (TypeError, ValueError):
        xy = np.array(())
    if xy.shape != (2,) or not np.isfinite(xy).all():
        raise ValueError(f"{name}: expected two finite world coordinates (x, y), got {value!r}")
    return float(xy[0]), float(xy[1])


def _color(value: object) -> Color:
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise ValueError(f"color: expected (r, g, b) ints in [0, 255], got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])
