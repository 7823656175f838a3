"""Saved stable-baselines3 policies as batched agents (the registry's ``sb3:PATH``).

:func:`load_policy` reads an SB3 zip (PPO, SAC or sb3-contrib's RecurrentPPO, told apart by the
policy class stored in it), checks it was trained on the world's observation and action spaces,
and wraps it in :class:`SB3Policy`: deterministic actions for a batch of observations, and for a
recurrent policy an LSTM state per row that ``reset(rows)`` starts afresh.

A policy trained with the TEM memory's features (its observation space has ``"memory"``) is
saved with its :class:`~treeworld.agents.memory_features.MemoryReader` beside it
(:func:`reader_path`: ``policy.zip`` -> ``policy.memory.pt``); the loaded policy runs that reader
on the observations, as ``TEMFeatures`` did in training.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from treeworld import checks


class SB3Policy:
    """A ``BatchAgent`` over a loaded SB3 model (``num_agents`` rows, deterministic actions)."""

    def __init__(self, model: Any, num_agents: int, reader: Any = None) -> None:
        self.model = model
        self.num_agents = checks.count(num_agents, "num_agents")
        self.reader = reader  # a MemoryReader of num_agents rows, or None
        self.state: Any = None  # a recurrent policy's (h, c), batched over rows
        self.starts = np.ones(self.num_agents, dtype=bool)

    def reset(self, rows: Sequence[int] | None = None, seed: int | None = None) -> None:
        """Start episodes in ``rows`` (all when None); the policy is deterministic, ``seed`` unused."""
        self.starts[slice(None) if rows is None else list(rows)] = True
        if self.reader is not None:
            self.reader.reset(rows)

    def act(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, ...) actions for a dict of (B, ...) observations."""
        observations = dict(observations)
        if self.reader is not None:
            from treeworld.agents.sb3_features import MEMORY_KEY

            observations[MEMORY_KEY] = self.reader.observe(observations)
        actions, self.state = self.model.predict(observations, state=self.state,
                                                 episode_start=self.starts.copy(), deterministic=True)
        self.starts[:] = False
        if self.reader is not None:
            self.reader.acted(np.asarray(actions, dtype=np.float32))
        return np.asarray(actions)


def reader_path(policy_path: Any) -> pathlib.Path:
    """Where the memory reader of the policy saved at ``policy_path`` (``.zip`` or not) lives."""
    path = pathlib.Path(policy_path)
    return path.with_name(path.name.removesuffix(".zip") + ".memory.pt")


def _algorithm(path: pathlib.Path):
    """The SB3 algorithm class that saved ``path``, from the policy class stored in it."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001  (not a zip, or not SB3's)
        raise ValueError(f"agent: {str(path)!r} is not a stable-baselines3 file ({type(error).__name__}: {error})") \
            from None
    policy = (data or {}).get("policy_class")
    module = getattr(policy, "__module__", "")
    if module.startswith("sb3_contrib.common.recurrent"):
        from sb3_contrib import RecurrentPPO
        return RecurrentPPO
    if module.startswith("stable_baselines3.sac"):
        return SAC
    if module.startswith("stable_baselines3.common.policies"):
        return PPO
    raise ValueError(f"agent: {str(path)!r} holds a policy of {module or 'no known'} class; expected PPO, SAC or "
                     f"RecurrentPPO")


def load_policy(path: Any, observation_space: Any, action_space: Any, num_agents: int) -> SB3Policy:
    """The SB3 model at ``path`` as a batched agent; ValueError naming ``agent`` for a file that is
    not an SB3 model or was trained on other observation or action spaces."""
    from treeworld.agents.memory_features import MemoryReader
    from treeworld.agents.sb3_features import MEMORY_KEY, with_memory

    path = pathlib.Path(path)
    model = _algorithm(path).load(path, device="cpu")
    reader = None
    if MEMORY_KEY in getattr(model.observation_space, "spaces", {}):
        try:
            reader = MemoryReader.load(reader_path(path), num_agents)
        except ValueError as error:
            raise ValueError(f"agent: {str(path)!r} was trained with TEM memory features; its reader: {error}") from None
        observation_space = with_memory(observation_space, reader.size)
    for name, mine, theirs in (("observation", observation_space, model.observation_space),
                               ("action", action_space, model.action_space)):
        if mine != theirs:
            raise ValueError(f"agent: {str(path)!r} was trained on the {name} space {theirs}, the world's is {mine}")
    return SB3Policy(model, num_agents, reader)
