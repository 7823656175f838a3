"""Task rules (treeworld.tasks) through the envs: homing goals and their percept, SPL, goal
timeouts, the 'task' and 'health' rewards, and the homing env in the vector and SB3 faces.

Every expectation is computed here independently of the library (from ``info`` and the
vocabulary table), never by calling the rule under test.
"""
import math
import os
import warnings

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402

import treeworld.envs  # noqa: E402,F401  (registers the ids)
from treeworld.agents.baselines import Forager, RandomWalker  # noqa: E402
from treeworld.envs import HOMING, TreeWorldSB3VecEnv  # noqa: E402
from treeworld.tasks import spl  # noqa: E402
from treeworld.vocabulary import FRUIT_PHRASES, Vocabulary  # noqa: E402

torch.set_num_threads(1)


HOMING_ID = "treeworld/TreeWorldHoming-v0"
HOMING_IDS = (HOMING_ID, "treeworld/TreeWorldHomingDiscrete-v0")
STILL = np.array([0.0, 0.0, -1.0], np.float32)


def f64(x):
    return np.asarray(x, dtype=np.float64)


def tree_distance(info, tree):
    return float(np.hypot(*(f64(info["tree_positions"][tree]) - f64(info["position"]))))


def new_goal(info, previous_goal):
    """The goal tree set on this step (reset or step info), or None: a goal is set when goal_tree
    changes, or when one ended this step and another (perhaps the same tree again) is drawn."""
    goal = info["goal_tree"]
    if goal < 0:
        return None
    if goal != previous_goal or info.get("goal_reached", False) or info.get("goal_failed", False):
        return goal
    return None


def move_towards(info, goal, config, overshoot=1e-3):
    """Full-speed straight step towards ``goal``, the last one ending ``overshoot`` inside eat_radius."""
    offset = f64(info["tree_positions"][goal]) - f64(info["position"])
    d = float(np.hypot(*offset))
    length = min(config.max_step, max(d - config.eat_radius + overshoot, overshoot))
    action = np.zeros(3, np.float32)
    action[:2] = offset / d * (length / config.max_step)
    action[2] = -1.0
    return action


# 1. API checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", HOMING_IDS)
def test_homing_env_passes_gymnasium_and_sb3_checks_without_warnings(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped, skip_render_check=False)
        sb3_check_env(gym.make(env_id), warn=True)
    assert [str(w.message) for w in caught] == []
    space = gym.make(env_id).observation_space["goal"]
    assert space.shape == (384,) and space.dtype == np.float32
    assert (space.low == -1).all() and (space.high == 1).all()
    # the capture works: noisy observations legitimately warn about their infinite bounds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make("treeworld/TreeWorldNoisy-v0").unwrapped)
    assert any("infinity" in str(w.message) for w in caught)


# 2. The goal percept ------------------------------------------------------------------------------

def test_goal_observation_is_zero_while_exploring_then_the_goal_trees_kind_and_name():
    explore = 15
    env = gym.make(HOMING_ID, explore_steps=explore, goal_timeout=20)
    table = env.unwrapped._batch.vocabulary.table.astype(np.float64)
    phrases = table[Vocabulary.phrase_offset:]
    assert len(phrases) == len(FRUIT_PHRASES)
    checked, goals = 0, set()
    for seed in (0, 1):
        walker = RandomWalker(config=env.unwrapped.config)
        walker.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        assert obs["goal"].dtype == np.float32 and not obs["goal"].any() and info["goal_tree"] == -1
        for t in range(1, 200):
            obs, _, _, _, info = env.step(walker.act(obs))
            goal = info["goal_tree"]
            if t < explore:
                assert goal == -1 and not obs["goal"].any(), t
            if goal < 0:
                assert not obs["goal"].any(), t
                continue
            state = env.unwrapped.state
            kind, name = int(state.tree_kind[0, goal]), int(state.tree_name[0, goal])
            assert 0 <= kind < Vocabulary.num_kinds and Vocabulary.name_offset <= name < Vocabulary.phrase_offset
            expected = table[kind] + table[name]
            expected /= np.linalg.norm(expected)
            np.testing.assert_allclose(obs["goal"], expected, atol=2e-6, err_msg=f"step {t}")
            with_phrase = table[kind] + table[name] + phrases  # (6, D): what sight would show
            with_phrase /= np.linalg.norm(with_phrase, axis=1, keepdims=True)
            assert np.abs(with_phrase - obs["goal"]).max(axis=1).min() > 1e-2  # no fruit phrase
            checked += 1
            goals.add((seed, goal))
    assert checked > 100 and len(goals) >= 4


# 3. Goals are trees seen before, out of reach ------------------------------------------------------

def in_sight(info, config, tol=1e-4):
    """Trees in sight computed by brute force in float64: the nearest tree with cos >= sight_cos to
    the heading and distance < sight_distance. Returns (possible, sure) sets: to be robust to the
    env's float32 rounding, ``possible`` also holds the nearest tree under bounds looser by ``tol``
    (relative), and ``sure`` holds the tree in sight only when it is so under bounds tighter by
    ``tol`` and no other tree is nearer even under the looser ones."""
    offset = f64(info["tree_positions"]) - f64(info["position"])  # (T, 2)
    distance = np.hypot(offset[:, 0], offset[:, 1])
    cos = offset @ f64(info["heading"]) / np.maximum(distance, 1e-12)

    def visible(slack):
        return (cos >= config.sight_cos + slack) & (distance < config.sight_distance * (1 - slack))

    possible, sure = set(), set()
    for slack in (0.0, -tol):
        if visible(slack).any():
            possible.add(int(np.argmin(np.where(visible(slack), distance, np.inf))))
    if visible(-tol).any():
        nearest = int(np.argmin(np.where(visible(-tol), distance, np.inf)))
        if visible(tol)[nearest]:
            sure.add(nearest)
    return possible, sure


@pytest.mark.parametrize("explore_steps", [0, 20])
def test_goals_are_always_trees_already_seen_and_out_of_reach(explore_steps):
    env = gym.make(HOMING_ID, explore_steps=explore_steps, goal_timeout=30)
    config = env.unwrapped.config
    set_count = 0
    for seed in (0, 1, 2):
        walker = RandomWalker(config=config)
        walker.reset(seed=seed)
        env.action_space.seed(seed)
        obs, info = env.reset(seed=seed)
        seen, surely_seen = in_sight(info, config)
        previous = -1
        for t in range(600):
            goal = new_goal(info, previous)
            if goal is not None:
                set_count += 1
                assert t >= explore_steps, (seed, t)
                assert goal in seen, f"seed {seed} step {t}: goal {goal} never seen (seen: {sorted(seen)})"
                assert tree_distance(info, goal) > config.eat_radius, (seed, t, goal)
            elif t >= explore_steps and info["goal_tree"] < 0:  # no goal: no seen tree may be out of reach
                waiting = [tree for tree in surely_seen if tree_distance(info, tree) > config.eat_radius * (1 + 1e-4)]
                assert not waiting, f"seed {seed} step {t}: no goal drawn though trees {waiting} were seen"
            previous = info["goal_tree"]
            action = walker.act(obs) if seed != 2 else env.action_space.sample()
            obs, _, terminated, truncated, info = env.step(action)
            assert not (terminated or truncated)
            possible, sure = in_sight(info, config)
            seen |= possible
            surely_seen |= sure
    assert set_count >= 30


# 4. SPL -----------------------------------------------------------------------------------------

def run_goal_agent(env, seed, steps, detour=0):
    """Walk randomly until a goal is set; then for each goal move ``detour`` full steps
    perpendicular to its direction, then straight to it (the last step lands just in reach).

    Returns per ended goal: (info at set, positions visited from set to end, end info, rewards)."""
    config = env.unwrapped.config
    walker = RandomWalker(config=config)
    walker.reset(seed=seed)
    obs, info = env.reset(seed=seed)
    previous, current, ended, rewards = -1, None, [], []
    for _ in range(steps):
        goal = new_goal(info, previous)
        if goal is not None:
            offset = f64(info["tree_positions"][goal]) - f64(info["position"])
            side = np.array([-offset[1], offset[0]]) / np.hypot(*offset)
            current = dict(goal=goal, set_info=info, positions=[f64(info["position"])], side=side, detour=detour)
        previous = info["goal_tree"]
        if current is None:
            action = walker.act(obs)
        elif current["detour"] > 0:
            current["detour"] -= 1
            action = np.array([*current["side"], -1.0], np.float32)
        else:
            action = move_towards(info, current["goal"], config)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not (terminated or truncated)
        rewards.append((reward, info.get("goal_reached", False)))
        if current is not None:
            current["positions"].append(f64(info["position"]))
            if info["goal_reached"] or info["goal_failed"]:
                ended.append((current["goal"], current["set_info"], np.array(current["positions"]), info))
                current = None
    return ended, rewards


def path_length(positions):
    steps = np.diff(positions, axis=0)
    return float(np.hypot(steps[:, 0], steps[:, 1]).sum())


def test_straight_line_agent_reaches_every_goal_with_spl_one_and_reward_one():
    env = gym.make(HOMING_ID, explore_steps=10, goal_timeout=1000)
    config = env.unwrapped.config
    reached, shortest, path = [], [], []
    for seed in (0, 1):
        ended, rewards = run_goal_agent(env, seed, steps=1200)
        assert len(ended) >= 5
        for goal, set_info, positions, end in ended:
            assert end["goal_reached"] and not end["goal_failed"], (seed, goal)
            mine = path_length(positions)
            assert end["goal_path_length"] == pytest.approx(mine, abs=2e-3), (seed, goal)
            d = tree_distance(set_info, goal)
            assert end["goal_distance"] == pytest.approx(d, rel=1e-5, abs=1e-3)
            assert end["goal_shortest_path"] == pytest.approx(d - config.eat_radius, rel=1e-5, abs=1e-3)
            assert mine == pytest.approx(d - config.eat_radius, abs=1e-2)  # the straight line, just in reach
            reached.append(end["goal_reached"])
            shortest.append(end["goal_shortest_path"])
            path.append(end["goal_path_length"])
        # reward 'task': +1 on the steps a goal is reached, 0 elsewhere (no death here)
        assert all(r == (1.0 if hit else 0.0) for r, hit in rewards)
        assert sum(hit for _, hit in rewards) == len(ended)
    assert env.unwrapped.config.reward == "task"
    assert spl(reached, shortest, path) == pytest.approx(1.0, abs=1e-3)


def test_detour_agent_spl_matches_an_independent_computation_and_is_below_one():
    env = gym.make(HOMING_ID, explore_steps=10, goal_timeout=1000)
    config = env.unwrapped.config
    reached, shortest, path, expected = [], [], [], []
    for seed in (0, 1):
        ended, _ = run_goal_agent(env, seed, steps=1200, detour=8)
        assert len(ended) >= 4
        for goal, set_info, positions, end in ended:
            assert end["goal_reached"]
            l = tree_distance(set_info, goal) - config.eat_radius
            p = path_length(positions)
            assert p > l + 30  # the detour is in the path
            expected.append(l / max(p, l))
            reached.append(end["goal_reached"])
            shortest.append(end["goal_shortest_path"])
            path.append(end["goal_path_length"])
    got = spl(reached, shortest, path)
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-4)
    assert got < 0.95 and max(expected) < 0.99


# 5. Goal timeouts ---------------------------------------------------------------------------------

def test_a_still_agent_fails_each_goal_after_exactly_goal_timeout_steps_with_zero_reward():
    timeout = 25
    env = gym.make(HOMING_ID, explore_steps=30, goal_timeout=timeout)
    config = env.unwrapped.config
    for seed in (0, 1):
        walker = RandomWalker(config=config)
        walker.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        set_at, goal, failures, failed_count = None, -1, 0, 0
        for t in range(1, 250):
            action = walker.act(obs) if set_at is None else STILL  # walk until the first goal, then stand
            obs, reward, terminated, _, info = env.step(action)
            assert reward == 0.0 and not terminated and not info["goal_reached"], (seed, t)
            if set_at is not None:
                due = t - set_at == timeout
                assert info["goal_failed"] == due, (seed, t, set_at)
                if due:
                    failures += 1
                    assert info["goals_failed"] == failed_count + 1
                    assert info["goal_path_length"] == 0.0  # it stood still
                    d = tree_distance(info, goal)
                    assert info["goal_distance"] == pytest.approx(d, rel=1e-5)
                    assert info["goal_shortest_path"] == pytest.approx(d - config.eat_radius, rel=1e-5)
                    assert info["goal_tree"] >= 0  # the next goal is drawn on the same step
                    set_at = t
                else:
                    assert info["goals_failed"] == failed_count
                failed_count = info["goals_failed"]
                goal = info["goal_tree"]
            elif info["goal_tree"] >= 0:
                set_at, goal = t, info["goal_tree"]
        assert failures >= 7 and info["goals_reached"] == 0


# 6. Vector and SB3 faces ---------------------------------------------------------------------------

VECTOR_HOMING = dict(max_health=80.0, living_cost=1.0, explore_steps=5, goal_timeout=15)


def homing_actions(info, n, rng, config):
    """Head for the goal (from the privileged info) where one is set, else a random action."""
    actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    for i in range(n):
        goal = info["goal_tree"][i]
        if goal >= 0 and rng.random() < 0.9:
            actions[i] = move_towards({"position": info["position"][i], "tree_positions": info["tree_positions"][i]},
                                      goal, config)
    return actions


def test_vector_homing_env_reproduces_single_envs_step_for_step(assert_same):
    n, seed, limit = 3, 21, 120
    vector = gym.make_vec(HOMING_ID, num_envs=n, vectorization_mode="vector_entry_point",
                          max_episode_steps=limit, **VECTOR_HOMING)
    config = vector.unwrapped.config
    assert config.task == "homing" and config.move_cost == HOMING["move_cost"] and config.living_cost == 1.0
    singles = [gym.make(HOMING_ID, max_episode_steps=limit, **VECTOR_HOMING) for _ in range(n)]
    obs, vinfo = vector.reset(seed=seed)
    for i, env in enumerate(singles):
        sobs, sinfo = env.reset(seed=seed + i)
        assert_same({k: v[i] for k, v in obs.items()}, sobs)
        for key in sinfo:
            assert_same(vinfo[key][i], sinfo[key])
    rng = np.random.default_rng(0)
    pending = [False] * n
    ended = reached = failed = 0
    for _ in range(400):
        actions = homing_actions(vinfo, n, rng, config)
        obs, reward, terminated, truncated, vinfo = vector.step(actions)
        for i, env in enumerate(singles):
            if pending[i]:  # next-step autoreset: the vector env restarts env i now
                sobs, sinfo = env.reset()
                expected = (sobs, 0.0, False, False, sinfo)
            else:
                expected = env.step(actions[i])
                reached += expected[4]["goal_reached"]
                failed += expected[4]["goal_failed"]
            pending[i] = bool(expected[2] or expected[3])
            ended += expected[2]
            assert_same({k: v[i] for k, v in obs.items()}, expected[0])
            assert reward[i] == pytest.approx(expected[1], abs=1e-6)
            assert (terminated[i], truncated[i]) == (expected[2], expected[3])
            for key in expected[4]:
                assert_same(vinfo[key][i], expected[4][key])
    assert ended >= 3 and reached >= 3 and failed >= 3


def test_sb3_homing_adapter_matches_single_envs_until_the_first_episode_end(assert_same):
    n, seed, limit = 3, 5, 500
    overrides = {**HOMING, **VECTOR_HOMING}
    venv = TreeWorldSB3VecEnv(num_envs=n, max_episode_steps=limit, **overrides)
    singles = [gym.make(HOMING_ID, max_episode_steps=limit, **VECTOR_HOMING) for _ in range(n)]
    venv.seed(seed)
    obs = venv.reset()
    assert "goal" in obs
    infos = []
    for i, env in enumerate(singles):
        sobs, sinfo = env.reset(seed=seed + i)
        assert_same({k: v[i] for k, v in obs.items()}, sobs)
        infos.append(sinfo)
    rng = np.random.default_rng(1)
    config = singles[0].unwrapped.config
    goals_seen = 0
    for t in range(limit):
        info = {key: np.stack([inf[key] for inf in infos]) for key in ("goal_tree", "position", "tree_positions")}
        actions = homing_actions(info, n, rng, config)
        obs, rewards, dones, vinfos = venv.step(actions)
        outs = [env.step(actions[i]) for i, env in enumerate(singles)]
        infos = [out[4] for out in outs]
        goals_seen += sum(out[4]["goal_tree"] >= 0 for out in outs)
        for i, out in enumerate(outs):
            assert rewards[i] == pytest.approx(out[1], abs=1e-6)
            assert bool(dones[i]) == (out[2] or out[3])
            if dones[i]:
                assert_same(vinfos[i]["terminal_observation"], out[0])
                assert vinfos[i]["goals_reached"] == out[4]["goals_reached"]
                assert vinfos[i]["goals_failed"] == out[4]["goals_failed"]
            else:
                assert_same({k: v[i] for k, v in obs.items()}, out[0])
        if dones.any():
            break
    assert dones.any() and t > 50 and goals_seen > 0


# 7. Rewards -------------------------------------------------------------------------------------

def episode(env, agent, seed):
    """One full episode (TimeLimit 2000); returns the rewards, terminated flag and the infos."""
    obs, info = env.reset(seed=seed)
    if agent is not None:
        agent.reset(seed=seed)
    rewards, infos = [], [info]
    while True:
        obs, reward, terminated, truncated, info = env.step(STILL if agent is None else agent.act(obs))
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return np.array(rewards), terminated, infos


@pytest.mark.parametrize("env_id", ["treeworld/TreeWorld-v0", "treeworld/TreeWorldNoisy-v0"])
def test_task_reward_ranks_do_nothing_below_random_walker_below_forager(env_id):
    env = gym.make(env_id)
    config = env.unwrapped.config
    assert config.reward == "task"
    agents = {"nothing": lambda: None, "random": lambda: RandomWalker(config=config),
              "forager": lambda: Forager(vocabulary=env.unwrapped._batch.vocabulary, config=config)}
    returns = {}
    for name, make in agents.items():
        totals = []
        for seed in range(4):
            rewards, terminated, infos = episode(env, make(), seed)
            totals.append(rewards.sum())
            # task reward: +1 edible, -1 poisonous fruit, -death_penalty on the death step
            eaten = np.array([info["ate"] for info in infos[1:]])
            poisoned = np.array([info["poisoned"] for info in infos[1:]])
            expected = eaten * (1.0 - 2.0 * poisoned)
            if terminated:
                assert infos[-1]["health"] == 0.0
                expected[-1] -= config.death_penalty
            np.testing.assert_array_equal(rewards, expected)
        returns[name] = float(np.mean(totals))
    assert returns["nothing"] < returns["random"] < returns["forager"], returns
    assert returns["nothing"] == -config.death_penalty  # starves at step 1000, having eaten nothing


def test_health_reward_reproduces_the_v0_reward_and_the_dynamics(assert_same):
    task_env = gym.make("treeworld/TreeWorld-v0")
    health_env = gym.make("treeworld/TreeWorld-v0", reward="health")
    for seed in (0, 1):
        a = episode(task_env, RandomWalker(config=task_env.unwrapped.config), seed)
        b = episode(health_env, RandomWalker(config=health_env.unwrapped.config), seed)
        rewards, terminated, infos = b
        assert terminated and a[1] and len(a[0]) == len(rewards)
        for x, y in zip(a[2], b[2]):  # the reward does not change the world
            assert_same(x, y)
        health = np.array([info["health"] for info in infos], np.float32)
        change = np.diff(health)  # float32, as the env computes it
        np.testing.assert_array_equal(np.float32(rewards), change / np.float32(25.0))
        assert any(info["ate"] for info in infos[1:])  # fruit steps are covered too


def test_do_nothing_dies_with_the_death_penalty_on_the_last_step_only():
    env = gym.make("treeworld/TreeWorld-v0", max_health=50.0, death_penalty=3.5)
    rewards, terminated, infos = episode(env, None, seed=0)
    assert terminated and len(rewards) == 50
    assert (rewards[:-1] == 0.0).all() and rewards[-1] == -3.5
    homing = gym.make(HOMING_ID, max_health=20.0, living_cost=1.0, move_cost=0.0)
    rewards, terminated, _ = episode(homing, None, seed=0)
    assert terminated and len(rewards) == 20 and rewards[-1] == -10.0 and (rewards[:-1] == 0.0).all()


# 8. spl() ---------------------------------------------------------------------------------------

def test_spl_on_known_values_and_bad_arguments():
    assert spl([True, False, True], [10.0, 5.0, 4.0], [10.0, 7.0, 8.0]) == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert spl([1], [10.0], [5.0]) == 1.0  # a path shorter than l counts as l
    assert spl(np.array([True, True]), np.array([3.0, 6.0]), np.array([6.0, 6.0])) == pytest.approx(0.75)
    assert spl([False] * 3, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert isinstance(spl([1], [2.0], [3.0]), float)
    assert math.isnan(spl([], [], []))
    with pytest.raises(ValueError, match="reached, shortest, path.*2, 1, 2"):
        spl([True, True], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="reached, shortest, path"):
        spl([True], [1.0], [])
