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


def test_students_t_quantiles_match_the_table():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 6: 2.4469, 10: 2.2281, 31: 2.0395, 120: 1.9799}
    for df, value in table.items():
        assert abs(evaluation.t_quantile(df) - value) < 1e-4, df
    assert abs(evaluation.t_quantile(5, level=0.9) - 2.0150) < 1e-4
    assert abs(evaluation.t_quantile(10_000) - 1.9600) < 1e-3  # the normal limit


@pytest.mark.parametrize("n", [32, 3])
def test_the_95_percent_interval_covers_the_true_mean_at_its_rate(n):
    rng = np.random.default_rng(0)
    trials = 2000
    for draw, low in ((lambda: rng.normal(2.0, 3.0, size=n), 0.94),  # 95% nominal
                      (lambda: rng.exponential(2.0, size=n), 0.87)):  # skewed: a little under (documented)
        covered = 0
        for _ in range(trials):
            stats = evaluation.mean_ci(draw())
            covered += abs(stats["mean"] - 2.0) <= stats["ci95"]
        assert low <= covered / trials <= 0.965, covered / trials
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
                        explore_steps=20, goal_timeout=300, max_episode_steps=600)
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


class Spinner:
    """Turns in place: sees the trees around it, reaches no goal."""

    def __init__(self, num_agents):
        self.num_agents = num_agents

    def reset(self, rows=None, seed=None):
        pass

    def act(self, observations):
        heading = observations["heading"]
        turned = np.stack([heading[:, 0] - 0.5 * heading[:, 1], heading[:, 1] + 0.5 * heading[:, 0]], axis=-1)
        return np.concatenate([0.01 * turned, -np.ones((self.num_agents, 1))], axis=-1).astype(np.float32)


def test_a_goal_open_when_the_agent_dies_counts_as_not_reached_and_late_goals_are_not_counted():
    # health runs out at step 200, long before the goal set at step 20 times out: a failure, SPL 0
    envs = gym.make_vec("treeworld/TreeWorldHoming-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        explore_steps=20, living_cost=5.0, max_episode_steps=600)
    metrics = evaluation.homing(envs, Spinner(3), 600, seed=evaluation.EVAL_SEED)
    assert metrics["goals"] == 3 and metrics["success"]["mean"] == 0.0 and metrics["spl"]["mean"] == 0.0
    assert min(metrics["per_goal"]["distance"]) > envs.config.eat_radius  # drawn out of reach
    # a goal set after step steps - goal_timeout (here every goal: 300 - 500 < 20) may be cut off by
    # the step limit: none is counted, however it ended
    envs = gym.make_vec("treeworld/TreeWorldHoming-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        explore_steps=20, max_episode_steps=300)
    assert evaluation.homing(envs, Spinner(3), 300, seed=evaluation.EVAL_SEED)["goals"] == 0  # 300 - 500 < 20
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
    assert set(metrics) == {"qe", "te", "trees_error", "units_error", "example"}
    assert len(metrics["example"]["units"]) == 16 and len(metrics["example"]["true"]) == 25
    assert metrics["trees_error"]["n"] == 2 and 0 <= metrics["trees_error"]["mean"] < 20  # clean senses
    assert np.isfinite(metrics["units_error"]["mean"])
    assert metrics["qe"]["n"] == 2 and metrics["qe"]["mean"] > 0 and 0 <= metrics["te"]["mean"] <= 1
    with pytest.raises(TypeError, match="^agent: expected an agent with a memory"):
        evaluation.run("treeworld/TreeWorld-v0", "random", evaluation.map_quality, 2, 5, evaluation.EVAL_SEED)


class NodeMemory:
    """A test oracle for revisit prediction: walks a cycle over the three trees nearest its start
    (reading the world's state), remembers every tree it has been in reach of, and recalls, at its
    true place, the look of the nearest tree in reach if remembered (nothing at a first arrival)."""

    def __init__(self, envs):
        from treeworld.sensors import PerceptTables
        from treeworld.vocabulary import Vocabulary

        self.envs, self.num_agents = envs, envs.num_envs
        self.sight = PerceptTables.build(envs.config, Vocabulary.for_config(envs.config)).sight

    def reset(self, rows=None, seed=None):
        self.cycle, self.leg, self.known = None, np.zeros(self.num_agents, dtype=int), set()

    def _distance(self):
        state = self.envs.batch.state
        return np.linalg.norm(state.tree_position - state.agent_position[:, None], axis=-1)  # (envs, trees)

    def _in_reach(self):
        return self._distance() < self.envs.config.eat_radius

    def recall_here(self, motion):
        state, distance = self.envs.batch.state, self._distance()
        percepts = np.zeros((self.num_agents, self.sight.shape[1]), np.float32)
        for env, tree in enumerate(distance.argmin(1)):
            if distance[env, tree] < self.envs.config.eat_radius and (env, tree) in self.known:
                percepts[env] = self.sight[state.tree_sight_row[env, tree]]
        return torch.as_tensor(percepts), torch.ones(self.num_agents)

    def act(self, observations):
        state, config = self.envs.batch.state, self.envs.config
        rows = np.arange(self.num_agents)
        if self.cycle is None:
            distance = self._distance()
            self.cycle = np.argsort(distance, axis=1)[:, :3]
        self.known |= {(int(e), int(k)) for e, k in zip(*np.nonzero(self._in_reach()))}
        target = self.cycle[rows, self.leg % 3]
        offset = state.tree_position[rows, target] - state.agent_position
        distance = np.linalg.norm(offset, axis=-1, keepdims=True)
        self.leg += (distance[:, 0] < 1.0)
        step = np.minimum(distance, config.max_step) / config.max_step
        move = offset / np.maximum(distance, 1e-9) * step
        return np.concatenate([move, -np.ones((self.num_agents, 1))], axis=-1).astype(np.float32)


def test_a_memory_of_every_visit_reaches_the_node_agent_ceiling():
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        config=WorldConfig(living_cost=0.0, move_cost=0.0), max_episode_steps=None)
    result = evaluation.revisits(envs, NodeMemory(envs), 600, seed=evaluation.EVAL_SEED)
    first, after = result["by_visits"]["0"], result["after_visit"]
    assert first["arrivals"] >= 6 and after["arrivals"] >= 9
    assert first["accuracy"]["mean"] == 0.0 and first["node"] == pytest.approx(first["chance"])
    assert after["accuracy"]["mean"] == 1.0 and after["node"] == 1.0
    assert first["chance"] == pytest.approx(1 / envs.config.num_trees)
    assert sum(v["arrivals"] for v in result["by_visits"].values()) == len(result["arrivals"])
    assert all(r["visits"] > 0 for r in result["arrivals"] if r["zero_shot"])
    assert all(r["predicted"] == -1 and r["confidence"] == 1.0 for r in result["arrivals"] if r["visits"] == 0)
    with pytest.raises(TypeError, match=r"^agent: expected a BatchAgent with recall_here\(motion\)"):
        evaluation.revisits(envs, Batched([Still()] * 3), 5, seed=evaluation.EVAL_SEED)
    envs.close()


def test_where_reaches_overlap_the_place_belongs_to_the_nearer_tree():
    """Five trees crowded into a small arena: reaches overlap, and a memory of places still scores
    the ceiling after a visit (an arrival into a farther tree's reach is not an arrival there)."""
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        config=WorldConfig(living_cost=0.0, move_cost=0.0, arena_radius=30.0, start_radius=15.0,
                                           num_trees=5), max_episode_steps=None)
    result = evaluation.revisits(envs, NodeMemory(envs), 300, seed=evaluation.EVAL_SEED)
    assert result["after_visit"]["arrivals"] >= 50 and result["after_visit"]["accuracy"]["mean"] == 1.0
    envs.close()


def test_percept_identity_labels_every_look_and_nothing():
    from treeworld.sensors import PerceptTables
    from treeworld.vocabulary import FRUIT_PHRASES, Vocabulary

    config = WorldConfig()
    sight = np.asarray(PerceptTables.build(config, Vocabulary.for_config(config)).sight)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(sight) - 1, size=50)
    noisy = sight[rows] + 0.02 * rng.normal(size=(50, sight.shape[1]))
    np.testing.assert_array_equal(evaluation.percept_identity(config, noisy), rows // len(FRUIT_PHRASES))
    assert evaluation.percept_identity(config, np.zeros((2, sight.shape[1]))).tolist() == [-1, -1]


def test_the_tem_agent_predicts_revisits_from_its_belief():
    config = WorldConfig(**TASKS["noisy"])
    result = evaluation.run("treeworld/TreeWorld-v0", "tem", evaluation.revisits, 2, 1200, evaluation.EVAL_SEED,
                            config=config)
    after = result["after_visit"]
    assert after["arrivals"] >= 5 and after["accuracy"]["mean"] >= 0.5  # chance is 1 / 25


def test_average_ranks_share_ties_so_spearman_does_not_depend_on_order():
    np.testing.assert_array_equal(evaluation.average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]), [3.0, 0.0, 3.0, 1.0, 3.0])
    np.testing.assert_array_equal(evaluation.average_ranks([0.5, 0.5]), [0.5, 0.5])
    x, y = np.array([1.0, 2.0, 2.0, 3.0, 5.0]), np.array([0.1, 0.2, 0.2, 0.2, 0.9])
    spearman = lambda a, b: np.corrcoef(evaluation.average_ranks(a), evaluation.average_ranks(b))[0, 1]  # noqa: E731
    order = np.array([3, 0, 4, 2, 1])
    assert abs(spearman(x, y) - spearman(x[order], y[order])) < 1e-12
    # by hand: ranks (0, 1.5, 1.5, 3, 4) and (0, 2, 2, 2, 4), deviations' products 8, squares 9.5 and 8
    assert abs(spearman(x, y) - 8 / math.sqrt(9.5 * 8)) < 1e-12


def test_fisher_information_of_an_unbiased_code_is_its_inverse_noise_variance():
    rng = np.random.default_rng(1)
    true = rng.uniform(-100, 100, size=(200_000, 2))
    sigma = np.where(true[:, :1] < 0, 1.0, 2.0)  # noisier on the right half
    believed = true + sigma * rng.normal(size=true.shape)
    result = evaluation.fisher_information(true, believed, bin_size=25.0)
    centres, information = np.array(result["centres"]), np.array(result["information"])
    assert len(information) == 64
    left, right = information[centres[:, 0] < 0], information[centres[:, 0] > 0]
    # sqrt(det J) = 1 / sigma^2; ~3,000 samples per bin estimate it within a few per cent
    np.testing.assert_allclose(left, 1.0, rtol=0.1)
    np.testing.assert_allclose(right, 0.25, rtol=0.1)
    assert left.mean() == pytest.approx(1.0, rel=0.02) and right.mean() == pytest.approx(0.25, rel=0.02)
    assert sum(result["occupancy"]) == pytest.approx(1.0)
    # a code that doubles position (same noise) carries four times the information in 2-d
    doubled = evaluation.fisher_information(true, 2 * true + rng.normal(size=true.shape), bin_size=25.0)
    np.testing.assert_allclose(doubled["information"], 4.0, rtol=0.1)
    # information that follows occupancy correlates with it
    dense = np.concatenate([true, rng.uniform([-100, -100], [0, 100], size=(200_000, 2))])  # 3x on the left
    noise = np.where(dense[:, :1] < 0, 0.5, 1.0) * rng.normal(size=dense.shape)
    matched = evaluation.fisher_information(dense, dense + noise, bin_size=25.0)
    assert matched["correlation"]["pearson"] > 0.9 and matched["correlation"]["spearman"] > 0.5
    with pytest.raises(ValueError, match="^true, believed: expected the same"):
        evaluation.fisher_information(true, believed[:10], bin_size=25.0)
    with pytest.raises(ValueError, match="^bin_size"):
        evaluation.fisher_information(true, believed, bin_size=0.0)


def test_the_path_integration_row_is_the_agents_integrator_alone():
    envs = noisy_walks(num_envs=2)
    agent = registry.make_batch_agent("tem", envs.config, 2, envs.single_action_space)
    errors = evaluation.belief_errors(envs, agent, 300, seed=evaluation.EVAL_SEED)
    # the exact integrator without loop closure is dead reckoning (float32 motions, float64 sums)
    np.testing.assert_allclose(errors["path_integration"], errors["dead_reckoning"], atol=1e-3)
    assert errors["true"].shape == errors["believed"].shape == (300, 2, 2)
    np.testing.assert_allclose(np.hypot(*(errors["believed"] - errors["true"]).transpose(2, 0, 1)), errors["agent"])
    assert "path_integration" not in evaluation.belief_errors(envs, Oracle(envs), 5, seed=evaluation.EVAL_SEED)
    envs.close()


def test_later_episodes_replay_the_same_worlds_from_other_starts():
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        max_episode_steps=50)
    agent = registry.make_batch_agent("forager", envs.config, 2, envs.single_action_space)
    _, first = evaluation.reset_worlds(envs, agent, evaluation.EVAL_SEED)
    _, again = evaluation.reset_worlds(envs, agent, evaluation.EVAL_SEED, episode=1)
    np.testing.assert_array_equal(first["tree_positions"], again["tree_positions"])
    assert not np.array_equal(first["position"], again["position"])
    one = evaluation.foraging(envs, agent, 50, evaluation.EVAL_SEED)
    three = evaluation.foraging(envs, agent, 50, evaluation.EVAL_SEED, episodes=3)
    assert three["steps"]["n"] == 2 and one["steps"]["n"] == 2  # worlds are the units
    assert three["fruit_per_1000_steps"]["mean"] != one["fruit_per_1000_steps"]["mean"]
    still = evaluation.foraging(envs, Batched([Still(), Still()]), 50, evaluation.EVAL_SEED, episodes=2)
    assert still["survival"]["mean"] == 1.0 and still["steps"]["mean"] == 50
    with pytest.raises(ValueError, match="^episodes"):
        evaluation.foraging(envs, agent, 50, evaluation.EVAL_SEED, episodes=0)
    envs.close()


class CountingNodeMemory(NodeMemory):
    """The node agent, noting the step of every recall (an arrival in some world)."""

    def reset(self, rows=None, seed=None):
        super().reset(rows, seed)
        self.step, self.recalled = 0, []

    def act(self, observations):
        self.step += 1
        return super().act(observations)

    def recall_here(self, motion):
        self.recalled.append(self.step)
        return super().recall_here(motion)


def test_an_arrival_on_an_episodes_last_step_counts():
    def run(limit, steps):
        envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point",
                            config=WorldConfig(living_cost=0.0, move_cost=0.0), max_episode_steps=limit)
        agent = CountingNodeMemory(envs)
        result = evaluation.revisits(envs, agent, steps, seed=evaluation.EVAL_SEED)
        envs.close()
        return len(result["arrivals"]), agent.recalled

    _, steps = run(None, 300)
    last = steps[len(steps) // 2]  # a step with an arrival: the episodes end on it next time
    counted, _ = run(last, last + 10)
    unlimited, _ = run(None, last)
    assert counted == unlimited > 0
