"""What the agent perceives: smell, sight, motion, heading and health, for B worlds at once.

Both percept sensors factor through small tables built once from the vocabulary
(:class:`PerceptTables`), never through per-tree vectors: smell scatters kernel weights onto the
kind and name rows and multiplies once by the table; sight gathers one precomputed row, the
normalized percept of (kind, name, fruit count), or a zero row when nothing is seen. The homing
task's goal percept gathers a (kind, name) row the same way. :func:`observation_layout` is the one
definition of the observation's keys, widths, order and bounds; :func:`odometry` of the observed
motion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from treeworld.backend import copy_array, device_of, from_numpy, namespace, scatter_add_rows
from treeworld.config import WorldConfig
from treeworld.vocabulary import FRUIT_PHRASES, Vocabulary
from treeworld.world import Array, WorldState


@dataclass(frozen=True)
class PerceptTables:
    """The vocabulary rows the sensors read, on one backend.

    ``smell`` (K + P, D): kind rows then the ``name_pool`` name rows (K = 16 kinds, P = pool).
    ``sight`` (K * P * F + 1, D): normalize(e_kind + e_name + e_phrase) for every kind, pooled
    name and fruit count (F = 6), then a zero row for "nothing seen".
    ``goal`` (K * P + 1, D): normalize(e_kind + e_name) for every kind and pooled name, then a zero
    row for "no goal".
    """

    smell: Array
    sight: Array
    goal: Array

    @staticmethod
    def build(config: WorldConfig, vocabulary: Vocabulary, backend: str = "numpy", device: str | None = None):
        table = vocabulary.table
        kinds = table[:vocabulary.num_kinds]  # (K, D)
        names = table[vocabulary.name_offset:vocabulary.name_offset + config.name_pool]  # (P, D)
        phrases = table[vocabulary.phrase_offset:]  # (F, D)
        zero = np.zeros((1, vocabulary.dim), np.float32)
        sight = _normalized(kinds[:, None, None] + names[None, :, None] + phrases[None, None, :])  # (K, P, F, D)
        goal = _normalized(kinds[:, None] + names[None, :])  # (K, P, D)
        smell = np.concatenate([kinds, names])
        return PerceptTables(*(from_numpy(np.concatenate(parts).astype(np.float32), backend, device)
                               for parts in ([smell], [sight, zero], [goal, zero])))


def _normalized(vectors: np.ndarray) -> np.ndarray:
    """(..., D) -> (N, D) rows scaled to unit length."""
    rows = vectors.reshape(-1, vectors.shape[-1])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


BOUND_SLACK = 1e-6  # relative: a few float32 ulps
ROUNDING_ULPS = 4  # float32 ulps of the largest position allowed in the realized motion


def observation_layout(config: WorldConfig, dim: int) -> dict[str, tuple[int, float, float]]:
    """Observation key -> (width, low, high) in buffer order: the one definition of the observation.

    Bounds are per component; noisy keys are unbounded. The realized motion is a difference of
    float32 positions, so a full step can exceed ``max_step`` by the rounding of a position (up to
    an ulp of the arena radius; unbounded on the open plane): its bound allows ``ROUNDING_ULPS``
    of them; the position bound allows ``BOUND_SLACK`` (relative) for the wall projection.
    """
    smell = math.inf if config.percept_noise > 0 else float(config.num_trees)  # <= T kernel weights <= 1
    sight = math.inf if config.percept_noise > 0 else 1.0
    if config.motion_noise > 0 or config.arena_radius is None:
        motion = math.inf
    else:
        rounding = ROUNDING_ULPS * float(np.spacing(np.float32(config.arena_radius)))
        motion = config.motion_gain * (config.max_step + rounding) * (1 + BOUND_SLACK)
    layout = {"smell": (dim, -smell, smell), "sight": (dim, -sight, sight), "sight_distance": (1, 0.0, 1.0),
              "motion": (2, -motion, motion), "heading": (2, -1.0, 1.0), "health": (1, 0.0, 1.0)}
    if config.observe_position:
        bound = math.inf if config.arena_radius is None else config.arena_radius * (1 + BOUND_SLACK)
        layout["position"] = (2, -bound, bound)
    if config.task == "homing":
        layout["goal"] = (dim, -1.0, 1.0)
    return layout


def odometry(config: WorldConfig, motion: Array, noise: Array | None = None) -> Array:
    """Observed motion (B, 2): the true ``motion`` (B, 2) times ``motion_gain``, rotated by
    ``motion_rotation``, plus ``noise`` (B, 2) when given; the true motion itself (a copy) by default."""
    xp = namespace(motion)
    if config.motion_gain != 1.0 or config.motion_rotation != 0.0:
        c, s = (config.motion_gain * f(config.motion_rotation) for f in (math.cos, math.sin))
        motion = xp.stack([c * motion[:, 0] - s * motion[:, 1], s * motion[:, 0] + c * motion[:, 1]], axis=1)
    return copy_array(motion) if noise is None else motion + noise


def observe(config: WorldConfig, tables: PerceptTables, state: WorldState, motion: Array | None = None,
            percept_noise: Array | None = None, squeeze: bool = False) -> dict[str, Array]:
    """Observations of B worlds; ``tables`` from :meth:`PerceptTables.build` on the state's backend.

    Returns float32 arrays in the order of :func:`observation_layout`: smell (B, D), sight (B, D),
    sight_distance (B, 1) in [0, 1], motion (B, 2) (``motion`` if given, e.g. from
    :func:`odometry`, else the realized displacement), heading (B, 2), health (B, 1) as a fraction
    of max_health, position (B, 2) with ``config.observe_position``, goal (B, D) in the homing task.
    ``percept_noise`` (B, 2, D) is added to smell and to sight where a tree is seen; ``squeeze``
    drops the batch axis (B = 1).
    """
    xp = namespace(state.health)
    dist = state.tree_distance  # (B, T)

    # Smell: Gaussian diffusion kernel, equal to smell_attenuation at smell_distance.
    log_kernel = math.log(config.smell_attenuation) / config.smell_distance ** 2
    weight = xp.exp(dist * dist * log_kernel) * state.tree_smell_weight  # (B, T)
    rows = tables.smell.shape[0]
    smell = scatter_add_rows(state.tree_smell_rows, xp.concat([weight, weight], axis=1), rows) @ tables.smell  # (B, D)

    # Sight: the tree in sight (found by the step), with its fruit phrase.
    seen = state.sight_tree >= 0  # (B,)
    nearest = xp.where(seen, state.sight_tree, 0)
    index = xp.arange(state.batch_size, device=device_of(dist))
    combo = state.tree_sight_row[index, nearest] + state.tree_fruit[index, nearest]
    sight = xp.take(tables.sight, xp.where(seen, combo, tables.sight.shape[0] - 1), axis=0)  # (B, D)
    sight_distance = xp.where(seen, dist[index, nearest] / config.sight_distance, 0.0)
    if percept_noise is not None:
        smell = smell + percept_noise[:, 0]
        sight = sight + xp.where(seen[:, None], percept_noise[:, 1], 0.0)

    obs = {
        "smell": smell,
        "sight": sight,
        "sight_distance": sight_distance[:, None],
        "motion": copy_array(state.motion) if motion is None else motion,  # copies: state stays private
        "heading": copy_array(state.heading),
        "health": (state.health / config.max_health)[:, None],
    }
    if config.observe_position:
        obs["position"] = copy_array(state.agent_position)
    if config.task == "homing":
        obs["goal"] = goal_percept(tables, state)
    return {key: value[0] for key, value in obs.items()} if squeeze else obs


def goal_percept(tables: PerceptTables, state: WorldState) -> Array:
    """(B, D) the homing goal's percept normalize(e_kind + e_name); zeros while no goal is set."""
    xp = namespace(state.health)
    goal = state.goal_tree  # (B,)
    index = xp.arange(state.batch_size, device=device_of(goal))
    row = state.tree_sight_row[index, xp.where(goal >= 0, goal, 0)] // len(FRUIT_PHRASES)
    return xp.take(tables.goal, xp.where(goal >= 0, row, tables.goal.shape[0] - 1), axis=0)
