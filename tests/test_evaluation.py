"""Evaluation protocols on scripted agents whose answers are known; the statistics' coverage."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import evaluation, registry
from treeworld.agents.protocol import Batched
from treeworld.config import WorldConfig
from treeworld.envs import TASKS

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


class StraightHomer:
    """A test oracle for the homing protocol: reads the world's state (privileged), turns in place
    while no goal is set (so it sees trees to be given as goals), then walks straight to the goal
    tree and stops at the edge of reach."""

    def __init__(self, envs):
        self.envs, self.num_agents = envs, envs.num_envs

    def reset(self, rows=None, seed=None):
        pass

    def act(self, observations):
        state, config = self.envs.batch.state, self.envs.config
        rows = np.arange(self.num_agents)
        goal = state.goal_tree
        offset = state.tree_position[rows, np.maximum(goal, 0)] - state.agent_position
        distance = np.linalg.norm(offset, axis=-1, keepdims=True)
        step = np.clip(distance - config.eat_radius + 1e-4, 0.0, config.max_step)  # float32 world: a hair over
        walk = offset / np.maximum(distance, 1e-9) * step / config.max_step
        angle = np.arctan2(state.heading[:, 1], state.heading[:, 0]) + 0.8
        turn = 0.02 * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        move = np.where((goal >= 0)[:, None], walk, turn)
        return np.concatenate([move, -np.ones((self.num_agents, 1))], axis=-1).astype(np.float32)


def test_a_straight_line_homer_has_spl_one_and_every_goal_reached():
    envs = gym.make_vec("treeworld/TreeWorldHoming-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        explore_steps=20, max_episode_steps=600)
    metrics = evaluation.homing(envs, StraightHomer(envs), 600, seed=evaluation.EVAL_SEED)
    assert metrics["goals"] >= 6
    assert metrics["success"]["mean"] == 1.0
    distance, per_goal = (np.array(metrics["per_goal"][key]) for key in ("distance", "spl"))
    assert len(distance) == metrics["goals"]
    # SPL 1 (within the homer's 1e-4 overshoot of the float32 world; goals just beyond reach, with
    # a shortest path of ~0.01, show it most)
    assert (per_goal[distance > envs.config.eat_radius + 1.0] > 0.9999).all()
    assert per_goal.min() > 0.98 and metrics["spl"]["mean"] > 0.99
    with pytest.raises(ValueError, match="^envs: expected a homing-task"):
        clean = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point")
        evaluation.homing(clean, StraightHomer(clean), 5, seed=evaluation.EVAL_SEED)
    envs.close()


class Oracle:
    """A test oracle for the path-integration protocol: believes the true displacement from its
    start (read from the world's state), walks a fixed circle."""

    def __init__(self, envs):
        self.envs, self.num_agents = envs, envs.num_envs

    def reset(self, rows=None, seed=None):
        self.start, self.t = None, 0

    def act(self, observations):
        if self.start is None:  # the first observation of the episode: the world is reset now
            self.start = np.asarray(self.envs.batch.state.agent_position, dtype=np.float64).copy()
        self.t += 1
        angle = 0.05 * self.t
        return np.tile(np.array([np.cos(angle), np.sin(angle), -1.0], np.float32), (self.num_agents, 1))

    def position(self):
        return np.asarray(self.envs.batch.state.agent_position, dtype=np.float64) - self.start


def noisy_walks(num_envs=3):
    config = WorldConfig(**{**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0})
    return gym.make_vec("treeworld/TreeWorld-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        config=config, max_episode_steps=None)


def test_an_oracle_has_zero_drift_and_dead_reckoning_drifts_by_the_motion_noise():
    envs = noisy_walks()
    errors = evaluation.belief_errors(envs, Oracle(envs), 400, seed=evaluation.EVAL_SEED)
    assert errors["agent"].shape == (400, 3) and np.nanmax(errors["agent"]) < 1e-3
    # summed odometry noise of std 0.5 per axis per step: |error| ~ Rayleigh(0.5 sqrt(t))
    final = errors["dead_reckoning"][-1]
    assert 0.2 * 0.5 * math.sqrt(400) < np.median(final) < 3 * 0.5 * math.sqrt(400)
    summary = evaluation.error_summary(errors["dead_reckoning"][-1])
    assert summary["worlds"] == 3 and summary["median"] <= summary["p90"]
    assert evaluation.error_summary([np.nan, np.nan]) == {"median": None, "p90": None, "worlds": 0}
    with pytest.raises(TypeError, match="^agent: expected a BatchAgent with position()"):
        evaluation.belief_errors(envs, Batched([Still()] * 3), 5, seed=evaluation.EVAL_SEED)
    envs.close()


def test_rigid_alignment_recovers_a_rotation_and_translation():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(20, 2)) * 50
    angle = 0.7
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = points @ rotation.T + np.array([12.0, -5.0])
    got_rotation, got_shift = evaluation.rigid_alignment(points, moved)
    np.testing.assert_allclose(got_rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(got_shift, [12.0, -5.0], atol=1e-9)
    # believed places that are the true ones rotated and shifted: zero error after alignment
    small = np.array([[math.cos(0.1), -math.sin(0.1)], [math.sin(0.1), math.cos(0.1)]])
    assert evaluation.aligned_error(points[:8] @ small + 3.0, points) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="^source, target:"):
        evaluation.rigid_alignment(points[:1], moved[:1])


def test_map_quality_of_a_tem_agent_after_a_short_walk():
    config = WorldConfig(living_cost=0.0, move_cost=0.0)
    metrics = evaluation.run("treeworld/TreeWorld-v0", "tem", evaluation.map_quality, 2, 450, evaluation.EVAL_SEED,
                             config=config, max_episode_steps=None)
    assert set(metrics) == {"qe", "te", "trees_error", "units_error"}
    assert metrics["trees_error"]["n"] == 2 and 0 <= metrics["trees_error"]["mean"] < 20  # clean senses
    assert np.isfinite(metrics["units_error"]["mean"])
    assert metrics["qe"]["n"] == 2 and metrics["qe"]["mean"] > 0 and 0 <= metrics["te"]["mean"] <= 1
    with pytest.raises(TypeError, match="^agent: expected an agent with a memory"):
        evaluation.run("treeworld/TreeWorld-v0", "random", evaluation.map_quality, 2, 5, evaluation.EVAL_SEED)
