"""stable-baselines3 parts for the tree world: the TEM memory in the loop and a features extractor.

:class:`TEMFeatures` is a ``VecEnvWrapper``: a :class:`~treeworld.agents.memory_features.MemoryReader`
takes in every env's observation on every step (the actions come from the policy) and its
readouts join the observation as ``"memory"``. The state lives in the wrapper, not in the
extractor, which SB3 calls on shuffled minibatches of stored observations.

:class:`TreeWorldExtractor` is a ``BaseFeaturesExtractor`` for the Dict observation: each percept
(smell, sight, goal) through its own learned linear projection, the memory features through a
small network of their own, the body senses (sight distance, motion, heading, health, position)
as they are; all concatenated.
"""
from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import nn

from treeworld import checks
from treeworld.agents.memory_features import MemoryReader

MEMORY_KEY = "memory"
PERCEPT_KEYS = ("smell", "sight", "goal")


def with_memory(observation_space: spaces.Dict, size: int) -> spaces.Dict:
    """The Dict ``observation_space`` plus the ``"memory"`` Box of ``size`` features."""
    return spaces.Dict({**observation_space.spaces, MEMORY_KEY: spaces.Box(-np.inf, np.inf, (size,), np.float32)})


class TEMFeatures(VecEnvWrapper):
    """``venv`` (a VecEnv of the tree world with same-step autoreset) with the TEM memory's
    features added to every observation as ``"memory"`` (see :mod:`treeworld.agents.memory_features`).

    Rows of the reader's memory start afresh exactly where the env's episodes do; the terminal
    observation of an ended episode gets the features the reader would have given for it
    (computed on a copy, so nothing of it leaks into the next episode), and the shared valence
    readout learns from the episode's last bite before the row is reset.
    """

    def __init__(self, venv: VecEnv, reader: MemoryReader) -> None:
        checks.instance(reader, MemoryReader, "reader")
        if reader.num_envs != venv.num_envs:
            raise ValueError(f"reader: expected {venv.num_envs} rows (venv.num_envs), got {reader.num_envs}")
        if not isinstance(venv.observation_space, spaces.Dict) or MEMORY_KEY in venv.observation_space.spaces:
            raise ValueError(f"venv: expected a Dict observation space without {MEMORY_KEY!r}, "
                             f"got {venv.observation_space}")
        if reader.goal != ("goal" in venv.observation_space.spaces):
            raise ValueError(f"reader: goal features {reader.goal} but the env's observations "
                             f"{'have' if not reader.goal else 'lack'} a goal")
        self.reader = reader
        super().__init__(venv, observation_space=with_memory(venv.observation_space, reader.size))

    def reset(self) -> dict[str, np.ndarray]:
        observations = self.venv.reset()
        self.reader.reset()
        return {**observations, MEMORY_KEY: self.reader.observe(observations)}

    def step_async(self, actions: np.ndarray) -> None:
        self.reader.acted(np.asarray(actions, dtype=np.float32).reshape(self.num_envs, 3))
        self.venv.step_async(actions)

    def step_wait(self):
        observations, rewards, dones, infos = self.venv.step_wait()
        ended = np.flatnonzero(dones).tolist()
        if ended:
            last = {key: value.copy() for key, value in observations.items()}
            for i in ended:
                for key, value in infos[i]["terminal_observation"].items():
                    last[key][i] = value
            terminal = self.reader.peek(last)
            for i in ended:
                infos[i]["terminal_observation"] = {**infos[i]["terminal_observation"], MEMORY_KEY: terminal[i]}
            self.reader.end_episodes(last, ended)
        return {**observations, MEMORY_KEY: self.reader.observe(observations)}, rewards, dones, infos


class TreeWorldExtractor(BaseFeaturesExtractor):
    """Features of the tree world's Dict observation (B, features_dim).

    Args:
        observation_space: the Dict space (with or without ``"memory"``).
        percept_features: output size of each percept's linear projection.
        memory_features: output size of the memory network (Linear-ReLU-Linear-ReLU).
    """

    def __init__(self, observation_space: spaces.Dict, percept_features: int = 32, memory_features: int = 64) -> None:
        checks.instance(observation_space, spaces.Dict, "observation_space")
        percept_features = checks.count(percept_features, "percept_features")
        memory_features = checks.count(memory_features, "memory_features")
        keys = sorted(observation_space.spaces)
        self.percepts = [k for k in keys if k in PERCEPT_KEYS]
        self.body = [k for k in keys if k not in PERCEPT_KEYS and k != MEMORY_KEY]
        memory = MEMORY_KEY in observation_space.spaces
        size = lambda key: int(np.prod(observation_space[key].shape))  # noqa: E731
        body = sum(size(k) for k in self.body)
        total = percept_features * len(self.percepts) + body + (memory_features if memory else 0)
        super().__init__(observation_space, features_dim=total)
        self.projections = nn.ModuleDict({k: nn.Linear(size(k), percept_features) for k in self.percepts})
        self.memory = (nn.Sequential(nn.Linear(size(MEMORY_KEY), memory_features), nn.ReLU(),
                                     nn.Linear(memory_features, memory_features), nn.ReLU()) if memory else None)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.projections[k](observations[k]) for k in self.percepts]
        parts += [observations[k].flatten(1) for k in self.body]
        if self.memory is not None:
            parts.append(self.memory(observations[MEMORY_KEY]))
        return torch.cat(parts, dim=1)
