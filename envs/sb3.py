"""A native stable-baselines3 VecEnv over the batched world (SB3 cannot drive a Gymnasium VectorEnv).

SB3 expects same-step autoreset: when env i ends, the returned observation is already the first
of its next episode and ``infos[i]["terminal_observation"]`` holds the last one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from treeworld.config import WorldConfig
from treeworld.envs.batch import ACTION_SPACE, HEALTH_PER_REWARD, WorldBatch, check_reset_options, observation_space


class TreeWorldSB3VecEnv(VecEnv):
    """``num_envs`` tree worlds (numpy backend) as an SB3 ``VecEnv``; seed with ``seed()`` before ``reset()``.

    Args:
        num_envs: number of worlds.
        config: a :class:`~treeworld.WorldConfig`; keyword ``overrides`` replace its fields.
        max_episode_steps: truncate episodes after this many steps (``TimeLimit.truncated`` in infos).
    """

    def __init__(self, num_envs: int = 8, config: WorldConfig | None = None, max_episode_steps: int = 2000,
                 **overrides: Any):
        if not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps: expected an int >= 1, got {max_episode_steps!r}")
        self.config = (config or WorldConfig()).replace(**overrides)
        self.batch = WorldBatch(self.config, num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = None
        self._actions: np.ndarray | None = None
        super().__init__(self.batch.num_envs, observation_space(self.config, self.batch.vocabulary.dim), ACTION_SPACE)

    def reset(self) -> dict[str, np.ndarray]:
        self.batch.rngs = [np.random.default_rng(seed) for seed in self._seeds]
        world_seeds = [check_reset_options(options or None)[0] for options in self._options]
        self.batch.reset(range(self.num_envs), world_seeds)
        self._reset_seeds()
        return self.batch.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = self.batch.check_actions(actions, (self.num_envs, 3))

    def step_wait(self):
        events = self.batch.step(self._actions)
        state = self.batch.state
        rewards = (events.health_change / HEALTH_PER_REWARD).astype(np.float32)
        terminated = state.health <= 0
        truncated = (state.steps >= self.max_episode_steps) & ~terminated
        dones = terminated | truncated
        obs = self.batch.observe()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(dones)
        if ended.size:
            for i in ended:
                infos[i] = {"terminal_observation": {key: value[i].copy() for key, value in obs.items()},
                            "TimeLimit.truncated": bool(truncated[i]),
                            "fruit_eaten": int(state.fruit_eaten[i]), "poison_eaten": int(state.poison_eaten[i])}
            self.batch.reset(ended.tolist())
            obs = self.batch.observe()
        return obs, rewards, dones, infos

    def close(self) -> None:
        self._actions = None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
