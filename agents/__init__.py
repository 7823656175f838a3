"""The minds: location codes, path integration, percept metrics, topographic map, spatial memory and baselines."""
from treeworld.agents.baselines import Agent, Forager, RandomWalker
from treeworld.agents.fourier import FourierCodeDistribution, FourierMetric
from treeworld.agents.memory import MapUnits, SpatialMemory
from treeworld.agents.path_integration import Belief, ExactPathIntegration, LearnedPathIntegration, PathIntegrator
from treeworld.agents.pseudometric import LowRankGaussian, PseudoMetric
from treeworld.agents.topography import Topography

__all__ = ["Agent", "Forager", "RandomWalker", "FourierCodeDistribution", "FourierMetric", "MapUnits",
           "SpatialMemory", "Belief", "ExactPathIntegration", "LearnedPathIntegration", "PathIntegrator",
           "LowRankGaussian", "PseudoMetric", "Topography"]
