"""The minds: the agent protocols, location codes, path integration, percept metrics, valence,
topographic map, spatial memory, the TEM agent, its training model and its memory as features for
RL, and baselines. (stable-baselines3 parts: ``treeworld.agents.sb3_features``, ``treeworld.agents.rl``.)"""
from treeworld.agents.baselines import Forager, RandomWalker
from treeworld.agents.fourier import FourierCodeDistribution, FourierMetric
from treeworld.agents.memory import MapUnits, SpatialMemory
from treeworld.agents.memory_features import MemoryReader
from treeworld.agents.protocol import Agent, BatchAgent, Batched, Single, run_batch
from treeworld.agents.path_integration import Belief, ExactPathIntegration, LearnedPathIntegration, PathIntegrator
from treeworld.agents.pseudometric import LowRankGaussian, PseudoMetric
from treeworld.agents.tem import TEMAgent
from treeworld.agents.topography import Topography
from treeworld.agents.training import Sequences, TEMModel
from treeworld.agents.valence import ValenceReadout

__all__ = ["Agent", "BatchAgent", "Batched", "Single", "run_batch", "Forager", "RandomWalker",
           "FourierCodeDistribution", "FourierMetric", "MapUnits", "MemoryReader",
           "SpatialMemory", "Belief", "ExactPathIntegration", "LearnedPathIntegration", "PathIntegrator",
           "LowRankGaussian", "PseudoMetric", "Sequences", "TEMAgent", "TEMModel", "Topography", "ValenceReadout"]
