"""A native stable-baselines3 VecEnv over the batched world (SB3 cannot drive a Gymnasium VectorEnv).

SB3 expects same-step autoreset: when env i ends, the returned observation is already the first
of its next episode and ``infos[i]["terminal_observation"]`` holds the last one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from treeworld.config import WorldConfig
from treeworld.envs.batch import (ACTION_SPACE, HEALTH_PER_REWARD, WorldBatch, check_action, check_count,
                                  check_reset_options, make_config, observation_space)


class TreeWorldSB3VecEnv(VecEnv):
    """``num_envs`` tree worlds (compiled CPU kernels) as an SB3 ``VecEnv``; seed with ``seed()`` before ``reset()``.

    Args:
        num_envs: number of worlds.
        config: a :class:`~treeworld.WorldConfig`; keyword ``overrides`` replace its fields.
        max_episode_steps: truncate episodes after this many steps (``TimeLimit.truncated`` in infos).
    """

    def __init__(self, num_envs: int = 8, config: WorldConfig | None = None, max_episode_steps: int = 2000,
                 **overrides: Any):
        max_episode_steps = check_count(max_episode_steps, "max_episode_steps")
        self.config = make_config(config, overrides)
        self.batch = WorldBatch(self.config, num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = None
        self._actions: np.ndarray | None = None
        super().__init__(self.batch.num_envs, observation_space(self.config, self.batch.vocabulary.dim), ACTION_SPACE)

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env with the seeds of ``seed()`` (None keeps a generator) and the options of
        ``set_options`` ({"world_seed": k} fixes the layout through autoresets); both are then consumed."""
        self.batch.seed(self._seeds)
        world_seeds = [(check_reset_options(options or None) or [None])[0] for options in self._options]
        self.batch.reset(range(self.num_envs), world_seeds)
        self._reset_seeds()
        self._reset_options()
        return self.batch.observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = check_action(actions, (self.num_envs, 3))

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions) first")
        events = self.batch.step(self._actions)
        self._actions = None
        state = self.batch.state
        rewards = (events.health_change / HEALTH_PER_REWARD).astype(np.float32)
        terminated = state.health <= 0
        truncated = (state.steps >= self.max_episode_steps) & ~terminated
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(dones).tolist()
        if ended:  # same-step autoreset: report the last observation, then restart
            last = self.batch.observe(ended)
            for k, i in enumerate(ended):
                infos[i] = {"terminal_observation": {key: value[k] for key, value in last.items()},
                            "TimeLimit.truncated": bool(truncated[i]),
                            "fruit_eaten": int(state.fruit_eaten[i]), "poison_eaten": int(state.poison_eaten[i])}
            self.batch.reset(ended)
        return self.batch.observe(), rewards, dones, infos

    def close(self) -> None:
        self._actions = None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Attributes are shared by all envs of the batch, so ``indices`` cannot select some."""
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise NotImplementedError(f"env_method({method_name!r}): the batched adapter has no per-env objects; "
                                  "call methods on the adapter itself")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
