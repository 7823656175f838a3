"""The minds: the agent protocols, location codes, path integration, percept metrics, valence,
topographic map, spatial memory, the TEM agent and its training model, and baselines."""
from treeworld.agents.baselines import Forager, RandomWalker
from treeworld.agents.fourier import FourierCodeDistribution, FourierMetric
from treeworld.agents.memory import MapUnits, SpatialMemory
from treeworld.agents.protocol import Agent, BatchAgent, Batched, Single, run_batch
from treeworld.agents.path_integration import Belief, ExactPathIntegration, LearnedPathIntegration, PathIntegrator
from treeworld.agents.pseudometric import LowRankGaussian, PseudoMetric
from treeworld.agents.tem import TEMAgent
from treeworld.agents.topography import Topography
from treeworld.agents.training import Sequences, TEMModel
from treeworld.agents.valence import ValenceReadout

__all__ = ["Agent", "BatchAgent", "Batched", "Single", "run_batch", "Forager", "RandomWalker",
           "FourierCodeDistribution", "FourierMetric", "MapUnits",
           "SpatialMemory", "Belief", "ExactPathIntegration", "LearnedPathIntegration", "PathIntegrator",
           "LowRankGaussian", "PseudoMetric", "Sequences", "TEMAgent", "TEMModel", "Topography", "ValenceReadout"]
