"""A native stable-baselines3 VecEnv over the batched world (SB3 cannot drive a Gymnasium VectorEnv).

SB3 expects same-step autoreset: when env i ends, the returned observation is already the first
of its next episode and ``infos[i]["terminal_observation"]`` holds the last one.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from treeworld import checks
from treeworld.config import WorldConfig
from treeworld.envs.batch import (WorldBatch, action_space, discrete_space, check_action, check_discrete_action,
                                  check_reset_options, make_config, observation_space)


class TreeWorldSB3VecEnv(VecEnv):
    """``num_envs`` tree worlds (compiled CPU kernels) as an SB3 ``VecEnv``; seed with ``seed()`` before ``reset()``.

    Infos of an ended episode carry Monitor-style ``"episode": {"r", "l", "t"}`` (return, length,
    seconds since the adapter was made), so SB3 logs ``ep_rew_mean`` without a ``VecMonitor``;
    wrapped in one, its own statistics replace these (nothing is counted twice).

    Args:
        num_envs: number of worlds.
        config: a :class:`~treeworld.WorldConfig`; keyword ``overrides`` replace its fields.
        max_episode_steps: truncate episodes after this many steps (``TimeLimit.truncated`` in infos).
        discrete: Discrete(10) actions as in :class:`~treeworld.envs.DiscreteActions` (for DQN).
        render_mode: None or "rgb_array": ``get_images()`` returns a frame of every env.
        world_seed_range: None, or ``(low, high)``: every episode's layout is then the world seed
            drawn uniformly from it by the env's generator (a training split of layouts), unless
            ``set_options`` fixes one.

    Homing episodes' infos add ``goals_reached``, ``goals_failed`` and ``spl``: Success weighted
    by Path Length over the goals that ended in the episode (NaN for none).
    """

    def __init__(self, num_envs: int = 8, config: WorldConfig | None = None, max_episode_steps: int = 2000,
                 discrete: bool = False, render_mode: str | None = None,
                 world_seed_range: tuple[int, int] | None = None, **overrides: Any):
        max_episode_steps = checks.count(max_episode_steps, "max_episode_steps")
        if world_seed_range is not None:
            seeds = world_seed_range
            if (not isinstance(seeds, (tuple, list)) or len(seeds) != 2
                    or not all(isinstance(s, int) and s >= 0 for s in seeds) or seeds[0] >= seeds[1]):
                raise ValueError(f"world_seed_range: expected None or (low, high), ints with 0 <= low < high, "
                                 f"got {seeds!r}")
            world_seed_range = (int(seeds[0]), int(seeds[1]))
        self.world_seed_range = world_seed_range
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.config = make_config(config, overrides)
        self.batch = WorldBatch(self.config, num_envs)
        self.max_episode_steps = max_episode_steps
        self.discrete = checks.instance(discrete, bool, "discrete")
        self.render_mode = render_mode
        self._renderer = None
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.batch.num_envs)
        self._spl = np.zeros((self.batch.num_envs, 2))  # per episode: sum of S * l / max(p, l), goals ended
        self._start = time.perf_counter()
        self._fixed = [False] * self.batch.num_envs  # layouts fixed by set_options
        super().__init__(self.batch.num_envs, observation_space(self.config, self.batch.vocabulary.dim),
                         discrete_space() if self.discrete else action_space())

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        """Seeds for the next ``reset()``: env i gets ``seed + i`` (None: keep each generator, where
        SB3's own ``seed(None)`` would draw one from numpy's global generator)."""
        if seed is None:
            self._seeds = [None] * self.num_envs
            return self._seeds
        return super().seed(checks.integer(seed, "seed", low=0))

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env with the seeds of ``seed()`` (None keeps a generator) and the options of
        ``set_options`` ({"world_seed": k} fixes the layout through autoresets); both are then consumed."""
        self.batch.seed(self._seeds)
        if any(self._options):
            # an env given {} (no options) keeps the layout set_options fixed before, as a call with
            # no options at all does; {"world_seed": None} clears it
            world_seeds = [self.batch.world_seeds[i] if not options and self._fixed[i]
                           else (check_reset_options(options) or [None])[0]
                           for i, options in enumerate(self._options)]
            self._fixed = [seed is not None for seed in world_seeds]
        else:
            world_seeds = None  # no options: layouts stay as they are
        self._restart(range(self.num_envs), world_seeds)
        self._reset_seeds()
        self._reset_options()
        return self.batch.observe()

    def step_async(self, actions: np.ndarray) -> None:
        if self.discrete:
            self._actions = check_discrete_action(actions, (self.num_envs,))
        else:
            self._actions = check_action(actions, (self.num_envs, 3))

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions) first")
        transition = self.batch.step(self._actions)
        self._actions = None
        state = self.batch.state
        rewards = transition.reward.astype(np.float32)
        self._returns += rewards
        goals = transition.goals
        if goals is not None:
            ended = goals.reached | goals.failed
            self._spl[:, 0] += np.where(ended, goals.reached * goals.shortest
                                        / np.maximum(np.maximum(goals.path, goals.shortest), 1e-12), 0.0)
            self._spl[:, 1] += ended
        truncated = (state.steps >= self.max_episode_steps) & ~transition.terminated
        dones = transition.terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(dones).tolist()
        if ended:  # same-step autoreset: report the last observation, then restart
            last = self.batch.observe(ended)
            elapsed = round(time.perf_counter() - self._start, 6)
            for k, i in enumerate(ended):
                infos[i] = {"terminal_observation": {key: value[k] for key, value in last.items()},
                            "TimeLimit.truncated": bool(truncated[i]),
                            "episode": {"r": float(self._returns[i]), "l": int(state.steps[i]), "t": elapsed},
                            "fruit_eaten": int(state.fruit_eaten[i]), "poison_eaten": int(state.poison_eaten[i])}
                if self.config.task == "homing":
                    total, count = self._spl[i]
                    infos[i].update(goals_reached=int(state.goals_reached[i]), goals_failed=int(state.goals_failed[i]),
                                    spl=float(total / count) if count else float("nan"))
            self._restart(ended)
        return self.batch.observe(), rewards, dones, infos

    def _restart(self, rows, world_seeds=None) -> None:
        """New episodes in ``rows``: layouts from ``world_seeds`` (one per row; None keeps the
        stored one), except that with a ``world_seed_range`` every row whose layout ``set_options``
        did not fix draws its seed from that range."""
        rows = list(rows)
        if self.world_seed_range is not None:
            given = [None] * len(rows) if world_seeds is None else list(world_seeds)
            world_seeds = [self._layout_seed(i, seed) for i, seed in zip(rows, given)]
        self.batch.reset(rows, world_seeds)
        self._returns[rows] = 0.0
        self._spl[rows] = 0.0

    def _layout_seed(self, row: int, seed: int | None) -> int:
        """Row's next world seed under a ``world_seed_range``: ``seed`` when given, else the one
        ``set_options`` fixed, else a draw from the range by the row's generator."""
        if seed is not None:
            return seed
        if self._fixed[row]:
            return self.batch.world_seeds[row]
        return int(self.batch.rngs[row].integers(*self.world_seed_range))

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
        """An rgb frame of every env with render_mode 'rgb_array' (what SB3's ``render()`` tiles and
        ``VecVideoRecorder`` records); all None without a render mode or before ``reset()``."""
        if self.render_mode != "rgb_array" or self.batch.state is None:
            return [None] * self.num_envs
        if self._renderer is None:
            from treeworld.envs.rendering import Renderer

            self._renderer = Renderer(self.config, self.batch.vocabulary)
        return [self._renderer.render_frame(self.batch.state, i) for i in range(self.num_envs)]
