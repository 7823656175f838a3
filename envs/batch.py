"""B worlds behind one object: seeding, partial resets, stepping, observing, spaces and checks.

The Gymnasium single env (a batch of one), the vector env (Gymnasium's next-step autoreset) and
the stable-baselines3 VecEnv (same-step autoreset) all drive a :class:`WorldBatch`, so seeding,
noise, spaces and action checks are written once.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from treeworld.backend import from_numpy, to_numpy
from treeworld.config import WorldConfig
from treeworld.kernels import CompiledPhysics
from treeworld.sensors import PerceptTables, observe
from treeworld.vocabulary import Vocabulary
from treeworld.world import StepEvents, WorldState, sample_world, stack, step

HEALTH_PER_REWARD = 25.0  # reward = health change / 25: one edible fruit is about +1
RESET_OPTIONS = ("world_seed",)


class WorldBatch:
    """B worlds on one backend, each with its own ``np.random.Generator`` (``rngs[i]``).

    Backend "numba" steps numpy states with the compiled kernels (:mod:`treeworld.kernels`),
    "numpy" and "torch" with the array-API reference (:func:`~treeworld.world.step`).

    ``world_seeds[i]``, when not None, fixes row i's tree layout; it holds through autoresets
    until a reset passes new world seeds.
    """

    def __init__(self, config: WorldConfig, num_envs: int, backend: str = "numba", device: str | None = None):
        self.config = config
        self.num_envs = check_count(num_envs, "num_envs")
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

        ``world_seeds`` (one per row) replace the stored ones; None keeps them (autoreset).
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

    def step(self, actions: Any) -> StepEvents:
        """Step every world with ``actions`` (B, 3) already passed through :func:`check_action`."""
        if self.state is None:
            from gymnasium.error import ResetNeeded

            raise ResetNeeded("Cannot call step() before reset(): the worlds do not exist yet.")
        self.state, events = self._step(self.state, actions)
        return events

    def observe(self, rows: Sequence[int] | None = None, squeeze: bool = False) -> dict[str, Any]:
        """Observations (B, ...) of all rows, or of ``rows``; motion noise from each row's rng.

        ``squeeze`` drops the batch axis of a batch of one."""
        if rows is None:
            state = self.state
        else:
            index = self._index(rows)
            state = self.state.map(lambda x: x[index])
        motion = None
        if self.config.motion_noise > 0:
            rngs = self.rngs if rows is None else [self.rngs[i] for i in rows]
            noise = np.stack([rng.normal(0.0, self.config.motion_noise, size=2) for rng in rngs])
            motion = state.motion + from_numpy(noise.astype(np.float32), self.backend, self.device)
        return self._observe(state, motion, squeeze)

    def _layout_rng(self, row: int) -> np.random.Generator:
        seed = self.world_seeds[row]
        return self.rngs[row] if seed is None else np.random.default_rng(seed)

    def _index(self, rows: Sequence[int]) -> Any:
        return from_numpy(np.asarray(rows, dtype=np.int64), self.backend, self.device)


def make_config(config: WorldConfig | None, overrides: dict[str, Any]) -> WorldConfig:
    """``config`` (default ``WorldConfig()``) with keyword ``overrides`` applied; unknown keys raise."""
    if config is not None and not isinstance(config, WorldConfig):
        raise TypeError(f"config: expected a WorldConfig or None, got {type(config).__name__}")
    return (config or WorldConfig()).replace(**overrides)


def check_count(value: Any, name: str) -> int:
    """``value`` as a Python int >= 1 (numpy integers accepted, bools not), or a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 1, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def check_seeds(seed: Any, count: int, name: str = "seed") -> list[int | None]:
    """``count`` seeds from None, one int (row i gets seed + i) or a sequence of ints/None."""
    def one(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected non-negative ints or None, got {value!r}")
        return int(value)

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
    """Validate an action against Box(-1, 1, ``shape``) and return it as float32 on ``backend``."""
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
    action = action.to(torch.float32) if backend == "torch" else np.ascontiguousarray(action, np.float32)
    if not abs(action).max() <= 1:  # True for NaN too
        values = to_numpy(action)
        if not np.isfinite(values).all():
            raise ValueError(f"action: expected finite values in [-1, 1], got {values.tolist()} (NaN or infinite)")
        raise ValueError(f"action: expected values in [-1, 1] (the action space), got min {values.min():.3g}, "
                         f"max {values.max():.3g}")
    return action


def check_reset_options(options: dict | None, num_envs: int = 1) -> list[int | None] | None:
    """Per-env world seeds from reset ``options`` ({"world_seed": int or one per env}); None without."""
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


def observation_space(config: WorldConfig, percept_dim: int) -> spaces.Dict:
    """The Dict observation space (float32) of one world; see TreeWorldEnv's docstring."""
    smell = float(config.num_trees)  # |component| <= sum of T kernel weights (each <= 1) times unit vectors
    motion = np.inf if config.motion_noise > 0 else config.max_step
    boxes = {
        "smell": spaces.Box(-smell, smell, (percept_dim,), np.float32),
        "sight": spaces.Box(-1.0, 1.0, (percept_dim,), np.float32),
        "sight_distance": spaces.Box(0.0, 1.0, (1,), np.float32),
        "motion": spaces.Box(-motion, motion, (2,), np.float32),
        "heading": spaces.Box(-1.0, 1.0, (2,), np.float32),
        "health": spaces.Box(0.0, 1.0, (1,), np.float32),
    }
    if config.observe_position:
        bound = np.inf if config.arena_radius is None else config.arena_radius
        boxes["position"] = spaces.Box(-bound, bound, (2,), np.float32)
    return spaces.Dict(boxes)


ACTION_SPACE = spaces.Box(-1.0, 1.0, (3,), np.float32)


def privileged_info(state: WorldState, events: StepEvents | None) -> dict[str, Any]:
    """Privileged facts of B worlds (arrays with a batch axis, views of the state: copy before keeping)."""
    info = {
        "position": state.agent_position,
        "heading": state.heading,
        "health": state.health,
        "tree_positions": state.tree_position,
        "tree_fruit": state.tree_fruit,
        "tree_poisonous": state.tree_poisonous,
        "fruit_eaten": state.fruit_eaten,
        "poison_eaten": state.poison_eaten,
        "distance_travelled": state.distance,
    }
    if events is not None:
        info["ate"] = events.ate
        info["poisoned"] = events.poisoned
    return info
