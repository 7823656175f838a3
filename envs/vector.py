"""TreeWorldVectorEnv: N worlds stepped as one batch (compiled kernels on CPU, torch on CUDA)."""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from treeworld.backend import BACKENDS, copy_array, from_numpy, to_numpy
from treeworld.config import WorldConfig
from treeworld.world import StepEvents
from treeworld.envs.batch import (ACTION_SPACE, HEALTH_PER_REWARD, WorldBatch, check_action, check_count,
                                  check_reset_options, check_seeds, make_config, observation_space,
                                  privileged_info)



class TreeWorldVectorEnv(VectorEnv):
    """``num_envs`` tree worlds in one batched physics, with Gymnasium's next-step autoreset.

    Env ``i`` with ``reset(seed=s)`` reproduces ``TreeWorldEnv`` reset with seed ``s + i`` step
    for step. Observations, rewards, flags and infos are numpy arrays on device "cpu" (whichever
    backend computes them: torch's CPU tensors convert without a copy) and torch tensors on other
    devices. Made by ``gym.make_vec("treeworld/TreeWorld-v0", num_envs=N,
    vectorization_mode="vector_entry_point", device="cpu" or "cuda")``.

    Args:
        num_envs: number of worlds N.
        config: a :class:`~treeworld.WorldConfig`; keyword ``overrides`` replace its fields.
        device: "cpu" or a torch device such as "cuda".
        backend: "numba" (compiled kernels, the default on "cpu"), "numpy" (the array-API reference)
            or "torch" (the default elsewhere).
        max_episode_steps: truncate episodes after this many steps (None: never).
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: WorldConfig | None = None, device: str = "cpu",
                 backend: str | None = None, max_episode_steps: int | None = 2000, render_mode: str | None = None,
                 **overrides: Any):
        if render_mode is not None:
            raise ValueError(f"render_mode: the vector env does not render, got {render_mode!r}; "
                             "render a single TreeWorldEnv instead")
        num_envs = check_count(num_envs, "num_envs")
        if backend is None:
            backend = "numba" if str(device) == "cpu" else "torch"
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if backend != "torch" and str(device) != "cpu":
            raise ValueError(f"device: the {backend} backend runs on 'cpu' only, got {device!r}; use backend='torch'")
        if max_episode_steps is not None:
            max_episode_steps = check_count(max_episode_steps, "max_episode_steps")
        self.config = make_config(config, overrides)
        self.batch = WorldBatch(self.config, num_envs, backend, device if backend == "torch" else None)
        self.num_envs = self.batch.num_envs
        self.device = str(device)
        self.max_episode_steps = max_episode_steps
        self._step_limit = max_episode_steps or np.iinfo(np.int64).max
        self.render_mode = None
        self.single_observation_space = observation_space(self.config, self.batch.vocabulary.dim)
        self.single_action_space = ACTION_SPACE
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset every env: env i is seeded with ``seed + i`` (or ``seed[i]``); None keeps its generator.

        ``options={"world_seed": k}`` (one int, or one per env) fixes the layouts until the next reset
        with options; autoresets keep them.
        """
        seeds = check_seeds(seed, self.num_envs)
        world_seeds = check_reset_options(options, self.num_envs) or [None] * self.num_envs
        super().reset(seed=seeds[0])
        self.batch.seed(seeds)
        self.batch.reset(range(self.num_envs), world_seeds)
        self._autoreset[:] = False
        return self._out(self.batch.observe()), self._info(None)

    def step(self, actions):
        actions = check_action(actions, (self.num_envs, 3), self.batch.backend, self.batch.device)
        events = self.batch.step(actions)
        state = self.batch.state
        rows = np.flatnonzero(self._autoreset)
        if rows.size:  # next-step autoreset: envs that ended last step restart now, ignoring their action
            self.batch.reset(rows.tolist())
        reward = events.health_change / HEALTH_PER_REWARD
        terminated = state.health <= 0
        truncated = state.steps >= self._step_limit
        if rows.size:
            kept = ~from_numpy(self._autoreset, self.batch.backend, self.batch.device)
            reward, terminated, truncated = reward * kept, terminated & kept, truncated & kept
            events = StepEvents(ate=events.ate & kept, poisoned=events.poisoned & kept,
                                health_change=events.health_change * kept)
        self._autoreset = to_numpy(terminated | truncated).copy()
        obs = self._out(self.batch.observe())
        return obs, self._out(reward), self._out(terminated), self._out(truncated), self._info(events)

    def _out(self, x: Any) -> Any:
        """What the user gets: numpy on the CPU (a dict of arrays too), backend arrays elsewhere."""
        if self.device != "cpu":
            return x
        if isinstance(x, dict):
            return {key: to_numpy(value) for key, value in x.items()}
        return to_numpy(x)

    def _info(self, events) -> dict[str, Any]:
        info = {key: self._out(copy_array(value)) for key, value in privileged_info(self.batch.state, events).items()}
        present = np.ones(self.num_envs, dtype=bool)
        info.update({f"_{key}": present for key in list(info)})
        return info
