"""Gymnasium face of the tree world; importing this module registers the environment ids.

Three tasks, each with a discrete twin (8 directions + stay + eat), TimeLimit 2000:

| id | question | adds to the default world |
|---|---|---|
| ``treeworld/TreeWorld-v0`` | can it forage? | nothing: noiseless senses |
| ``treeworld/TreeWorldNoisy-v0`` | does it need a map? | ``NOISY`` motion and percept noise |
| ``treeworld/TreeWorldHoming-v0`` | can it go back to a tree it has seen? | ``HOMING``: a ``goal`` percept |

``gym.make(id, **overrides)``, and batched with ``gym.make_vec(id, num_envs=N,
vectorization_mode="vector_entry_point")``; for SB3, ``TreeWorldSB3VecEnv(N, **TASKS[name])``.
"""
from gymnasium.envs.registration import register, registry

from treeworld.envs.sb3 import TreeWorldSB3VecEnv
from treeworld.envs.tree_world import TreeWorldEnv
from treeworld.envs.vector import TreeWorldVectorEnv
from treeworld.envs.wrappers import DiscreteActions

MAX_EPISODE_STEPS = 2000
# Calibrated in the README: a 2,000-step random walk's dead reckoning drifts by tens of units, one
# smell no longer locates a tree to several units, sight still names the tree seen >= 99% of the time.
NOISY = {"motion_noise": 0.5, "percept_noise": 0.02}
# Costs of at most 0.2 + 0.04 * 5 = 0.4 health per step: 2,000 steps cost 800 < 1,000, so no one
# starves within an episode (poisonous fruit can still kill).
HOMING = {"task": "homing", "living_cost": 0.2, "move_cost": 0.04}
TASKS = {"forage": {}, "noisy": NOISY, "homing": HOMING}  # task name -> config overrides
_IDS = {"forage": "TreeWorld", "noisy": "TreeWorldNoisy", "homing": "TreeWorldHoming"}
ENV_IDS = tuple(f"treeworld/{name}{twin}-v0" for name in _IDS.values() for twin in ("", "Discrete"))

for task, name in _IDS.items():
    if f"treeworld/{name}-v0" not in registry:
        register(id=f"treeworld/{name}-v0", entry_point="treeworld.envs.tree_world:TreeWorldEnv",
                 vector_entry_point="treeworld.envs.vector:TreeWorldVectorEnv", max_episode_steps=MAX_EPISODE_STEPS,
                 kwargs={"preset": dict(TASKS[task])})
        register(id=f"treeworld/{name}Discrete-v0", entry_point="treeworld.envs.wrappers:make_discrete",
                 vector_entry_point="treeworld.envs.wrappers:make_discrete_vector",
                 max_episode_steps=MAX_EPISODE_STEPS, kwargs={"preset": dict(TASKS[task])})

__all__ = ["TreeWorldEnv", "TreeWorldVectorEnv", "TreeWorldSB3VecEnv", "DiscreteActions", "ENV_IDS", "TASKS",
           "NOISY", "HOMING", "MAX_EPISODE_STEPS"]
