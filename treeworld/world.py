"""World state and physics over a leading batch axis: sample, step (move, eat, costs, regrowth).

Pure functions over a :class:`WorldState` of arrays (numpy or torch, see
:mod:`treeworld.backend`). Worlds are sampled one at a time in numpy from explicit
``np.random.Generator`` objects, so a batch of N worlds equals N single worlds drawn with the same
generators, then stacked and moved to the chosen backend and device.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from treeworld.backend import device_of, from_numpy, namespace
from treeworld.config import WorldConfig
from treeworld.vocabulary import EDIBLE_KINDS, FRUIT_PHRASES, Vocabulary

Array = Any  # a numpy array or a torch tensor


@dataclass
class WorldState:
    """Everything about B worlds of T trees. Shapes in comments; float32 unless a dtype is given.

    ``step`` returns a new state; arrays it does not change (the layout) are shared with the old one.
    """

    agent_position: Array  # (B, 2) world units
    heading: Array  # (B, 2) unit vector, direction of the last move
    motion: Array  # (B, 2) realized displacement of the last step
    health: Array  # (B,) in [0, max_health]
    steps: Array  # (B,) int64 steps taken this episode
    fruit_eaten: Array  # (B,) int64 edible fruit eaten this episode
    poison_eaten: Array  # (B,) int64 poisonous fruit eaten this episode
    distance: Array  # (B,) world units travelled this episode
    tree_position: Array  # (B, T, 2) world units
    tree_kind: Array  # (B, T) int64 vocabulary row of the fruit kind
    tree_name: Array  # (B, T) int64 vocabulary row of the (unique) tree name
    tree_poisonous: Array  # (B, T) bool
    tree_fruit: Array  # (B, T) int8 in [0, max_fruit]
    tree_smell_weight: Array  # (B, T) 1 / ||e_kind + e_name||, fixed per world (normalizes a tree's percept)
    tree_smell_rows: Array  # (B, 2T) int64 rows of the smell table (kinds, then pooled names), fixed per world
    tree_sight_row: Array  # (B, T) int64 first row of the tree's (kind, name) block in the sight table
    tree_offset: Array  # (B, 2, T) tree_position - agent_position (x row, y row), kept in step with the agent
    tree_distance: Array  # (B, T) |tree_offset|, used by eating and by both sensors
    sight_tree: Array  # (B,) int64 the tree in sight (nearest in the heading cone and range), -1 for none
    tree_seen: Array  # (B, T) bool, the tree has been in sight this episode
    goal_tree: Array  # (B,) int64 homing: the goal tree, -1 while none is set
    goal_since: Array  # (B,) int64 homing: the step count when the goal was set
    goal_distance: Array  # (B,) homing: straight-line distance to the goal tree when it was set
    goal_start: Array  # (B,) homing: distance travelled this episode when the goal was set
    goals_reached: Array  # (B,) int64 homing: goals reached this episode
    goals_failed: Array  # (B,) int64 homing: goals timed out this episode

    @property
    def batch_size(self) -> int:
        return self.health.shape[0]

    def map(self, fn) -> "WorldState":
        """A new state with ``fn`` applied to every array."""
        return WorldState(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, backend: str, device: str | None = None) -> "WorldState":
        """Move a numpy state to ``backend`` ('numpy' or 'torch') on ``device``."""
        return self.map(lambda x: from_numpy(x, backend, device))

    def write_rows(self, rows: Array, source: "WorldState") -> None:
        """In place: rows ``rows`` of every array take ``source``'s (len(rows)) rows (autoreset).

        Layout arrays are shared with earlier states, so those see the new rows too."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[rows] = getattr(source, f.name)


@dataclass
class StepEvents:
    """What happened in one step, per world: (B,) arrays."""

    ate: Array  # bool, an eat succeeded
    poisoned: Array  # bool, the fruit eaten was poisonous
    health_change: Array  # float32, new health - old health


def sample_world(config: WorldConfig, vocabulary: Vocabulary, layout_rng: np.random.Generator,
                 agent_rng: np.random.Generator) -> WorldState:
    """One fresh world (B = 1, numpy): trees from ``layout_rng``, agent start from ``agent_rng``."""
    n = config.num_trees
    if config.arena_radius is None:
        positions = layout_rng.normal(0.0, config.tree_spread, size=(n, 2))
    else:  # the isotropic Gaussian truncated to the arena: inverse CDF of the truncated Rayleigh radius
        inside = -math.expm1(-0.5 * (config.arena_radius / config.tree_spread) ** 2)  # P(|x| <= arena_radius)
        radius = config.tree_spread * np.sqrt(-2.0 * np.log1p(-layout_rng.random(n) * inside))
        angle = layout_rng.uniform(0.0, 2 * math.pi, size=n)
        positions = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    names = vocabulary.name_offset + layout_rng.choice(config.name_pool, size=n, replace=False)
    poisonous = layout_rng.random(n) < config.poison_probability
    edible_kind = layout_rng.integers(0, len(EDIBLE_KINDS), size=n)
    poison_kind = layout_rng.integers(len(EDIBLE_KINDS), vocabulary.num_kinds, size=n)
    kinds = np.where(poisonous, poison_kind, edible_kind)
    fruit = layout_rng.integers(0, config.max_fruit + 1, size=n)
    radius = config.start_radius * math.sqrt(agent_rng.random())
    angle, heading_angle = agent_rng.uniform(0.0, 2 * math.pi, size=2)
    return build_world(config, vocabulary, positions, kinds, names, fruit,
                       agent_position=(radius * math.cos(angle), radius * math.sin(angle)),
                       heading=(math.cos(heading_angle), math.sin(heading_angle)))


def build_world(config: WorldConfig, vocabulary: Vocabulary, tree_position, tree_kind, tree_name, tree_fruit,
                agent_position=(0.0, 0.0), heading=(1.0, 0.0)) -> WorldState:
    """One world (B = 1, numpy) from explicit trees: positions (T, 2), kinds (T,) in [0, 16), names
    (T,) vocabulary rows of pooled names, fruit (T,); the agent at full health."""
    f32 = np.float32
    positions = np.asarray(tree_position, f32).reshape(-1, 2)
    kinds, names, fruit = (np.asarray(a, np.int64).reshape(-1) for a in (tree_kind, tree_name, tree_fruit))
    if ((fruit < 0) | (fruit > config.max_fruit)).any():
        raise ValueError(f"tree_fruit: expected counts in [0, {config.max_fruit}], got {fruit.tolist()}")
    pooled = names - vocabulary.name_offset
    if not (len(kinds) == len(names) == len(fruit) == len(positions)):
        raise ValueError(f"trees: expected equal lengths, got positions {len(positions)}, kinds {len(kinds)}, "
                         f"names {len(names)}, fruit {len(fruit)}")
    if len(set(names.tolist())) != len(names):
        raise ValueError(f"tree_name: expected unique names within a world, got {names.tolist()}")
    if ((kinds < 0) | (kinds >= vocabulary.num_kinds)).any() or ((pooled < 0) | (pooled >= config.name_pool)).any():
        raise ValueError(f"tree_kind/tree_name: expected kinds in [0, {vocabulary.num_kinds}) and names in "
                         f"[{vocabulary.name_offset}, {vocabulary.name_offset + config.name_pool})")
    smell_weight = 1.0 / np.linalg.norm(vocabulary.table[kinds] + vocabulary.table[names], axis=1)
    position = np.asarray(agent_position, f32).reshape(1, 2)
    offset = np.ascontiguousarray((positions - position).T[None])  # (1, 2, T)
    distance = np.hypot(offset[:, 0], offset[:, 1])  # (1, T)
    heading = np.asarray(heading, f32).reshape(1, 2)
    sight = in_sight(config, np, offset, distance, heading)
    zero_steps, minus_one = np.zeros(1, dtype=np.int64), np.full(1, -1, dtype=np.int64)
    return WorldState(
        agent_position=position,
        heading=heading,
        motion=np.zeros((1, 2), dtype=f32),
        health=np.full(1, config.max_health, dtype=f32),
        steps=np.zeros(1, dtype=np.int64),
        fruit_eaten=np.zeros(1, dtype=np.int64),
        poison_eaten=np.zeros(1, dtype=np.int64),
        distance=np.zeros(1, dtype=f32),
        tree_position=positions[None],
        tree_kind=kinds[None],
        tree_name=names[None],
        tree_poisonous=(kinds >= len(EDIBLE_KINDS))[None],
        tree_fruit=fruit.astype(np.int8)[None],
        tree_smell_weight=smell_weight.astype(f32)[None],
        tree_smell_rows=np.concatenate([kinds, pooled + vocabulary.num_kinds])[None],
        tree_sight_row=((kinds * config.name_pool + pooled) * len(FRUIT_PHRASES))[None],
        tree_offset=offset,
        tree_distance=distance,
        sight_tree=sight,
        tree_seen=np.arange(len(kinds))[None] == sight[:, None],
        goal_tree=minus_one,
        goal_since=zero_steps.copy(),
        goal_distance=np.zeros(1, dtype=f32),
        goal_start=np.zeros(1, dtype=f32),
        goals_reached=zero_steps.copy(),
        goals_failed=zero_steps.copy(),
    )


def in_sight(config: WorldConfig, xp: Any, offset: Array, distance: Array, heading: Array) -> Array:
    """(B,) int64 index of the tree in sight, -1 for none: the nearest tree within ``sight_distance``
    whose direction has cos >= ``sight_cos`` with the heading. ``offset`` (B, 2, T), ``distance``
    (B, T), ``heading`` (B, 2)."""
    ahead = offset[:, 0] * heading[:, 0:1] + offset[:, 1] * heading[:, 1:2]  # (B, T)
    visible = (ahead >= config.sight_cos * distance) & (distance < config.sight_distance)
    nearest = xp.argmin(xp.where(visible, distance, math.inf), axis=1)  # (B,)
    return xp.where(xp.any(visible, axis=1), nearest, -1)


def stack(states: Sequence[WorldState]) -> WorldState:
    """Concatenate numpy states along the batch axis."""
    if not states:
        raise ValueError("states: expected at least one state to stack, got none")
    return WorldState(**{f.name: np.concatenate([getattr(s, f.name) for s in states])
                         for f in dataclasses.fields(WorldState)})


def step(config: WorldConfig, state: WorldState, action: Array) -> tuple[WorldState, StepEvents]:
    """Advance B worlds by one step.

    ``action`` (B, 3) in [-1, 1]: (dx, dy) times ``max_step`` is the wished displacement (longer
    ones are shortened to ``max_step``); a move that would leave the arena ends on the wall at the
    nearest point. Eat when action[:, 2] > 0: one fruit from the nearest tree in reach
    (``eat_radius``) that has fruit. Then costs, health clamped to [0, max_health], regrowth.
    Every array call costs about a microsecond at B = 1, a large share of the single env's
    budget, so the code keeps calls few and skips eating and regrowth when no world needs them.
    """
    xp = namespace(state.health)
    wish = action[:, :2]  # (B, 2) in units of max_step
    length = xp.hypot(wish[:, 0], wish[:, 1])  # (B,)
    position = state.agent_position + wish * (config.max_step / xp.maximum(length, 1.0))[:, None]
    if config.arena_radius is not None:
        radius = xp.hypot(position[:, 0], position[:, 1])
        position = position * (config.arena_radius / xp.maximum(radius, config.arena_radius))[:, None]
    move = position - state.agent_position  # (B, 2) realized displacement
    moved = xp.hypot(move[:, 0], move[:, 1])  # (B,)
    heading = xp.where((moved > 0)[:, None], move / xp.where(moved > 0, moved, 1.0)[:, None], state.heading)
    offset = state.tree_offset - move[:, :, None]  # (B, 2, T)
    dist = xp.hypot(offset[:, 0], offset[:, 1])  # (B, T)
    health = state.health - (config.living_cost + config.move_cost * moved)
    fruit, fruit_eaten, poison_eaten = state.tree_fruit, state.fruit_eaten, state.poison_eaten

    ate = action[:, 2] > 0  # (B,) the eat wish; all False when no world eats
    poisoned = xp.zeros_like(ate)
    if xp.any(ate):  # shortcuts only: the result is the same without them
        reachable = (dist <= config.eat_radius) & (state.tree_fruit > 0)  # (B, T)
        eaters = xp.nonzero(ate & xp.any(reachable, axis=1))[0]  # (E,) usually a few of B
        ate = xp.zeros_like(ate)
        if eaters.shape[0]:
            target = xp.argmin(xp.where(reachable[eaters], dist[eaters], math.inf), axis=1)  # (E,) nearest with fruit
            bad = state.tree_poisonous[eaters, target]  # (E,)
            ate[eaters] = True
            poisoned[eaters] = bad
            fruit = xp.asarray(fruit, copy=True)
            fruit[eaters, target] -= 1
            health[eaters] += config.fruit_health * (1.0 - 2.0 * xp.astype(bad, health.dtype))
            fruit_eaten = fruit_eaten + xp.astype(ate & ~poisoned, fruit_eaten.dtype)
            poison_eaten = poison_eaten + xp.astype(poisoned, poison_eaten.dtype)
    health = xp.minimum(xp.maximum(health, 0.0), config.max_health)

    steps = state.steps + 1
    regrow = steps % config.regrow_every == 0  # (B,)
    if xp.any(regrow):
        fruit = xp.minimum(fruit + xp.astype(regrow, fruit.dtype)[:, None], config.max_fruit)
    sight = in_sight(config, xp, offset, dist, heading)  # (B,)
    trees = xp.arange(dist.shape[1], device=device_of(dist))

    new_state = WorldState(  # the constructor, not dataclasses.replace: several microseconds cheaper
        agent_position=position, heading=heading, motion=move, health=health, steps=steps, fruit_eaten=fruit_eaten,
        poison_eaten=poison_eaten, distance=state.distance + moved, tree_position=state.tree_position,
        tree_kind=state.tree_kind, tree_name=state.tree_name, tree_poisonous=state.tree_poisonous, tree_fruit=fruit,
        tree_smell_weight=state.tree_smell_weight, tree_smell_rows=state.tree_smell_rows,
        tree_sight_row=state.tree_sight_row, tree_offset=offset, tree_distance=dist, sight_tree=sight,
        tree_seen=state.tree_seen | (trees == sight[:, None]), goal_tree=state.goal_tree, goal_since=state.goal_since,
        goal_distance=state.goal_distance, goal_start=state.goal_start, goals_reached=state.goals_reached,
        goals_failed=state.goals_failed)
    return new_state, StepEvents(ate=ate, poisoned=poisoned, health_change=health - state.health)
