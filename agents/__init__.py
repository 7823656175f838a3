"""Agents for the tree world."""
from treeworld.agents.fourier import FourierCodeDistribution, FourierMetric
from treeworld.agents.pseudometric import LowRankGaussian, PseudoMetric
from treeworld.agents.baselines import Agent, RandomWalker, Forager
