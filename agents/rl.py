"""Reinforcement learning on the tree world with stable-baselines3: environments, models, callbacks.

- :func:`make_env`: ``num_envs`` worlds of a task as an SB3 VecEnv (the batched adapter), layouts
  drawn from the training split of world seeds or fixed to validation ones, optionally with the
  TEM memory's features (:class:`~treeworld.agents.sb3_features.TEMFeatures`), under a ``VecMonitor``.
- :func:`make_model`: PPO, SAC or sb3-contrib's RecurrentPPO with the tree world's features
  extractor and the hyperparameters of :data:`HYPERPARAMETERS`.
- :func:`rollout`: deterministic episodes of a model, with the world's figures per episode.
- :class:`EpisodeStats` and :class:`HeldOutEvaluation`: callbacks that log the world's figures
  (fruit, poison, survival, SPL) of training episodes and of held-out evaluations to SB3's logger.

World seeds: training draws layouts from ``[0, VALIDATION_SEED)``, evaluation during training uses
``[VALIDATION_SEED, EVAL_SEED)``; ``scripts/evaluate.py`` alone uses ``EVAL_SEED`` and up.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from treeworld import checks
from treeworld.agents.evaluation import EVAL_SEED, VALIDATION_SEED
from treeworld.config import WorldConfig

ALGORITHMS = ("ppo", "sac", "recurrent_ppo")
#: Per algorithm, the keyword arguments of its constructor (PPO's tuned on the raw forage task:
#: 16 envs, 1,000-step episodes; RecurrentPPO shares them but for 4 epochs instead of 10, which cut
#: its CPU time per step by 2.8x (its padded-sequence minibatches dominate), with an LSTM of 128 units).
_PPO = dict(n_steps=512, batch_size=2048, n_epochs=10, gamma=0.995, gae_lambda=0.95, ent_coef=0.01,
            learning_rate=3e-4, clip_range=0.2)
HYPERPARAMETERS = {
    "ppo": _PPO,
    "recurrent_ppo": {**_PPO, "n_epochs": 4},
    "sac": dict(buffer_size=50_000, learning_starts=1_000, batch_size=256, gamma=0.995, train_freq=16,
                gradient_steps=4, learning_rate=3e-4),
}
EPISODE_FIGURES = ("return", "length", "fruit", "poison", "survived", "success", "spl")


def make_env(config: WorldConfig, num_envs: int, seed: int, validation: bool = False, reader: Any = None,
             max_episode_steps: int = 1000) -> VecEnv:
    """``num_envs`` worlds of ``config`` for SB3, seeded ``seed`` (env i: ``seed + i``).

    Training (``validation`` False): every episode's layout is a world seed drawn from
    ``[0, VALIDATION_SEED)``. Validation: env i keeps the layout of world seed ``VALIDATION_SEED +
    seed + i``, all below ``EVAL_SEED``. ``reader``: a ``MemoryReader`` of ``num_envs`` rows, whose
    features then join the observations. Wrapped last in a ``VecMonitor``."""
    from treeworld.agents.sb3_features import TEMFeatures
    from treeworld.envs.sb3 import TreeWorldSB3VecEnv

    checks.instance(config, WorldConfig, "config")
    seed = checks.integer(seed, "seed", low=0)
    venv = TreeWorldSB3VecEnv(num_envs, config, max_episode_steps=max_episode_steps,
                              world_seed_range=None if validation else (0, VALIDATION_SEED))
    if validation:
        first = VALIDATION_SEED + seed
        if first + num_envs > EVAL_SEED:
            raise ValueError(f"seed: validation layouts {first} .. {first + num_envs - 1} reach the evaluation "
                             f"seeds (>= {EVAL_SEED}); expected seed + num_envs <= {EVAL_SEED - VALIDATION_SEED}")
        venv.set_options([{"world_seed": first + i} for i in range(num_envs)])
    venv.seed(seed)
    if reader is not None:
        venv = TEMFeatures(venv, reader)
    return VecMonitor(venv)


def make_model(algo: str, env: VecEnv, seed: int, tensorboard_log: str | None = None, verbose: int = 0,
               **overrides: Any):
    """An untrained ``algo`` model (``ALGORITHMS``) on ``env``: the Dict-input policy with
    :class:`~treeworld.agents.sb3_features.TreeWorldExtractor`, ``HYPERPARAMETERS[algo]`` with
    keyword ``overrides``, on the CPU."""
    from treeworld.agents.sb3_features import TreeWorldExtractor

    if algo not in ALGORITHMS:
        raise ValueError(f"algo: expected one of {', '.join(ALGORITHMS)}, got {algo!r}")
    kwargs = {**HYPERPARAMETERS[algo], **overrides}
    policy_kwargs = dict(features_extractor_class=TreeWorldExtractor)
    if algo == "ppo":
        from stable_baselines3 import PPO as Algorithm
        policy = "MultiInputPolicy"
    elif algo == "sac":
        from stable_baselines3 import SAC as Algorithm
        policy = "MultiInputPolicy"
    else:
        from sb3_contrib import RecurrentPPO as Algorithm
        policy = "MultiInputLstmPolicy"
        policy_kwargs["lstm_hidden_size"] = 128
    if "batch_size" in kwargs and algo != "sac":
        kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * env.num_envs)
    return Algorithm(policy, env, seed=seed, device="cpu", policy_kwargs=policy_kwargs,
                     tensorboard_log=tensorboard_log, verbose=verbose, **kwargs)


def episode_figures(info: dict) -> dict[str, float]:
    """The world's figures of an ended episode from its (VecMonitor'd) info: return, length,
    fruit, poison, survived (1: reached the time limit alive) and, in homing, the success rate
    of the goals that ended and their SPL (NaN without goals or outside homing)."""
    episode = info["episode"]
    goals = info.get("goals_reached", 0) + info.get("goals_failed", 0)
    return {"return": float(episode["r"]), "length": float(episode["l"]), "fruit": float(info["fruit_eaten"]),
            "poison": float(info["poison_eaten"]), "survived": float(bool(info.get("TimeLimit.truncated"))),
            "success": info["goals_reached"] / goals if goals else math.nan, "spl": float(info.get("spl", math.nan))}


def rollout(model: Any, env: VecEnv, episodes_per_env: int = 1) -> dict[str, list[float]]:
    """Run ``model`` deterministically on ``env`` (reset first) until every env ended
    ``episodes_per_env`` episodes; the figures of those episodes (lists over episodes, env order
    within each round). Recurrent policies carry their state and restart it at episode ends."""
    episodes_per_env = checks.count(episodes_per_env, "episodes_per_env")
    observations = env.reset()
    n = env.num_envs
    state, starts = None, np.ones(n, dtype=bool)
    done = np.zeros(n, dtype=np.int64)
    figures: dict[str, list[float]] = {key: [] for key in EPISODE_FIGURES}
    while (done < episodes_per_env).any():
        actions, state = model.predict(observations, state=state, episode_start=starts, deterministic=True)
        observations, _, starts, infos = env.step(actions)
        for i in np.flatnonzero(starts):
            if done[i] < episodes_per_env:
                for key, value in episode_figures(infos[i]).items():
                    figures[key].append(value)
            done[i] += 1
    return figures


def summary(figures: dict[str, list[float]]) -> dict[str, float]:
    """Means over episodes (NaN-aware: SPL exists in homing only)."""
    return {key: float(np.nanmean(values)) if len(values) and not np.isnan(values).all() else math.nan
            for key, values in figures.items()}


class EpisodeStats(BaseCallback):
    """Logs the world's figures of ended training episodes (``rollout/fruit`` ...) as means per log
    interval, and keeps every episode's in ``history`` as (timesteps, figures)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[int, dict[str, float]]] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                figures = episode_figures(info)
                self.history.append((self.num_timesteps, figures))
                for key in ("fruit", "poison", "survived", "success", "spl"):
                    if not math.isnan(figures[key]):
                        self.logger.record_mean(f"rollout/{key}", figures[key])
        return True


class HeldOutEvaluation(BaseCallback):
    """Every ``every`` environment steps (and at the end of training), :func:`rollout` on the
    validation ``env``; logs ``eval/<figure>`` means and calls ``sink(timesteps, summary)``.
    ``prepare()`` runs first (e.g. the validation reader takes the training reader's knowledge),
    and the env is seeded ``seed`` before each, so every check sees the same starts."""

    def __init__(self, env: VecEnv, every: int, sink: Callable[[int, dict], None] | None = None,
                 episodes_per_env: int = 1, prepare: Callable[[], None] | None = None, seed: int = 0) -> None:
        super().__init__()
        self.env = env
        self.seed = checks.integer(seed, "seed", low=0)
        self.prepare = prepare
        self.every = checks.count(every, "every")
        self.sink = sink
        self.episodes_per_env = checks.count(episodes_per_env, "episodes_per_env")
        self._next = self.every
        self._last = -1  # timesteps of the last evaluation

    def _init_callback(self) -> None:
        self._next = (self.model.num_timesteps // self.every + 1) * self.every

    def evaluate(self) -> dict[str, float]:
        if self.prepare is not None:
            self.prepare()
        self.env.seed(self.seed)  # every check: the same starts and noise on the same layouts
        result = summary(rollout(self.model, self.env, self.episodes_per_env))
        for key, value in result.items():
            if not math.isnan(value):
                self.logger.record(f"eval/{key}", value)
        if self.sink is not None:
            self.sink(self.num_timesteps, result)
        self._last = self.num_timesteps
        return result

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps != self._last:  # the final policy, unless just evaluated
            self.evaluate()
