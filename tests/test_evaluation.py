"""Evaluation protocols on scripted agents whose answers are known; the statistics' coverage."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import evaluation, registry
from treeworld.agents.protocol import Batched

torch.set_num_threads(1)


class Still:
    """Never moves, never eats."""

    def reset(self, seed=None):
        pass

    def act(self, observation):
        return np.array([0.0, 0.0, -1.0], np.float32)


def test_an_agent_that_never_moves_survives_exactly_max_health_over_living_cost_steps():
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        max_episode_steps=2000)
    metrics = evaluation.foraging(envs, Batched([Still() for _ in range(4)]), 2000, seed=evaluation.EVAL_SEED)
    config = envs.config
    assert metrics["steps"]["mean"] == config.max_health / config.living_cost and metrics["steps"]["ci95"] == 0.0
    assert metrics["survival"]["mean"] == 0.0
    assert metrics["fruit_per_1000_steps"]["mean"] == 0.0 and metrics["poison_per_1000_steps"]["mean"] == 0.0
    assert metrics["return"]["mean"] == -config.death_penalty
    envs.close()


def test_only_first_episodes_count_and_survival_means_reaching_the_limit():
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        max_episode_steps=50)
    steps = []
    episodes = evaluation.first_episodes(envs, registry.make_batch_agent("forager", envs.config, 3,
                                                                         envs.single_action_space),
                                         50, seed=evaluation.EVAL_SEED, progress=steps.append)
    assert episodes["steps"].tolist() == [50, 50, 50] and not episodes["terminated"].any()
    assert len(steps) == 50 and set(steps) == {1}
    metrics = evaluation.foraging_metrics(episodes, 50)
    assert metrics["survival"] == {"mean": 1.0, "ci95": 0.0, "n": 3}
    envs.close()


def test_the_95_percent_interval_covers_the_true_mean_at_its_rate():
    rng = np.random.default_rng(0)
    trials, n = 2000, 32
    for draw, low in ((lambda: rng.normal(2.0, 3.0, size=n), 0.93),  # 95% nominal (1.96 against t's 2.04)
                      (lambda: rng.exponential(2.0, size=n), 0.89)):  # skewed: a little under (documented)
        covered = 0
        for _ in range(trials):
            stats = evaluation.mean_ci(draw())
            covered += abs(stats["mean"] - 2.0) <= stats["ci95"]
        assert low <= covered / trials <= 0.97, covered / trials
    assert evaluation.mean_ci([]) == {"mean": None, "ci95": None, "n": 0}
    assert evaluation.mean_ci([3.0]) == {"mean": 3.0, "ci95": None, "n": 1}


def test_seed_ranges_must_be_held_out():
    assert evaluation.check_held_out(evaluation.EVAL_SEED, 32) == evaluation.EVAL_SEED
    with pytest.raises(ValueError, match=r"^seeds: expected held-out world seeds >= 10000 .* got 9990 \.\. 10021"):
        evaluation.check_held_out(9990, 32, "seeds")
    with pytest.raises(ValueError, match="^agent: expected num_agents 2"):
        envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=2, vectorization_mode="vector_entry_point")
        evaluation.first_episodes(envs, Batched([Still()]), 5, seed=evaluation.EVAL_SEED)
