"""Agents for the tree world."""
from treeworld.agents.topography import Topography
from treeworld.agents.fourier import FourierCodeDistribution, FourierMetric
from treeworld.agents.pseudometric import LowRankGaussian, PseudoMetric
from treeworld.agents.baselines import Agent, RandomWalker, Forager
from treeworld.agents.memory import MapUnits, SpatialMemory
