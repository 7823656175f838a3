"""B worlds behind one object: seeding, partial resets, stepping, observing, spaces and checks.

The Gymnasium single env (a batch of one), the vector env (Gymnasium's next-step autoreset) and
the stable-baselines3 VecEnv (same-step autoreset) all drive a :class:`WorldBatch`, so seeding,
noise, spaces and action checks are written once.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from treeworld.backend import from_numpy, to_numpy
from treeworld.config import WorldConfig
from treeworld.sensors import PerceptTables, observe
from treeworld.vocabulary import Vocabulary
from treeworld.world import StepEvents, WorldState, sample_world, stack, step

HEALTH_PER_REWARD = 25.0  # reward = health change / 25: one edible fruit is about +1
RESET_OPTIONS = ("world_seed",)


class WorldBatch:
    """B worlds on one backend, each with its own ``np.random.Generator`` (``rngs[i]``)."""

    def __init__(self, config: WorldConfig, num_envs: int, backend: str = "numpy", device: str | None = None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs: expected an int >= 1, got {num_envs!r}")
        self.config = config
        self.num_envs = int(num_envs)
        self.backend = backend
        self.device = device
        self.vocabulary = Vocabulary.for_config(config)
        self.tables = PerceptTables.build(config, self.vocabulary, backend, device)
        self.rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self.state: WorldState | None = None

    def reset(self, rows: Sequence[int], world_seeds: Sequence[int | None] | None = None) -> None:
        """Fresh worlds in ``rows``: layout from ``world_seeds[k]`` (or the row's rng), start from the rng."""
        seeds = [None] * len(rows) if world_seeds is None else world_seeds
        fresh = stack([sample_world(self.config, self.vocabulary,
                                    self.rngs[i] if seed is None else np.random.default_rng(seed), self.rngs[i])
                       for i, seed in zip(rows, seeds)]).to(self.backend, self.device)
        if self.state is None or len(rows) == self.num_envs:
            self.state = fresh
        else:
            self.state.write_rows(from_numpy(np.asarray(rows), self.backend, self.device), fresh)

    def step(self, actions: Any) -> StepEvents:
        """Step every world with checked ``actions`` (B, 3) on this batch's backend."""
        if self.state is None:
            from gymnasium.error import ResetNeeded

            raise ResetNeeded("Cannot call step() before reset(): the worlds do not exist yet.")
        self.state, events = step(self.config, self.state, actions)
        return events

    def observe(self) -> dict[str, Any]:
        """Observations (B, ...) of the current state, with motion noise drawn from each row's rng."""
        motion = None
        if self.config.motion_noise > 0:
            noise = np.stack([rng.normal(0.0, self.config.motion_noise, size=2) for rng in self.rngs])
            motion = self.state.motion + from_numpy(noise.astype(np.float32), self.backend, self.device)
        return observe(self.config, self.tables, self.state, motion)

    def check_actions(self, actions: Any, shape: tuple[int, ...]) -> Any:
        """``actions`` as a float32 array of ``shape`` on this backend, or a clear error."""
        return check_action(actions, shape, self.backend, self.device)


def check_action(action: Any, shape: tuple[int, ...], backend: str = "numpy", device: str | None = None) -> Any:
    """Validate an action against Box(-1, 1, ``shape``) and return it as float32 on ``backend``."""
    if backend == "torch":
        import torch

        action = torch.as_tensor(action, device=device)
        kind = "b" if action.dtype == torch.bool else "c" if action.is_complex() else "f" if action.is_floating_point() else "i"
    else:
        action = np.asarray(action)
        kind = action.dtype.kind
    if kind not in "fiu":
        raise TypeError(f"action: expected a real-valued (float) array, got dtype {action.dtype}")
    if tuple(action.shape) != shape:
        raise ValueError(f"action: expected shape {shape}, got {tuple(action.shape)}")
    if not abs(action).max() <= 1:  # True for NaN too
        values = to_numpy(action)
        if not np.isfinite(values).all():
            raise ValueError(f"action: expected finite values in [-1, 1], got {values.tolist()} (NaN or infinite)")
        raise ValueError(f"action: expected values in [-1, 1] (the action space), got min {values.min():.3g}, "
                         f"max {values.max():.3g}")
    if backend == "torch":
        return action.to(torch.float32)
    return action.astype(np.float32, copy=False)


def check_reset_options(options: dict | None, num_envs: int = 1) -> list[int | None]:
    """Per-env world seeds from reset ``options`` ({"world_seed": int or a sequence of num_envs})."""
    if options is None:
        return [None] * num_envs
    if not isinstance(options, dict):
        raise TypeError(f"options: expected a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"options: unknown key(s) {unknown}; expected keys from {list(RESET_OPTIONS)}")
    seed = options.get("world_seed")
    seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else [seed] * num_envs
    if len(seeds) != num_envs:
        raise ValueError(f"options['world_seed']: expected one seed or {num_envs} seeds, got {len(seeds)}")
    for s in seeds:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
            raise ValueError(f"options['world_seed']: expected a non-negative int or None, got {s!r}")
    return seeds


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
