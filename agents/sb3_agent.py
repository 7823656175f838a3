"""Saved stable-baselines3 policies as batched agents (the registry's ``sb3:PATH``).

:func:`load_policy` reads an SB3 zip (PPO, SAC or sb3-contrib's RecurrentPPO, told apart by the
policy class stored in it), checks it was trained on the world's observation and action spaces,
and wraps it in :class:`SB3Policy`: deterministic actions for a batch of observations, and for a
recurrent policy an LSTM state per row that ``reset(rows)`` starts afresh.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from treeworld import checks


class SB3Policy:
    """A ``BatchAgent`` over a loaded SB3 model (``num_agents`` rows, deterministic actions)."""

    def __init__(self, model: Any, num_agents: int) -> None:
        self.model = model
        self.num_agents = checks.count(num_agents, "num_agents")
        self.state: Any = None  # a recurrent policy's (h, c), batched over rows
        self.starts = np.ones(self.num_agents, dtype=bool)

    def reset(self, rows: Sequence[int] | None = None, seed: int | None = None) -> None:
        """Start episodes in ``rows`` (all when None); the policy is deterministic, ``seed`` unused."""
        self.starts[slice(None) if rows is None else list(rows)] = True

    def act(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, ...) actions for a dict of (B, ...) observations."""
        actions, self.state = self.model.predict(dict(observations), state=self.state,
                                                 episode_start=self.starts.copy(), deterministic=True)
        self.starts[:] = False
        return np.asarray(actions)


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
    path = pathlib.Path(path)
    model = _algorithm(path).load(path, device="cpu")
    for name, mine, theirs in (("observation", observation_space, model.observation_space),
                               ("action", action_space, model.action_space)):
        if mine != theirs:
            raise ValueError(f"agent: {str(path)!r} was trained on the {name} space {theirs}, the world's is {mine}")
    return SB3Policy(model, num_agents)
