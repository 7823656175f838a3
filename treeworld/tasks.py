"""The tasks' rules, each defined once for B worlds: homing goals, reward and termination.

The single env, the vector env and the SB3 adapter all call these through
:class:`treeworld.envs.batch.WorldBatch`; they run on numpy and torch states alike.

Homing (``config.task == "homing"``): after ``explore_steps`` steps a goal is drawn uniformly
among the trees that have been in sight this episode and are out of reach; coming within
``eat_radius`` of it reaches it, and ``goal_timeout`` steps without reaching it fail it; either
way the next goal is drawn on the same step. For Success weighted by Path Length (SPL, Anderson
et al. 2018) each goal keeps its straight-line distance when set; the shortest path to success
is ``l = max(distance - eat_radius, 0)`` and the path taken ``p`` is the distance travelled since.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from treeworld.backend import copy_array, device_of, from_numpy, namespace, to_numpy
from treeworld.config import WorldConfig
from treeworld.world import Array, StepEvents, WorldState

HEALTH_PER_REWARD = 25.0  # the 'health' reward: health change / 25, one edible fruit is about +1


@dataclass
class GoalEvents:
    """Goals that ended this step, per world: (B,) arrays (zeros where none ended)."""

    reached: Array  # bool
    failed: Array  # bool, timed out
    distance: Array  # float32, straight-line distance to the goal tree when it was set
    shortest: Array  # float32, l = max(distance - eat_radius, 0): the shortest path to success
    path: Array  # float32, p: distance travelled while it was the goal


def shortest_path(config: WorldConfig, distance: Array) -> Array:
    """SPL's ``l`` of goals set at straight-line ``distance`` (an array): ``max(distance - eat_radius, 0)``."""
    return namespace(distance).maximum(distance - config.eat_radius, 0.0)


def end_goals(config: WorldConfig, state: WorldState) -> GoalEvents | None:
    """Homing: end the goals reached or timed out after a step (``state``'s goal arrays are
    replaced); None in other tasks."""
    if config.task != "homing":
        return None
    xp = namespace(state.health)
    active = state.goal_tree >= 0  # (B,)
    index = xp.arange(state.batch_size, device=device_of(state.goal_tree))
    to_goal = state.tree_distance[index, xp.where(active, state.goal_tree, 0)]  # (B,)
    reached = active & (to_goal <= config.eat_radius)
    failed = active & ~reached & (state.steps - state.goal_since >= config.goal_timeout)
    ended = reached | failed
    distance = xp.where(ended, state.goal_distance, 0.0)
    events = GoalEvents(reached=reached, failed=failed, distance=distance,
                        shortest=shortest_path(config, distance),
                        path=xp.where(ended, state.distance - state.goal_start, 0.0))
    state.goal_tree = xp.where(ended, -1, state.goal_tree)
    state.goals_reached = state.goals_reached + xp.astype(reached, state.goals_reached.dtype)
    state.goals_failed = state.goals_failed + xp.astype(failed, state.goals_failed.dtype)
    return events


def draw_goals(config: WorldConfig, state: WorldState, rows: Sequence[int], rngs: Sequence[np.random.Generator]) -> None:
    """Give each world of ``rows`` that needs a goal (none set, ``explore_steps`` done) one drawn with
    its generator ``rngs[i]`` among the trees seen this episode and out of reach; without such a
    tree the world waits (no draw). ``state``'s goal arrays are replaced where a goal is set."""
    if config.task != "homing" or len(rows) == 0:
        return
    rows = np.asarray(rows, dtype=np.int64)
    need = to_numpy((state.goal_tree < 0) & (state.steps >= config.explore_steps))[rows]
    rows = rows[need]
    if rows.size == 0:
        return
    backend = "numpy" if isinstance(state.health, np.ndarray) else "torch"
    device = None if backend == "numpy" else state.health.device
    index = from_numpy(rows, backend, device)
    distance = to_numpy(state.tree_distance[index])  # (R, T)
    candidates = to_numpy(state.tree_seen[index]) & (distance > config.eat_radius)  # (R, T)
    chosen = [(k, int(rngs[row].choice(np.flatnonzero(candidates[k])))) for k, row in enumerate(rows)
              if candidates[k].any()]
    if not chosen:
        return
    picked, goal = (np.array(column, dtype=np.int64) for column in zip(*chosen))
    index = from_numpy(rows[picked], backend, device)
    for name, values in (("goal_tree", goal), ("goal_since", to_numpy(state.steps[index])),
                         ("goal_distance", distance[picked, goal]), ("goal_start", to_numpy(state.distance[index]))):
        array = copy_array(getattr(state, name))
        array[index] = from_numpy(np.ascontiguousarray(values, dtype=to_numpy(array[:0]).dtype), backend, device)
        setattr(state, name, array)


def terminated(state: WorldState) -> Array:
    """(B,) bool: the episode ends when health reaches 0."""
    return state.health <= 0


def reward(config: WorldConfig, events: StepEvents, goals: GoalEvents | None, done: Array) -> Array:
    """(B,) float32 reward of a step; ``done`` (B,) bool from :func:`terminated`.

    'task' reward, forage: +1 per edible fruit, -1 per poisonous fruit; homing: +1 per goal
    reached; both lose ``death_penalty`` on the step health reaches 0. 'health': health change / 25.
    """
    xp = namespace(events.health_change)
    if config.reward == "health":
        return events.health_change / HEALTH_PER_REWARD
    f32 = events.health_change.dtype
    if config.task == "homing":
        gain = xp.astype(goals.reached, f32)
    else:
        gain = xp.astype(events.ate, f32) * (1.0 - 2.0 * xp.astype(events.poisoned, f32))
    return gain - config.death_penalty * xp.astype(done, f32)


def spl(reached: Sequence[bool], shortest: Sequence[float], path: Sequence[float]) -> float:
    """Success weighted by Path Length over ended goals: mean of S * l / max(p, l) (Anderson et al.
    2018); ``reached`` S, ``shortest`` l and ``path`` p are per goal, e.g. the info keys
    goal_reached, goal_shortest_path and goal_path_length of the steps where a goal ended. NaN for no goals."""
    s, l, p = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (reached, shortest, path))
    if not len(s) == len(l) == len(p):
        raise ValueError(f"reached, shortest, path: expected equal lengths, got {len(s)}, {len(l)}, {len(p)}")
    if len(s) == 0:
        return math.nan
    return float(np.mean(s * l / np.maximum(np.maximum(p, l), 1e-12)))
