"""TreeWorldVectorEnv: N worlds stepped as one batch (compiled kernels on CPU, torch on CUDA)."""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from gymnasium.error import ResetNeeded

from treeworld import checks
from treeworld.backend import BACKENDS, copy_array, from_numpy, to_numpy
from treeworld.config import WorldConfig
from treeworld.envs.batch import (WorldBatch, action_space, check_action, check_device,
                                  check_discrete_action, check_reset_options, check_seeds, discrete_space, make_config,
                                  observation_space, privileged_info)


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
        render_mode: None or "rgb_array" (frames of env 0, e.g. for video recorders).
        discrete: actions are Discrete(10) per env as in :class:`~treeworld.envs.DiscreteActions`.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP, "render_fps": 30}

    def __init__(self, num_envs: int = 1, config: WorldConfig | None = None, device: str = "cpu",
                 backend: str | None = None, max_episode_steps: int | None = 2000, render_mode: str | None = None,
                 discrete: bool = False, preset: dict[str, Any] | None = None, **overrides: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: the vector env renders 'rgb_array' frames of env 0 or None, "
                             f"got {render_mode!r}")
        num_envs = checks.count(num_envs, "num_envs")
        device = check_device(device)
        if backend is None:
            backend = "numba" if device == "cpu" else "torch"
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if backend != "torch" and device != "cpu":
            raise ValueError(f"device: the {backend} backend runs on 'cpu' only, got {device!r}; use backend='torch'")
        if max_episode_steps is not None:
            max_episode_steps = checks.count(max_episode_steps, "max_episode_steps")
        self.config = make_config(config, overrides, preset)
        self.batch = WorldBatch(self.config, num_envs, backend, device if backend == "torch" else None)
        self.num_envs = self.batch.num_envs
        self.device = device
        self.discrete = checks.instance(discrete, bool, "discrete")
        self.max_episode_steps = max_episode_steps
        self._step_limit = max_episode_steps or np.iinfo(np.int64).max
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.config, self.batch.vocabulary.dim)
        self.single_action_space = discrete_space() if discrete else action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._renderer = None
        self._episode = -1  # episodes env 0 has started, minus one

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset every env: env i is seeded with ``seed + i`` (or ``seed[i]``); None keeps its generator.

        ``options={"world_seed": k}`` (one int, or one per env) fixes the layouts until the next reset
        with options; autoresets and resets without options keep them.
        """
        seeds = check_seeds(seed, self.num_envs)
        world_seeds = check_reset_options(options, self.num_envs)
        super().reset(seed=seeds[0])
        self.batch.seed(seeds)
        self.batch.reset(range(self.num_envs), world_seeds)
        self._autoreset[:] = False
        self._episode += 1
        return self._out(self.batch.observe()), self._info(None)

    def step(self, actions):
        check = check_discrete_action if self.discrete else check_action
        actions = check(actions, (self.num_envs,) if self.discrete else (self.num_envs, 3),
                        self.batch.backend, self.batch.device)
        restart = np.flatnonzero(self._autoreset).tolist()  # next-step autoreset: these restart, their action ignored
        transition = self.batch.step(actions, restart)
        self._episode += bool(self._autoreset[0])
        truncated = self.batch.state.steps >= self._step_limit
        if restart:
            truncated = truncated & from_numpy(~self._autoreset, self.batch.backend, self.batch.device)
        self._autoreset = to_numpy(transition.terminated | truncated).copy()
        obs = self._out(self.batch.observe())
        return (obs, self._out(transition.reward), self._out(transition.terminated), self._out(truncated),
                self._info(transition))

    def render(self):
        """An rgb frame of env 0 (render_mode 'rgb_array'), None without a render mode."""
        if self.render_mode is None:
            return None
        if self.batch.state is None:
            raise ResetNeeded("render() before reset(): there is no world to draw yet; call reset() first")
        if self._renderer is None:
            from treeworld.envs.rendering import Renderer

            self._renderer = Renderer(self.config, self.batch.vocabulary, render_fps=self.metadata["render_fps"])
        return self._renderer.render_frame(self.batch.state, 0, episode=self._episode)

    def _out(self, x: Any) -> Any:
        """What the user gets: numpy on the CPU (a dict of arrays too), backend arrays elsewhere."""
        if self.device != "cpu":
            return x
        if isinstance(x, dict):
            return {key: to_numpy(value) for key, value in x.items()}
        return to_numpy(x)

    def _info(self, transition) -> dict[str, Any]:
        info = {key: self._out(copy_array(value))
                for key, value in privileged_info(self.config, self.batch.state, transition).items()}
        present = np.ones(self.num_envs, dtype=bool)
        info.update({f"_{key}": present for key in list(info)})
        return info
