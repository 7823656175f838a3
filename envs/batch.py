"""B worlds behind one object: seeding, partial resets, stepping, observing, spaces and checks.

The Gymnasium single env (a batch of one), the vector env (Gymnasium's next-step autoreset) and
the stable-baselines3 VecEnv (same-step autoreset) all drive a :class:`WorldBatch`, so seeding,
noise, spaces and action checks are written once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from treeworld import checks, tasks
from treeworld.backend import from_numpy, to_numpy
from treeworld.config import WorldConfig
from treeworld.kernels import CompiledPhysics
from treeworld.sensors import PerceptTables, observation_layout, observe, odometry
from treeworld.tasks import GoalEvents
from treeworld.vocabulary import FRUIT_PHRASES, Vocabulary
from treeworld.world import StepEvents, WorldState, sample_world, stack, step

RESET_OPTIONS = ("world_seed",)


@dataclass
class Transition:
    """What one step of B worlds gives the env layer: (B,) arrays, plus the events behind them."""

    reward: Any  # float32
    terminated: Any  # bool
    events: StepEvents
    goals: GoalEvents | None  # homing only


class WorldBatch:
    """B worlds on one backend, each with its own ``np.random.Generator`` (``rngs[i]``).

    Backend "numba" steps numpy states with the compiled kernels (:mod:`treeworld.kernels`),
    "numpy" and "torch" with the array-API reference (:func:`~treeworld.world.step`). Task rules
    (goals, reward, termination) come from :mod:`treeworld.tasks`.

    ``world_seeds[i]``, when not None, fixes row i's tree layout; it holds through every later
    reset until a reset passes new world seeds.

    Each row's generator draws, in this order: the layout (without a world seed) and start at a
    reset; the homing goal when one is drawn; the motion noise (2,) and percept noise (2, D) of each
    observation when their levels are above zero.
    """

    def __init__(self, config: WorldConfig, num_envs: int, backend: str = "numba", device: str | None = None):
        self.config = config
        self.num_envs = checks.count(num_envs, "num_envs")
        self.backend = backend
        self.device = device
        self.vocabulary = Vocabulary.for_config(config)
        self.tables = PerceptTables.build(config, self.vocabulary, backend, device)
        if backend == "numba":
            physics = CompiledPhysics(config, self.tables)
            self._step, self._observe = physics.step, physics.observe
        else:
            self._step, self._observe = partial(step, config), partial(observe, config, self.tables)
        self.rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self.world_seeds: list[int | None] = [None] * self.num_envs
        self.state: WorldState | None = None

    def seed(self, seeds: Sequence[int | None]) -> None:
        """Per row: a seed replaces the generator; None keeps it (fresh OS entropy the first time)."""
        for i, seed in enumerate(seeds):
            if seed is not None or self.rngs[i] is None:
                self.rngs[i] = np.random.default_rng(seed)

    def reset(self, rows: Sequence[int], world_seeds: Sequence[int | None] | None = None) -> None:
        """Fresh worlds in ``rows``: layout from the row's world seed (else its rng), start from its rng.

        ``world_seeds`` (one per row) replace the stored ones; None keeps them.
        """
        if world_seeds is not None:
            for i, seed in zip(rows, world_seeds):
                self.world_seeds[i] = seed
        fresh = stack([sample_world(self.config, self.vocabulary, self._layout_rng(i), self.rngs[i])
                       for i in rows]).to(self.backend, self.device)
        if self.state is None or len(rows) == self.num_envs:
            self.state = fresh
        else:
            self.state.write_rows(self._index(rows), fresh)
        tasks.draw_goals(self.config, self.state, rows, self.rngs)

    def step(self, actions: Any, restart: Sequence[int] = ()) -> Transition:
        """Step every world with ``actions`` (B, 3) from :func:`check_action`, then reset the rows
        ``restart`` (next-step autoreset: their step counts for nothing) and draw the goals due."""
        if self.state is None:
            raise ResetNeeded("Cannot call step() before reset(): the worlds do not exist yet.")
        self.state, events = self._step(self.state, actions)
        goals = tasks.end_goals(self.config, self.state)
        done = tasks.terminated(self.state)
        transition = Transition(tasks.reward(self.config, events, goals, done), done, events, goals)
        if len(restart):
            self.reset(restart)
            kept = np.ones(self.num_envs, dtype=bool)
            kept[list(restart)] = False
            transition = _masked(transition, from_numpy(kept, self.backend, self.device))
        if self.config.task == "homing":  # the restarted rows drew theirs in reset
            restarted = set(restart)
            tasks.draw_goals(self.config, self.state, [i for i in range(self.num_envs) if i not in restarted], self.rngs)
        return transition

    def observe(self, rows: Sequence[int] | None = None, squeeze: bool = False) -> dict[str, Any]:
        """Observations (B, ...) of all rows, or of ``rows``; sensor noise from each row's rng.

        ``squeeze`` drops the batch axis of a batch of one."""
        if rows is None:
            state = self.state
        else:
            index = self._index(rows)
            state = self.state.map(lambda x: x[index])
        rngs = self.rngs if rows is None else [self.rngs[i] for i in rows]
        config = self.config
        noise = None
        if config.motion_noise > 0:
            noise = self._array(np.stack([rng.normal(0.0, config.motion_noise, size=2) for rng in rngs]))
        motion = odometry(config, state.motion, noise)
        percept_noise = None
        if config.percept_noise > 0:
            dim = self.vocabulary.dim
            percept_noise = self._array(np.stack([rng.standard_normal((2, dim), dtype=np.float32) for rng in rngs])
                                        * np.float32(config.percept_noise))
        return self._observe(state, motion, percept_noise, squeeze)

    def _array(self, values: np.ndarray) -> Any:
        return from_numpy(values.astype(np.float32, copy=False), self.backend, self.device)

    def _layout_rng(self, row: int) -> np.random.Generator:
        seed = self.world_seeds[row]
        return self.rngs[row] if seed is None else np.random.default_rng(seed)

    def _index(self, rows: Sequence[int]) -> Any:
        return from_numpy(np.asarray(rows, dtype=np.int64), self.backend, self.device)


def _masked(transition: Transition, kept: Any) -> Transition:
    """``transition`` with the rows where ``kept`` (B,) is False zeroed (restart steps report nothing)."""
    def mask(x):
        return x & kept if x.dtype == kept.dtype else x * kept

    events, goals = transition.events, transition.goals
    return Transition(
        mask(transition.reward), mask(transition.terminated),
        StepEvents(**{name: mask(getattr(events, name)) for name in ("ate", "poisoned", "health_change")}),
        None if goals is None else GoalEvents(**{f.name: mask(getattr(goals, f.name)) for f in fields(GoalEvents)}))


def make_config(config: WorldConfig | None, overrides: dict[str, Any], preset: dict[str, Any] | None = None
                ) -> WorldConfig:
    """``config`` (default: ``WorldConfig(**preset)``, an id's task settings) with keyword
    ``overrides`` applied; unknown keys raise. A given ``config`` is taken whole: the preset does
    not touch it."""
    if config is not None:
        return checks.instance(config, WorldConfig, "config").replace(**overrides)
    return WorldConfig().replace(**{**(preset or {}), **overrides})


def check_seeds(seed: Any, count: int, name: str = "seed") -> list[int | None]:
    """``count`` seeds from None, one int (row i gets seed + i) or a sequence of ints/None."""
    def one(value: Any) -> int | None:
        return None if value is None else checks.integer(value, name, low=0)

    if isinstance(seed, np.ndarray) and seed.ndim == 0:
        seed = seed.item()
    if seed is None or isinstance(seed, (int, np.integer)):
        first = one(seed)
        return [None if first is None else first + i for i in range(count)]
    if not isinstance(seed, (list, tuple, np.ndarray)):
        raise TypeError(f"{name}: expected None, an int or a sequence of {count} ints, got {type(seed).__name__}")
    if len(seed) != count:
        raise ValueError(f"{name}: expected {count} seeds (one per env), got {len(seed)}")
    return [one(value) for value in seed]


def check_action(action: Any, shape: tuple[int, ...], backend: str = "numpy", device: str | None = None) -> Any:
    """An action for Box(-1, 1, ``shape``) as float32 on ``backend``: finite values outside the box
    are clipped to it (as MuJoCo and Box2D envs do); NaN, inf, a wrong shape or dtype raise."""
    try:
        if backend == "torch":
            import torch

            action = torch.as_tensor(action, device=device)
            kind = "b" if action.dtype == torch.bool else "c" if action.is_complex() else (
                "f" if action.is_floating_point() else "i")
        else:
            action = np.asarray(action)
            kind = action.dtype.kind
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"action: expected a float array of shape {shape}, got {type(action).__name__}: {e}") from e
    if kind not in "fiu":
        raise TypeError(f"action: expected a real-valued (float) array, got dtype {action.dtype}")
    if tuple(action.shape) != shape:
        raise ValueError(f"action: expected shape {shape}, got {tuple(action.shape)}")
    if not abs(action).max() <= 1:  # True for NaN too; checked and clipped in the given dtype (1e39 is finite)
        if not np.isfinite(to_numpy(action)).all():
            raise ValueError(f"action: expected finite values, got {to_numpy(action).tolist()} (NaN or infinite)")
        action = action.clamp(-1, 1) if backend == "torch" else np.clip(action, -1, 1)
    return action.to(torch.float32) if backend == "torch" else np.ascontiguousarray(action, np.float32)


# Discrete actions: 0-7 a full step east, north-east, north, ..., south-east; 8 stay; 9 eat.
_ANGLES = np.arange(8) * (np.pi / 4)
DISCRETE_ACTIONS = np.vstack([np.stack([np.cos(_ANGLES), np.sin(_ANGLES), -np.ones(8)], axis=1),
                              [[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]]).astype(np.float32)  # (10, 3)


def discrete_space() -> spaces.Discrete:
    """A new Discrete action space (each env its own: seeding one never reseeds another's)."""
    return spaces.Discrete(len(DISCRETE_ACTIONS))


def check_discrete_action(action: Any, shape: tuple[int, ...], backend: str = "numpy",
                          device: str | None = None) -> Any:
    """Integer actions of ``shape`` in [0, 10) -> their (*shape, 3) float32 rows of DISCRETE_ACTIONS."""
    values = to_numpy(action) if hasattr(action, "detach") else np.asarray(action)
    if values.dtype.kind not in "iu":
        raise TypeError(f"action: expected integer actions in [0, {len(DISCRETE_ACTIONS)}), got dtype {values.dtype}")
    if values.shape != shape:
        raise ValueError(f"action: expected shape {shape}, got {values.shape}")
    if values.size and not (0 <= values.min() and values.max() < len(DISCRETE_ACTIONS)):
        raise ValueError(f"action: expected ints in [0, {len(DISCRETE_ACTIONS)}), got {values.tolist()}")
    return from_numpy(DISCRETE_ACTIONS[values], backend, device)


def check_reset_options(options: dict | None, num_envs: int = 1) -> list[int | None] | None:
    """Per-env world seeds from reset ``options`` ({"world_seed": int or one per env}); None without
    options (the stored world seeds stay); options without "world_seed" clear them."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise TypeError(f"options: expected a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"options: unknown key(s) {unknown}; expected keys from {list(RESET_OPTIONS)}")
    seed = options.get("world_seed")
    if isinstance(seed, (list, tuple)) or (isinstance(seed, np.ndarray) and seed.ndim > 0):
        return check_seeds(seed, num_envs, "options['world_seed']")
    return check_seeds(seed, 1, "options['world_seed']") * num_envs


def check_device(device: Any) -> str:
    """A torch device name that exists on this machine, as a string."""
    import torch

    try:
        parsed = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from e
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available here; use device='cpu'")
    return str(device)


def observation_space(config: WorldConfig, percept_dim: int) -> spaces.Dict:
    """The Dict observation space (float32) of one world, from :func:`~treeworld.sensors.observation_layout`."""
    return spaces.Dict({key: spaces.Box(low, high, (width,), np.float32)
                        for key, (width, low, high) in observation_layout(config, percept_dim).items()})


def action_space() -> spaces.Box:
    """A new Box(-1, 1, (3,)) action space (each env its own: seeding one never reseeds another's)."""
    return spaces.Box(-1.0, 1.0, (3,), np.float32)


def privileged_info(config: WorldConfig, state: WorldState, transition: Transition | None) -> dict[str, Any]:
    """Privileged facts of B worlds (arrays with a batch axis, views of the state: copy before keeping).

    Every task: position, heading, health, tree_positions, tree_fruit, tree_poisonous,
    tree_identity (the index of each tree's (kind, name) pair, unique within a world: what its
    look is, fruit aside), fruit_eaten, poison_eaten, distance_travelled; after a step: ate, poisoned. Homing adds
    goal_tree (-1: none), goals_reached, goals_failed, and after a step, for a goal that ended
    on it: goal_reached, goal_failed, goal_distance (straight line when set), goal_shortest_path
    (l) and goal_path_length (p), zeros on other steps (see :mod:`treeworld.tasks`).
    """
    info = {
        "position": state.agent_position,
        "heading": state.heading,
        "health": state.health,
        "tree_positions": state.tree_position,
        "tree_fruit": state.tree_fruit,
        "tree_poisonous": state.tree_poisonous,
        "tree_identity": state.tree_sight_row // len(FRUIT_PHRASES),
        "fruit_eaten": state.fruit_eaten,
        "poison_eaten": state.poison_eaten,
        "distance_travelled": state.distance,
    }
    if config.task == "homing":
        info.update(goal_tree=state.goal_tree, goals_reached=state.goals_reached, goals_failed=state.goals_failed)
    if transition is not None:
        info["ate"] = transition.events.ate
        info["poisoned"] = transition.events.poisoned
        goals = transition.goals
        if goals is not None:
            info.update(goal_reached=goals.reached, goal_failed=goals.failed, goal_distance=goals.distance,
                        goal_shortest_path=goals.shortest, goal_path_length=goals.path)
    return info
