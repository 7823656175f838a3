"""treeworld: a continuous 2-D world of fruit trees for studying spatial cognition.

The core (this package) is the simulated world: config, batched state and physics, sensors and
the percept vocabulary. Gymnasium environments live in ``treeworld.envs``, agents in
``treeworld.agents``.
"""
from treeworld.config import WorldConfig
from treeworld.sensors import PerceptTables, observe
from treeworld.vocabulary import Vocabulary
from treeworld.world import StepEvents, WorldState, build_world, sample_world, stack, step

__all__ = ["WorldConfig", "Vocabulary", "WorldState", "StepEvents", "sample_world", "build_world", "stack", "step", "observe", "PerceptTables"]
