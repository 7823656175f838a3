"""treeworld: a continuous 2-D world of fruit trees for studying spatial cognition.

The core (this package) is the simulated world: config, batched state and physics, sensors and
the percept vocabulary. Gymnasium environments live in ``treeworld.envs``, agents in
``treeworld.agents``.
"""
import os

if "OMP_WAIT_POLICY" not in os.environ:
    # OpenMP (numba's parallel kernels from 256 worlds, torch's GEMM) spins ~300,000 times after each
    # parallel region by default; a core shared with another busy process then starves the kernels
    # (measured 4-6x slower). 3,000 spins keep a quiet machine's speed and halve that loss. Read
    # once when OpenMP loads, so it applies only if torch and numba are imported after treeworld;
    # set GOMP_SPINCOUNT or OMP_WAIT_POLICY yourself to choose otherwise.
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")
from treeworld.config import WorldConfig  # noqa: E402  (after the OpenMP setting)
from treeworld.sensors import PerceptTables, observe
from treeworld.vocabulary import Vocabulary
from treeworld.world import StepEvents, WorldState, build_world, sample_world, stack, step

__all__ = ["WorldConfig", "Vocabulary", "WorldState", "StepEvents", "sample_world", "build_world", "stack", "step", "observe", "PerceptTables"]
