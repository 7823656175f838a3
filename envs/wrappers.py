"""Wrappers over TreeWorldEnv."""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np


class DiscreteActions(gym.ActionWrapper):
    """Discrete(10): 0-7 move a full step east, north-east, north, ..., south-east; 8 stay; 9 eat."""

    NUM_DIRECTIONS = 8

    def __init__(self, env: gym.Env):
        super().__init__(env)
        angles = np.arange(self.NUM_DIRECTIONS) * (2 * math.pi / self.NUM_DIRECTIONS)
        moves = np.stack([np.cos(angles), np.sin(angles), -np.ones_like(angles)], axis=1)
        stay, eat = [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]
        self._table = np.vstack([moves, stay, eat]).astype(np.float32)  # (10, 3)
        self.action_space = gym.spaces.Discrete(len(self._table))

    def action(self, action: Any) -> np.ndarray:
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)) and not (
                isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu"):
            raise TypeError(f"action: expected an int in [0, {len(self._table)}), got {action!r}")
        if not 0 <= int(action) < len(self._table):
            raise ValueError(f"action: expected an int in [0, {len(self._table)}), got {int(action)}")
        return self._table[int(action)]


def make_discrete(**kwargs: Any) -> gym.Env:
    """Entry point of treeworld/TreeWorldDiscrete-v0: TreeWorldEnv(**kwargs) with discrete actions."""
    from treeworld.envs.tree_world import TreeWorldEnv

    return DiscreteActions(TreeWorldEnv(**kwargs))
