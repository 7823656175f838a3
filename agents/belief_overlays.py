"""Overlays of one agent's beliefs, to draw on the env's frames (item 8 of the TEM agent).

:func:`belief_overlays` turns what an agent believes into :mod:`treeworld.overlay` primitives in
world coordinates, which the renderer (:mod:`treeworld.envs.rendering`) draws over the world
through the same world -> screen transform as the trees and the true agent. The agent sets
``env.unwrapped.overlays = belief_overlays(...)`` for env 0 (or the row it chooses) before
``env.render()``; nothing here imports pygame.

What is drawn (in this order, later on top):

* map units: faint small dots at their world positions, optionally linked by thin segments
  (``map_links``: index pairs, e.g. the grid neighbours of a topographic map);
* remembered trees: a ring around each believed tree position, colored by valence on a
  red (poisonous, valence -1) - grey (unknown, 0 or a large std) - green (edible, +1) scale
  (:func:`valence_colors`);
* the homing goal's recalled place: an X in a ring, in :data:`RECALLED_GOAL_COLOR` (the env marks
  the true goal tree with a ring and flag of its own, so the two can be compared);
* the current target: a segment from the believed position to it and a dot on it;
* the believed position: a dot, and a ring of radius ``2 sigma`` (the true position is the
  renderer's agent marker, so the gap between them is the path-integration error). Why 2: for an
  isotropic 2-D Gaussian of per-axis std ``sigma`` the squared distance over ``sigma^2`` is
  chi-square with 2 degrees of freedom, so ``P(r <= k sigma) = 1 - exp(-k^2 / 2)``: ``k = 1``
  holds only 39 %, ``k = 2`` holds 86 % (``k = 3``: 99 %), so the true agent marker should
  usually fall inside the ring, and falling outside says the belief is overconfident;
* an optional one-line legend (``legend_at``).

Positions and radii are world units, widths and dot radii screen pixels, colors ``(r, g, b)``.
Inputs may be numpy arrays, torch tensors (any device; they are copied to the CPU) or sequences;
each is checked through :mod:`treeworld.checks` (finite values, shapes) and a bad one raises a
ValueError (TypeError when it is not numbers at all) whose message starts with its name.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from treeworld import checks
from treeworld.overlay import Circle, Color, Overlay, Point, Segment, Text

# ----------------------------------------------------------------------------- colors
BELIEF_COLOR: Color = (130, 0, 200)  # believed position and its 2-sigma ring (the true agent is blue)
POISON_COLOR: Color = (215, 30, 30)  # valence -1: remembered as poisonous
UNKNOWN_COLOR: Color = (150, 150, 150)  # valence 0 or a large std: not known
EDIBLE_COLOR: Color = (20, 170, 60)  # valence +1: remembered as edible
MAP_UNIT_COLOR: Color = (175, 170, 200)  # faint: map units and their links
TARGET_COLOR: Color = (0, 150, 170)  # the segment to the current target and its dot
RECALLED_GOAL_COLOR: Color = (200, 0, 110)  # the recalled place of the homing goal (X in a ring)
LEGEND_COLOR: Color = (30, 30, 30)

# ----------------------------------------------------------------------------- sizes
SIGMA_RING = 2.0  # the uncertainty ring's radius in sigmas (86 % of a 2-D Gaussian, see above)
TREE_RING_RADIUS = 24.0  # world units: a remembered tree's ring, just outside the drawn tree
GOAL_MARK_RADIUS = 18.0  # world units: the recalled goal's ring; its X spans the same radius
BELIEF_POINT_PX = 4
TARGET_POINT_PX = 5
MAP_UNIT_PX = 2
RING_WIDTH_PX = 2

LEGEND = "belief: dot + 2-sigma ring | trees: red poison, grey unknown, green edible | target: line | goal: X"


def valence_colors(valence: Any, valence_std: Any = None) -> list[Color]:
    """(M,) mean valences in [-1, 1] (and optional (M,) stds >= 0) -> M ``(r, g, b)`` colors.

    The shown valence is ``mean * (1 - min(std, 1))``: a sure valence keeps its mean, a std of 1
    or more (the valence readout's "never tasted") shows as unknown. It maps linearly from
    :data:`POISON_COLOR` at -1 through :data:`UNKNOWN_COLOR` at 0 to :data:`EDIBLE_COLOR` at +1.
    """
    valence = _vector(valence, "valence")
    std = None if valence_std is None else _vector(valence_std, "valence_std", len(valence))
    return _valence_colors(_check_valence(valence), _check_std(std))


def belief_overlays(position: Any, sigma: Any, trees: Any = None, valence: Any = None, valence_std: Any = None,
                    map_units: Any = None, target: Any = None, goal: Any = None, *, map_links: Any = None,
                    legend_at: Any = None, tree_radius: float = TREE_RING_RADIUS) -> list[Overlay]:
    """Overlay primitives of one agent's beliefs (see the module docstring for what is drawn).

    Args:
        position: (2,) believed position, world units.
        sigma: std (world units, >= 0) of the belief along each axis; the ring has radius
            ``2 sigma`` and is left out when ``sigma`` is 0.
        trees: (M, 2) believed positions of remembered trees (``None`` or M = 0: none).
        valence: (M,) mean valence of each tree in [-1, 1] (``None``: all 0, unknown).
        valence_std: (M,) std of each valence, >= 0 (``None``: 0, the means as they are).
        map_units: (U, 2) world positions of map units (``None``: none).
        target: (2,) the current target, or ``None``.
        goal: (2,) the homing goal's recalled place, or ``None``.
        map_links: (E, 2) integer index pairs into ``map_units`` to link by segments (``None``: none).
        legend_at: (2,) world position of the legend's top-left corner, or ``None`` for no legend.
        tree_radius: world radius of a remembered tree's ring.

    Returns:
        A list, drawn in order: U map-unit Points, E link Segments, M tree Circles, the goal's
        Circle and two Segments, the target's Segment and Point, the belief's Circle (if
        ``sigma > 0``) and Point, the legend Text.
    """
    position = _vector(position, "position", 2)
    sigma = checks.real(_number(sigma), "sigma", low=0.0)
    tree_radius = checks.positive(_number(tree_radius), "tree_radius")
    trees = np.zeros((0, 2)) if trees is None else _rows(trees, "trees")
    valence = np.zeros(len(trees)) if valence is None else _check_valence(_vector(valence, "valence", len(trees)))
    std = None if valence_std is None else _check_std(_vector(valence_std, "valence_std", len(trees)))
    units = np.zeros((0, 2)) if map_units is None else _rows(map_units, "map_units")
    links = _links(map_links, len(units))
    target = None if target is None else _vector(target, "target", 2)
    goal = None if goal is None else _vector(goal, "goal", 2)
    legend_at = None if legend_at is None else _vector(legend_at, "legend_at", 2)

    overlays: list[Overlay] = [Point(tuple(xy), MAP_UNIT_COLOR, MAP_UNIT_PX) for xy in units]
    overlays += [Segment(tuple(units[i]), tuple(units[j]), MAP_UNIT_COLOR, 1) for i, j in links]
    overlays += [Circle(tuple(xy), tree_radius, color, RING_WIDTH_PX)
                 for xy, color in zip(trees, _valence_colors(valence, std))]
    if goal is not None:
        half = GOAL_MARK_RADIUS / np.sqrt(2.0)  # the X's arms end on the ring
        overlays += [Circle(tuple(goal), GOAL_MARK_RADIUS, RECALLED_GOAL_COLOR, RING_WIDTH_PX),
                     Segment(tuple(goal + (-half, -half)), tuple(goal + (half, half)), RECALLED_GOAL_COLOR, 2),
                     Segment(tuple(goal + (-half, half)), tuple(goal + (half, -half)), RECALLED_GOAL_COLOR, 2)]
    if target is not None:
        overlays += [Segment(tuple(position), tuple(target), TARGET_COLOR, 2),
                     Point(tuple(target), TARGET_COLOR, TARGET_POINT_PX)]
    if sigma > 0:
        overlays.append(Circle(tuple(position), SIGMA_RING * sigma, BELIEF_COLOR, RING_WIDTH_PX))
    overlays.append(Point(tuple(position), BELIEF_COLOR, BELIEF_POINT_PX))
    if legend_at is not None:
        overlays.append(Text(tuple(legend_at), LEGEND, LEGEND_COLOR))
    return overlays


# ----------------------------------------------------------------------------- helpers

def _valence_colors(valence: np.ndarray, std: np.ndarray | None) -> list[Color]:
    shown = valence if std is None else valence * (1.0 - np.minimum(std, 1.0))  # (M,)
    anchors = np.array([POISON_COLOR, UNKNOWN_COLOR, EDIBLE_COLOR], dtype=np.float64)  # (3, 3)
    rgb = np.stack([np.interp(shown, (-1.0, 0.0, 1.0), anchors[:, c]) for c in range(3)], axis=-1)  # (M, 3)
    return [tuple(int(c) for c in row) for row in np.rint(rgb).astype(np.int64)]


def _number(value: Any) -> Any:
    """A torch scalar tensor as a 0-d numpy array (which :mod:`treeworld.checks` accepts)."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` (array, tensor or nested sequence of numbers) as a finite float64 CPU tensor."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected an array of numbers, got {type(value).__name__}") from e
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{name}: expected real numbers, got {tensor.dtype}")
    return checks.finite_tensor(tensor.to(torch.float64), name)


def _vector(value: Any, name: str, size: int | None = None) -> np.ndarray:
    """A finite (size,) float64 array (any length when ``size`` is None)."""
    tensor = _tensor(value, name)
    if tensor.ndim != 1 or (size is not None and tensor.shape[0] != size):
        want = "(n,)" if size is None else f"({size},)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(tensor.shape)}")
    return tensor.numpy()


def _rows(value: Any, name: str) -> np.ndarray:
    """A finite (N, 2) float64 array of world positions; an empty (0,) input is N = 0."""
    tensor = _tensor(value, name)
    if tensor.numel() == 0:
        return np.zeros((0, 2))
    checks.last_dim(tensor, 2, name, "xy")
    if tensor.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {tuple(tensor.shape)}")
    return tensor.numpy()


def _check_valence(valence: np.ndarray) -> np.ndarray:
    if valence.size and (valence.min() < -1.0 - 1e-6 or valence.max() > 1.0 + 1e-6):
        raise ValueError(f"valence: expected values in [-1, 1], got min {valence.min():.6g} max {valence.max():.6g}")
    return np.clip(valence, -1.0, 1.0)


def _check_std(std: np.ndarray | None) -> np.ndarray | None:
    if std is not None and std.size and std.min() < 0:
        raise ValueError(f"valence_std: expected values >= 0, got min {std.min():.6g}")
    return std


def _links(value: Any, units: int) -> list[tuple[int, int]]:
    """(E, 2) integer index pairs into ``units`` map units, as a list of int pairs."""
    if value is None:
        return []
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.size == 0:
        return []
    if array.dtype.kind not in "iu":
        raise TypeError(f"map_links: expected integer index pairs, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"map_links: expected shape (E, 2), got {array.shape}")
    if array.min() < 0 or array.max() >= units:
        raise ValueError(f"map_links: expected indices in [0, {units - 1}] (U={units} map_units), "
                         f"got min {array.min()} max {array.max()}")
    return [(int(i), int(j)) for i, j in array]
