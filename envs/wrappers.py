"""Wrappers over TreeWorldEnv."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from treeworld.envs.batch import DISCRETE_ACTIONS, check_discrete_action, discrete_space


class DiscreteActions(gym.ActionWrapper):
    """Discrete(10): 0-7 move a full step east, north-east, north, ..., south-east; 8 stay; 9 eat.

    The same table (``treeworld.envs.batch.DISCRETE_ACTIONS``) serves the batched envs' ``discrete=True``."""

    NUM_DIRECTIONS = 8

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = discrete_space()

    def action(self, action: Any) -> np.ndarray:
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer, np.ndarray)):
            raise TypeError(f"action: expected an int in [0, {len(DISCRETE_ACTIONS)}), got {action!r}")
        return check_discrete_action(np.asarray(action), ())


def make_discrete(**kwargs: Any) -> gym.Env:
    """Entry point of the discrete ids: TreeWorldEnv(**kwargs) with discrete actions."""
    from treeworld.envs.tree_world import TreeWorldEnv

    return DiscreteActions(TreeWorldEnv(**kwargs))


def make_discrete_vector(**kwargs: Any) -> gym.vector.VectorEnv:
    """Vector entry point of the discrete ids: TreeWorldVectorEnv(discrete=True, **kwargs)."""
    from treeworld.envs.vector import TreeWorldVectorEnv

    return TreeWorldVectorEnv(discrete=True, **kwargs)
