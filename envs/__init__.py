"""Gymnasium face of the tree world; importing this module registers the environment ids.

``gym.make("treeworld/TreeWorld-v0")`` (continuous actions, TimeLimit 2000),
``gym.make("treeworld/TreeWorldDiscrete-v0")`` (8 directions + stay + eat), and
``gym.make_vec("treeworld/TreeWorld-v0", num_envs=N, vectorization_mode="vector_entry_point")``.
"""
from gymnasium.envs.registration import register, registry

from treeworld.envs.sb3 import TreeWorldSB3VecEnv
from treeworld.envs.tree_world import TreeWorldEnv
from treeworld.envs.vector import TreeWorldVectorEnv
from treeworld.envs.wrappers import DiscreteActions

MAX_EPISODE_STEPS = 2000
ENV_IDS = ("treeworld/TreeWorld-v0", "treeworld/TreeWorldDiscrete-v0")

if ENV_IDS[0] not in registry:
    register(id=ENV_IDS[0], entry_point="treeworld.envs.tree_world:TreeWorldEnv",
             vector_entry_point="treeworld.envs.vector:TreeWorldVectorEnv", max_episode_steps=MAX_EPISODE_STEPS)
    register(id=ENV_IDS[1], entry_point="treeworld.envs.wrappers:make_discrete", max_episode_steps=MAX_EPISODE_STEPS)

__all__ = ["TreeWorldEnv", "TreeWorldVectorEnv", "TreeWorldSB3VecEnv", "DiscreteActions", "ENV_IDS", "MAX_EPISODE_STEPS"]
