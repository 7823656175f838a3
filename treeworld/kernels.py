"""The physics compiled for the CPU: :class:`CompiledPhysics`, numba kernels over numpy states.

Same rules as the array-API reference, :func:`treeworld.world.step` and
:func:`treeworld.sensors.observe` (which also run on torch and CUDA; tests hold the two equal).
The reference pays about a microsecond per array call at batch one, ~100 calls a step; here a
step is one call that updates the state in place and an observation is one call that fills one
buffer, plus one matrix product for the smell. Batches of ``PARALLEL_FROM`` worlds or more run
on all cores, with the product by torch: numpy's OpenBLAS threads keep spinning after a product
and starve the kernels' threads (measured 2-3x slower on 2 cores). Arithmetic is float32 as in
the reference. Each kernel compiles on its first call (seconds, once per process).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from treeworld.config import WorldConfig
from treeworld.sensors import PerceptTables, goal_percept, observation_layout
from treeworld.world import StepEvents, WorldState

PARALLEL_FROM = 256  # batches this large run on all cores (below, starting the threads costs more than it saves)

# The observation keys _observe_worlds writes, in the order of its ``columns`` argument.
_KERNEL_KEYS = ("sight", "sight_distance", "motion", "heading", "health", "position")
# Indices into the float32 parameter vector the kernels read.
MAX_STEP, ARENA, EAT_RADIUS, LIVING_COST, MOVE_COST, FRUIT_HEALTH, MAX_HEALTH, LOG_KERNEL, SIGHT_COS, SIGHT_RANGE = range(10)


def _step_worlds(params, regrow_every, max_fruit, action, position, heading, motion, health, steps, fruit_eaten,
                 poison_eaten, distance, tree_offset, tree_distance, tree_fruit, tree_poisonous, sight_tree, tree_seen):
    """One step of B worlds, in place. Returns ate and poisoned flags (2, B) and health change (B,)."""
    num_worlds, num_trees = tree_fruit.shape
    max_step, arena, eat_radius = params[MAX_STEP], params[ARENA], params[EAT_RADIUS]
    sight_cos, sight_range = params[SIGHT_COS], params[SIGHT_RANGE]
    one, zero = np.float32(1.0), np.float32(0.0)
    flags, change = np.zeros((2, num_worlds), np.bool_), np.empty(num_worlds, np.float32)
    for b in numba.prange(num_worlds):
        wish_x, wish_y = action[b, 0], action[b, 1]
        scale = max_step / max(math.hypot(wish_x, wish_y), one)
        x, y = position[b, 0] + wish_x * scale, position[b, 1] + wish_y * scale
        if arena < np.inf:  # a move that would leave the disc ends on the wall
            shrink = arena / max(math.hypot(x, y), arena)
            x, y = x * shrink, y * shrink
        move_x, move_y = x - position[b, 0], y - position[b, 1]
        moved = math.hypot(move_x, move_y)
        position[b, 0], position[b, 1] = x, y
        motion[b, 0], motion[b, 1] = move_x, move_y
        if moved > zero:
            heading[b, 0], heading[b, 1] = move_x / moved, move_y / moved
        target, nearest = -1, np.float32(np.inf)  # the nearest tree in reach with fruit
        seen, nearest_seen = -1, np.float32(np.inf)  # the tree in sight (see world.in_sight)
        for t in range(num_trees):
            off_x, off_y = tree_offset[b, 0, t] - move_x, tree_offset[b, 1, t] - move_y
            tree_offset[b, 0, t], tree_offset[b, 1, t] = off_x, off_y
            d = math.hypot(off_x, off_y)
            tree_distance[b, t] = d
            if d <= eat_radius and tree_fruit[b, t] > 0 and d < nearest:
                target, nearest = t, d
            ahead = off_x * heading[b, 0] + off_y * heading[b, 1]
            if ahead >= sight_cos * d and d < sight_range and d < nearest_seen:
                seen, nearest_seen = t, d
        sight_tree[b] = seen
        if seen >= 0:
            tree_seen[b, seen] = True
        old = health[b]
        h = old - (params[LIVING_COST] + params[MOVE_COST] * moved)
        if action[b, 2] > zero and target >= 0:
            poisoned = tree_poisonous[b, target]
            flags[0, b], flags[1, b] = True, poisoned
            tree_fruit[b, target] -= 1
            if poisoned:
                h -= params[FRUIT_HEALTH]
                poison_eaten[b] += 1
            else:
                h += params[FRUIT_HEALTH]
                fruit_eaten[b] += 1
        h = min(max(h, zero), params[MAX_HEALTH])
        health[b], change[b] = h, h - old
        steps[b] += 1
        distance[b] += moved
        if steps[b] % regrow_every == 0:
            for t in range(num_trees):
                tree_fruit[b, t] = min(tree_fruit[b, t] + 1, max_fruit)
    return flags, change


def _observe_worlds(params, columns, sight_table, motion, heading, health, position, tree_distance,
                    tree_smell_weight, tree_smell_rows, tree_sight_row, tree_fruit, sight_tree, sight_noise,
                    smell_weights, out):
    """Observations of B worlds into ``out`` (B, W): every key but smell and goal at the start columns
    ``columns`` (SIGHT ... POSITION, -1 when absent), with ``sight_noise`` (B, D) added where a tree
    is seen (empty: none); the smell's kernel weights go onto the smell table's rows in
    ``smell_weights`` (B, R)."""
    num_worlds, num_trees = tree_distance.shape
    dim = sight_table.shape[1]
    log_kernel, sight_range = params[LOG_KERNEL], params[SIGHT_RANGE]
    sight, seen_at, motion_at, heading_at, health_at, position_at = columns
    noisy = sight_noise.shape[0] > 0
    for b in numba.prange(num_worlds):
        smell_weights[b] = 0.0
        for t in range(num_trees):
            d = tree_distance[b, t]
            weight = math.exp(d * d * log_kernel) * tree_smell_weight[b, t]
            smell_weights[b, tree_smell_rows[b, t]] += weight  # the kind's row
            smell_weights[b, tree_smell_rows[b, num_trees + t]] += weight  # the name's row
        seen = sight_tree[b]
        if seen >= 0:
            out[b, sight:sight + dim] = sight_table[tree_sight_row[b, seen] + tree_fruit[b, seen]]
            if noisy:
                out[b, sight:sight + dim] += sight_noise[b]
            out[b, seen_at] = tree_distance[b, seen] / sight_range
        else:
            out[b, sight:sight + dim] = 0.0
            out[b, seen_at] = 0.0
        out[b, motion_at], out[b, motion_at + 1] = motion[b, 0], motion[b, 1]
        out[b, heading_at], out[b, heading_at + 1] = heading[b, 0], heading[b, 1]
        out[b, health_at] = health[b] / params[MAX_HEALTH]
        if position_at >= 0:
            out[b, position_at], out[b, position_at + 1] = position[b, 0], position[b, 1]


def _compile(fn):
    """(serial, parallel) numba kernels of ``fn``; each compiles on its first call."""
    return numba.njit(error_model="numpy")(fn), numba.njit(error_model="numpy", parallel=True)(fn)


_STEP, _OBSERVE = _compile(_step_worlds), _compile(_observe_worlds)


class CompiledPhysics:
    """``step`` and ``observe`` of :mod:`treeworld.world` / :mod:`treeworld.sensors` for numpy states.

    ``tables`` are the numpy :class:`~treeworld.sensors.PerceptTables` of ``config``.
    """

    def __init__(self, config: WorldConfig, tables: PerceptTables):
        self.config = config
        self.tables = tables
        self._smell_table = torch.from_numpy(tables.smell)
        arena = np.inf if config.arena_radius is None else config.arena_radius
        log_kernel = math.log(config.smell_attenuation) / config.smell_distance ** 2
        self.params = np.array([  # in the order of the index constants MAX_STEP ... SIGHT_RANGE
            config.max_step, arena, config.eat_radius, config.living_cost, config.move_cost, config.fruit_health,
            config.max_health, log_kernel, config.sight_cos, config.sight_distance], np.float32)
        layout = observation_layout(config, tables.smell.shape[1])
        self._columns, self._width = {}, 0  # each observation's columns in the one buffer _observe_worlds fills
        for key, (width, _, _) in layout.items():
            self._columns[key] = slice(self._width, self._width + width)
            self._width += width
        self._starts = np.array([self._columns[key].start if key in layout else -1 for key in _KERNEL_KEYS], np.int64)
        self._no_noise = np.empty((0, tables.smell.shape[1]), np.float32)

    def step(self, state: WorldState, action: np.ndarray) -> tuple[WorldState, StepEvents]:
        """Like :func:`treeworld.world.step`, but updates ``state`` in place and returns it.

        ``action`` (B, 3) float32 in [-1, 1], C-contiguous."""
        flags, change = _STEP[state.batch_size >= PARALLEL_FROM](
            self.params, self.config.regrow_every, self.config.max_fruit, action, state.agent_position, state.heading,
            state.motion, state.health, state.steps, state.fruit_eaten, state.poison_eaten, state.distance,
            state.tree_offset, state.tree_distance, state.tree_fruit, state.tree_poisonous, state.sight_tree,
            state.tree_seen)
        return state, StepEvents(ate=flags[0], poisoned=flags[1], health_change=change)

    def observe(self, state: WorldState, motion: np.ndarray | None = None, percept_noise: np.ndarray | None = None,
                squeeze: bool = False) -> dict[str, np.ndarray]:
        """Like :func:`treeworld.sensors.observe`: fresh (B, ...) arrays (views of one new buffer)."""
        parallel = state.batch_size >= PARALLEL_FROM
        out = np.empty((state.batch_size, self._width), np.float32)
        smell_weights = np.empty((state.batch_size, self.tables.smell.shape[0]), np.float32)
        sight_noise = self._no_noise if percept_noise is None else np.ascontiguousarray(percept_noise[:, 1])
        _OBSERVE[parallel](
            self.params, self._starts, self.tables.sight, state.motion if motion is None else motion, state.heading,
            state.health, state.agent_position, state.tree_distance, state.tree_smell_weight, state.tree_smell_rows,
            state.tree_sight_row, state.tree_fruit, state.sight_tree, sight_noise, smell_weights, out)
        smell = out[:, self._columns["smell"]]
        if parallel:
            torch.matmul(torch.from_numpy(smell_weights), self._smell_table, out=torch.from_numpy(smell))
        else:
            np.matmul(smell_weights, self.tables.smell, out=smell)
        if percept_noise is not None:
            smell += percept_noise[:, 0]
        if "goal" in self._columns:
            out[:, self._columns["goal"]] = goal_percept(self.tables, state)
        rows = out[0] if squeeze else out
        return {key: rows[..., columns] for key, columns in self._columns.items()}
