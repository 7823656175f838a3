"""The TEM agent composed (agents/tem.py): runs in the vector envs, batch = singles, never eats a
kind learned poisonous, save/load round trip, reset of rows."""
import copy

import numpy as np
import pytest
import torch

import gymnasium as gym

import treeworld.envs  # noqa: F401  (registers the ids)
from treeworld.agents.protocol import BatchAgent
from treeworld.agents.planner import EXPLORE, HOMING, RELOCALIZE
from treeworld.agents.tem import TEMAgent
from treeworld.agents.valence import ValenceReadout
from treeworld.config import WorldConfig

torch.set_num_threads(1)
P = 384


def _run(env_id, steps, seed=0, agent=None, **env_kwargs):
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    agent = TEMAgent(2, consolidate_every=100) if agent is None else agent
    agent.reset(seed=seed)
    observations, _ = envs.reset(seed=seed)
    restart = np.zeros(2, dtype=bool)
    agent.modes = []
    for _ in range(steps):
        actions = agent.act(observations)
        assert actions.shape == (2, 3) and actions.dtype == np.float32
        assert envs.single_action_space.contains(actions[0]) and envs.single_action_space.contains(actions[1])
        agent.modes.append(agent.last_mode.numpy().copy())
        observations, _, terminated, truncated, _ = envs.step(actions)
        if restart.any():
            agent.reset(np.flatnonzero(restart).tolist())
        restart = terminated | truncated
    envs.close()
    return agent


@pytest.mark.parametrize("env_id,kwargs", [("treeworld/TreeWorld-v0", {}), ("treeworld/TreeWorldNoisy-v0", {}),
                                           ("treeworld/TreeWorldHoming-v0", {"explore_steps": 50})])
def test_runs_in_vector_envs(env_id, kwargs):
    agent = _run(env_id, 300, **kwargs)
    assert isinstance(agent, BatchAgent)
    assert bool(agent.memory.valid.any())
    assert torch.isfinite(agent.code).all() and torch.isfinite(agent.variance).all()
    overlays = agent.overlays
    assert isinstance(overlays, list) and overlays
    if "Homing" in env_id:  # a goal is set after 50 steps; the agent recalls its place and heads there
        assert (np.array(agent.modes) == HOMING).any()
    # the caches equal what they stand for: decoded slot codes, the readout on slot percepts
    # (a tasted tree's own outcome, std 0, on tasted slots)
    valid = agent.memory.valid
    decoded = agent.metric.decode(agent.memory.codes[valid])[1]
    torch.testing.assert_close(agent.landmarks.position[valid], decoded, rtol=0, atol=1e-3)
    agent.valence_refreshed.fill_(-1)  # force a full refresh on the next act
    agent.clock.zero_()
    agent._refresh_valence(torch.full((2,), -1))
    for row in range(2):  # each row's slots by its own readout
        percepts = agent.memory.percepts[row][valid[row]]
        fresh = agent.readouts.predict(percepts, torch.full(percepts.shape[:1], row))
        tasted = agent.tasted[row][valid[row]]
        assert torch.equal(agent.tree_valence[row][valid[row]], torch.where(tasted != 0, tasted, fresh.mean))
        assert torch.equal(agent.tree_valence_std[row][valid[row]], fresh.std.masked_fill(tasted != 0, 0.0))


def test_recall_here_after_a_step_is_the_memory_at_the_belief_moved_by_its_odometry():
    agent = _run("treeworld/TreeWorldNoisy-v0", 150)
    valid = agent.memory.valid
    assert bool(valid.any(1).all())  # every row remembers a tree
    slot = valid.long().argmax(1)  # a remembered tree per row
    rows = torch.arange(2)
    code = agent.code.clone()
    towards = (agent.landmarks.position[rows, slot] - agent.position()).numpy()  # a step onto that tree
    percept, confidence = agent.recall_here(towards)
    torch.testing.assert_close(percept, agent.memory.percepts[rows, slot])  # its own place: that entry
    assert torch.all(confidence > 0.99)
    assert torch.equal(agent.code, code)  # nothing moved
    here = agent.recall_here(np.zeros((2, 2), np.float32))
    assert all(torch.equal(a, b) for a, b in zip(here, agent.recall_here()))
    with pytest.raises(TypeError, match="^motion: expected"):
        agent.recall_here([[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="^motion: expected shape"):
        agent.recall_here(np.zeros((3, 2), np.float32))


def _obs(B, rng, sight=None, distance=0.0, goal=False):
    if sight is None:
        sight = np.zeros((B, P), np.float32)
    heading = rng.normal(size=(B, 2)).astype(np.float32)
    heading /= np.linalg.norm(heading, axis=1, keepdims=True)
    obs = {"smell": np.zeros((B, P), np.float32), "sight": np.asarray(sight, np.float32),
           "sight_distance": np.full((B, 1), distance, np.float32),
           "motion": rng.uniform(-3, 3, size=(B, 2)).astype(np.float32), "heading": heading,
           "health": np.full((B, 1), 0.9, np.float32)}
    if goal:
        obs["goal"] = np.zeros((B, P), np.float32)
    return obs


def _percept(rng):
    v = rng.normal(size=P).astype(np.float32)
    return v / np.linalg.norm(v)


def test_batch_equals_single_agents():
    rng = np.random.default_rng(0)
    trees = [_percept(rng) for _ in range(4)]
    batch = TEMAgent(2, planner={"explore_jitter": 0.0}, consolidate_every=20)
    singles = [TEMAgent(1, planner={"explore_jitter": 0.0}, consolidate_every=20) for _ in range(2)]
    batch.reset(seed=3)
    for i, s in enumerate(singles):
        s.reset(seed=3 + i)
    for t in range(60):
        sight = np.stack([trees[(t // 7 + row) % 4] for row in range(2)])
        seen = (t % 3) != 0
        obs = _obs(2, rng, sight * seen, 0.3 if seen else 0.0)
        out = batch.act(obs)
        for row, s in enumerate(singles):
            one = s.act({k: v[row:row + 1] for k, v in obs.items()})
            np.testing.assert_allclose(out[row], one[0], atol=1e-4)


def test_batch_equals_single_agents_as_they_learn_from_their_bites():
    # trees in reach, health jumping up or down after the bites: every row learns valence, each
    # from its own bites only (one readout per row), so the batch still equals its rows alone
    rng = np.random.default_rng(6)
    trees = [_percept(rng) for _ in range(3)]
    batch = TEMAgent(2, planner={"explore_jitter": 0.0})
    singles = [TEMAgent(1, planner={"explore_jitter": 0.0}) for _ in range(2)]
    shared = TEMAgent(2, planner={"explore_jitter": 0.0}, valence_sharing="batch")
    for agent in (batch, shared):
        agent.reset(seed=3)
    for i, s in enumerate(singles):
        s.reset(seed=3 + i)
    health = np.full((2, 1), 0.6, np.float32)
    shared_learned = np.zeros(2, int)  # bites of the shared agent followed by a health jump, per row
    for t in range(40):
        obs = _obs(2, rng, np.stack([trees[(t // 5 + row) % 3] for row in range(2)]), 0.05)
        obs["health"] = health.copy()
        out = batch.act(obs)
        shared_bites = shared.act(obs)[:, 2] > 0
        for row, s in enumerate(singles):
            np.testing.assert_allclose(out[row], s.act({k: v[row:row + 1] for k, v in obs.items()})[0], atol=1e-4)
            # the remembered trees' valence cache too: refreshed when the row's own readout learned
            torch.testing.assert_close(batch.tree_valence[row], s.tree_valence[0], rtol=0, atol=1e-6)
        jump = np.where(out[:, 2:] > 0, rng.choice([-0.025, 0.025], size=(2, 1)), 0.0).astype(np.float32)
        jump[0] *= t < 6  # row 0's readout stops learning early, row 1's goes on
        health += jump
        shared_learned += shared_bites & (jump[:, 0] != 0) & (t < 39)  # learned on the next step's health
    eats = batch.readouts.eats.tolist()
    assert min(eats) > 0 and eats == [int(s.readouts.eats[0]) for s in singles]
    for row, s in enumerate(singles):
        torch.testing.assert_close(batch.readouts.covariance()[row], s.readouts.covariance()[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(batch.readouts.weight_mean[row], s.readouts.weight_mean[0], rtol=0, atol=1e-12)
    assert shared.readouts.count == 1 and shared_learned.min() > 0  # one readout learned from both rows' bites
    assert int(shared.readouts.eats[0]) == shared_learned.sum()


def test_for_config_takes_the_worlds_constants_and_planner_overrides_win():
    config = WorldConfig(regrow_every=20, max_fruit=2, max_step=3.0, eat_radius=6.0, arena_radius=None)
    planner = TEMAgent.for_config(config, 1, planner={"max_step": 4.0}).planner.config
    assert (planner.regrow_every, planner.max_fruit, planner.initial_fruit) == (20, 2, 1.0)
    assert (planner.max_step, planner.eat_radius, planner.arena_radius) == (4.0, 6.0, None)
    assert TEMAgent.for_config(WorldConfig()).planner.config == TEMAgent().planner.config  # the defaults agree


def test_valence_sharing_is_checked():
    with pytest.raises(ValueError, match="valence_sharing: expected one of"):
        TEMAgent(2, valence_sharing="world")


def test_never_eats_a_kind_learned_poisonous():
    rng = np.random.default_rng(1)
    poison = _percept(rng)
    agent = TEMAgent(2)
    agent.reset(seed=0)
    # an agent that has looked around (its readout centres percepts on what it has seen)
    looks = torch.as_tensor(np.stack([_percept(rng) for _ in range(50)]))
    agent.readouts.adapt(looks.repeat(2, 1), torch.arange(2).repeat_interleave(len(looks)))
    # before learning: an unknown kind in reach at good health is tried
    first = agent.act(_obs(2, rng, np.stack([poison, poison]), 0.05))
    assert (first[:, 2] > 0).all()
    # the bite is poison: health drops by 25 / 1000 -> learned from the health change
    obs = _obs(2, rng, np.stack([poison, poison]), 0.05)
    obs["health"] = np.full((2, 1), 0.9 - 0.025, np.float32)
    agent.act(obs)
    assert agent.readouts.eats.tolist() == [1, 1]  # each row learned from its own bite
    for row in range(2):
        mine = torch.full((4,), row)
        agent.readouts.update(torch.as_tensor(np.stack([poison] * 4)), -torch.ones(4), mine)
        assert float(agent.readouts.predict(torch.as_tensor(poison)[None], mine[:1]).mean) < -0.3
    for _ in range(30):
        noisy = poison + rng.normal(scale=0.02, size=(2, P)).astype(np.float32)
        out = agent.act(_obs(2, rng, noisy, rng.uniform(0.01, 0.09)))
        assert (out[:, 2] <= 0).all()


def test_a_tree_that_poisoned_it_is_never_bitten_again_whatever_the_readout_says():
    # the readout alone can leave a bitten poisonous tree unknown (e.g. its look changes with its
    # fruit count and the adaptation centre); the tree's own outcome, kept in its memory slot, decides
    rng = np.random.default_rng(7)
    tree = _percept(rng)
    agent = TEMAgent(1)
    agent.reset(seed=0)
    assert agent.act(_obs(1, rng, tree[None], 0.05))[0, 2] > 0  # unknown kind, affordable: tried
    obs = _obs(1, rng, tree[None], 0.05)
    obs["health"] = np.full((1, 1), 0.9 - 0.025, np.float32)  # it was poison
    agent.act(obs)
    slot = int(agent.memory.valid[0].nonzero()[0, 0])
    assert float(agent.tasted[0, slot]) == -1.0
    assert float(agent.tree_valence[0, slot]) == -1.0 and float(agent.tree_valence_std[0, slot]) == 0.0
    fresh = ValenceReadout(P)
    agent.readouts.load_state_dict(fresh.state_dict())  # the readout forgets: only the tree's own taste is left
    for _ in range(20):
        look = tree + rng.normal(scale=0.02, size=P).astype(np.float32)
        assert agent.act(_obs(1, rng, look[None], 0.05))[0, 2] <= 0
    agent.reset()
    assert not bool(agent.tasted.any())  # a new episode, new trees


def test_learns_edible_from_health_jump():
    rng = np.random.default_rng(2)
    fruit = _percept(rng)
    agent = TEMAgent(1)
    agent.reset(seed=0)
    assert agent.act(_obs(1, rng, fruit[None], 0.05))[0, 2] > 0
    obs = _obs(1, rng, fruit[None], 0.05)
    obs["health"] = np.full((1, 1), 0.9 + 0.025, np.float32)
    agent.act(obs)
    assert int(agent.readouts.eats[0]) == 1
    assert float(agent.readouts.predict(torch.as_tensor(fruit)[None]).mean) > 0


def test_save_load_round_trip(tmp_path):
    agent = _run("treeworld/TreeWorldHoming-v0", 120, explore_steps=50,
                 agent=TEMAgent(2, consolidate_every=50, learned_pi=True))
    agent.readouts.update(torch.as_tensor(_percept(np.random.default_rng(5)))[None], torch.ones(1), torch.ones(1, dtype=torch.long))
    path = tmp_path / "tem.pt"
    agent.save(path)
    loaded = TEMAgent.load(path)
    assert loaded.memory.map_ready is not None
    for key, value in agent.state_dict().items():
        other = loaded.state_dict()[key]
        if not isinstance(value, torch.Tensor):
            assert value == other, key
            continue
        assert torch.equal(torch.nan_to_num(value.float(), nan=-7.0), torch.nan_to_num(other.float(), nan=-7.0)), key
    rng = np.random.default_rng(3)
    percept = agent.memory.percepts[0, agent.memory.valid[0]][0].numpy()
    for t in range(15):
        obs = _obs(2, rng, np.stack([percept, np.zeros(P, np.float32)]), 0.2 if t % 2 else 0.0, goal=True)
        obs["goal"][0] = percept
        np.testing.assert_array_equal(agent.act(obs), loaded.act(obs))


def test_a_loaded_explorer_draws_the_same_overlays(tmp_path):
    agent = _run("treeworld/TreeWorld-v0", 5, agent=TEMAgent(2, consolidate_every=0))
    assert int(agent.last_mode[0]) == EXPLORE and bool(torch.isfinite(agent.frontier[0]).all())
    agent.save(tmp_path / "tem.pt")
    assert repr(TEMAgent.load(tmp_path / "tem.pt").overlays) == repr(agent.overlays)  # the frontier target too


def test_corrupted_or_foreign_file(tmp_path):
    agent = TEMAgent(1, capacity=16)
    path = tmp_path / "tem.pt"
    agent.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="TEMAgent"):
        TEMAgent.load(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="TEMAgent"):
        TEMAgent.load(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="format"):
        TEMAgent.load(other)
    reshaped = tmp_path / "reshaped.pt"
    blob = torch.load(path, weights_only=True)
    blob["config"]["capacity"] = 32
    torch.save(blob, reshaped)
    with pytest.raises(ValueError, match="does not fit"):
        TEMAgent.load(reshaped)


def test_reset_rows_only():
    rng = np.random.default_rng(4)
    trees = [_percept(rng) for _ in range(2)]
    agent = TEMAgent(2)
    agent.reset(seed=0)
    for t in range(20):
        agent.act(_obs(2, rng, np.stack(trees), 0.4))
    agent.readouts.update(torch.as_tensor(trees[0])[None], torch.ones(1), torch.ones(1, dtype=torch.long))
    before = {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}
    agent.reset([1])
    after = agent.state_dict()
    assert torch.equal(after["code"][0], before["code"][0]) and after["variance"][0] == before["variance"][0]
    assert torch.equal(after["landmarks.memory.valid"][0], before["landmarks.memory.valid"][0])
    assert not after["landmarks.memory.valid"][1].any()
    assert int(after["steps"][0]) == 20 and int(after["steps"][1]) == 0
    assert float(after["variance"][1]) == 0.0
    origin = agent.metric.encode(torch.zeros(1, 2))[0]
    assert torch.allclose(after["code"][1], origin)
    assert torch.equal(after["readouts.weight_factor"], before["readouts.weight_factor"])  # learned parts persist
    fresh = TEMAgent(2).state_dict()  # row 1's episode state is a new agent's, cache and map included
    knowledge = ("readouts.", "belief.integrator.", "landmarks.memory.percept_metric.", "valence_refreshed")
    for key, value in after.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2 and not key.startswith(knowledge):
            assert torch.equal(torch.nan_to_num(value[1].double(), nan=-7.0),
                               torch.nan_to_num(fresh[key][1].double(), nan=-7.0)), key
    assert not torch.equal(before["readouts.weight_factor"][0], before["readouts.weight_factor"][1])  # (row 1 learned)
    with pytest.raises(ValueError):
        agent.reset([2])


def test_a_tree_not_found_at_its_remembered_place_is_given_up_after_one_full_scan():
    rng = np.random.default_rng(4)
    fruit = _percept(rng)
    agent = TEMAgent(1, planner={"explore_jitter": 0.0, "hungry_health": 2000.0})  # hungry: any fruit is worth it
    agent.reset(seed=0)
    agent.readouts.adapt(torch.as_tensor(np.stack([_percept(rng) for _ in range(50)])))
    agent.readouts.update(torch.as_tensor(np.stack([fruit] * 4)), torch.ones(4))  # known edible
    heading, motion = np.array([[1.0, 0.0]], np.float32), np.zeros((1, 2), np.float32)
    seen_once = False
    scans, targets = [], []
    for _ in range(40):  # the tree is seen once, 50 units ahead, then never again (it is not there)
        obs = _obs(1, rng, fruit[None] if not seen_once else None, 0.5 if not seen_once else 0.0)
        obs.update(heading=heading, motion=motion, health=np.full((1, 1), 0.5, np.float32))
        seen_once = True
        action = agent.act(obs)
        motion = action[:, :2] * 5.0
        moved = np.linalg.norm(motion)
        heading = (motion / moved).astype(np.float32) if moved > 0 else heading
        scans.append(int(agent.scan_steps[0]))
        targets.append(int(agent.target[0]))
    assert targets[0] == 0 and max(scans) >= 8  # went there and turned a full circle
    assert float(agent.landmarks.fruit[0, 0]) == 0.0  # given up: counted bare ...
    assert targets[-1] == -1  # ... so the agent moved on


@pytest.mark.parametrize("distance, tracked", [(0.47, True), (0.3, False)])
def test_a_target_in_sight_is_tracked_by_its_distance_through_a_misrecognised_look(distance, tracked):
    # the target seen 50 units ahead; next step a look matching no slot (percept noise) at 47 units
    # is the target still (sight distance is exact, a step moves at most max_step plus noise); at
    # 30 units it is another tree
    rng = np.random.default_rng(8)
    agent = TEMAgent(1, planner={"explore_jitter": 0.0, "hungry_health": 2000.0})
    agent.reset(seed=0)
    heading = np.array([[1.0, 0.0]], np.float32)
    tree = _percept(rng)
    agent.readouts.update(torch.as_tensor(tree[None]), torch.ones(1))
    agent.act({**_obs(1, rng, tree[None], 0.5), "heading": heading, "motion": np.zeros((1, 2), np.float32)})
    assert int(agent.target[0]) == 0 and float(agent.target_range[0]) == pytest.approx(50.0)
    other = _obs(1, rng, _percept(rng)[None], distance)
    p = agent.perceive({**other, "heading": heading, "motion": np.array([[3.0, 0.0]], np.float32)})
    assert (int(p.sighted[0]) == 0) == tracked and int(p.sighted[0]) >= 0


@pytest.mark.parametrize("before, after, bare", [(0.99, 0.989, True), (1.0, 0.999, True), (0.99, 1.0, False),
                                                 (1.0, 1.0, False)])
def test_a_bite_that_found_no_fruit_marks_the_tree_bare_unless_health_was_clamped(before, after, bare):
    # the world clamps health at max_health: a bite that fed at 990 or 1000 leaves 1000; one that
    # found no fruit costs the living cost
    rng = np.random.default_rng(9)
    agent = TEMAgent(1)
    agent.reset(seed=0)
    tree = _percept(rng)[None]
    for health, eat in ((before, True), (after, False)):
        p = agent.perceive({**_obs(1, rng, tree, 0.05), "health": np.full((1, 1), health, np.float32)})
        agent.finish_step(p, torch.tensor([eat]))
    assert int(agent.memory.valid.sum()) == 1
    assert (float(agent.landmarks.fruit[0, 0]) == 0.0) == bare


def test_a_tree_first_seen_is_expected_to_carry_the_episode_start_fruit_plus_the_regrowth_since():
    # never eaten from, a tree seen first at step t carries its start-of-episode fruit (uniform in
    # 0..max_fruit: initial_fruit on average) plus every regrowth tick since the episode began
    rng = np.random.default_rng(7)
    agent = TEMAgent(1)
    agent.reset(seed=0)
    config = agent.planner.config
    for step in range(2 * config.regrow_every + 10):
        seen = step == 2 * config.regrow_every + 5
        agent.act(_obs(1, rng, _percept(rng)[None] if seen else None, 0.5 if seen else 0.0))
    _, valid, fruit, last_seen, expected = agent.remembered_trees()
    slot = int(valid[0].nonzero()[0, 0])
    assert int(valid.sum()) == 1 and float(fruit[0, slot]) == config.initial_fruit and int(last_seen[0, slot]) == 0
    assert float(expected[0, slot]) == min(config.max_fruit, config.initial_fruit + 2)


def test_an_uncertain_agent_walks_back_to_a_precise_landmark_and_gives_it_up_if_not_found():
    # A tree seen once at the start (belief variance 0), then never again (it is not there). Sated,
    # with nothing worth a trip, the agent explores while its odometry noise (0.5 per step) grows its
    # belief std past relocalize_std; it then walks back to the tree to close a loop, turns a full
    # circle there without finding it, and does not seek it again.
    rng = np.random.default_rng(5)
    agent = TEMAgent(1, motion_noise=0.5, planner={"explore_jitter": 0.0})
    agent.reset(seed=0)
    heading, motion = np.array([[1.0, 0.0]], np.float32), np.zeros((1, 2), np.float32)
    modes, sigmas = [], []
    for step in range(240):
        first = step == 0
        obs = _obs(1, rng, _percept(rng)[None] if first else None, 0.1 if first else 0.0)
        obs.update(heading=heading, motion=motion, health=np.full((1, 1), 1.0, np.float32))
        action = agent.act(obs)
        motion = action[:, :2] * 5.0
        moved = np.linalg.norm(motion)
        heading = (motion / moved).astype(np.float32) if moved > 0 else heading
        modes.append(int(agent.last_mode[0]))
        sigmas.append(float(agent.sigma()[0]))
    relocalizing = [t for t, m in enumerate(modes) if m == RELOCALIZE]
    assert relocalizing and sigmas[relocalizing[0]] > agent.planner.config.relocalize_std
    assert int(agent.missed[0, 0]) > relocalizing[0]  # sought, scanned for, not found ...
    assert RELOCALIZE not in modes[int(agent.missed[0, 0]) + 1:]  # ... and not sought again
    assert bool(torch.isinf(agent._closure_std()[0, 0]))


def test_exploring_its_overlay_target_is_the_frontier_cell():
    from treeworld.agents.belief_overlays import TARGET_COLOR
    from treeworld.overlay import Point
    rng = np.random.default_rng(8)
    agent = TEMAgent(1)
    agent.reset(seed=0)
    for _ in range(3):  # nothing in sight: exploring
        agent.act(_obs(1, rng))
    frontier = agent.coverage.frontier(agent.position())[0]
    assert not bool(agent.coverage.viewed[0, (agent.coverage.centres - frontier.double()).norm(dim=-1).argmin()])
    dots = [o for o in agent.overlays if isinstance(o, Point) and o.color == TARGET_COLOR]
    assert len(dots) == 1
    np.testing.assert_allclose(dots[0].xy, frontier.numpy(), atol=1e-4)


@pytest.mark.parametrize("key, value, message", [
    ("sight", np.nan, "finite"), ("motion", np.inf, "finite"), ("heading", np.nan, "finite"),
    ("health", np.nan, "finite"), ("goal", np.nan, "finite"), ("sight_distance", -0.3, r"in \[0, 1\]"),
    ("sight_distance", 7.0, r"in \[0, 1\]"), ("health", 1.5, r"in \[0, 1\]")])
def test_a_bad_observation_is_named_and_changes_nothing(key, value, message):
    rng = np.random.default_rng(2)
    tree = _percept(rng)
    agent = TEMAgent(2)
    agent.reset(seed=0)
    health = np.full((2, 1), 0.6, np.float32)
    for t in range(6):  # a bite waiting to be learned from the next health
        obs = _obs(2, rng, np.stack([tree, tree]), 0.05, goal=True)
        obs["health"] = health
        agent.act(obs)
    before = copy.deepcopy(agent.state_dict())
    obs = _obs(2, rng, np.stack([tree, tree]), 0.05, goal=True)
    obs["health"] = health + 0.025
    obs[key][1, 0] = value
    with pytest.raises(ValueError, match=rf"^observations\['{key}'\]: expected .*{message}"):
        agent.act(obs)
    for name, value in agent.state_dict().items():
        if isinstance(value, torch.Tensor):
            value, value_before = (torch.nan_to_num(v.double(), nan=-7.0) for v in (value, before[name]))
            assert torch.equal(value, value_before), name
        else:
            assert value == before[name], name
    with pytest.raises(ValueError, match=r"^observations\['motion'\]: expected shape \(2, 2\)"):
        agent.act({**_obs(2, rng), "motion": np.zeros((2, 3), np.float32)})


def test_the_planner_reading_only_the_slots_in_use_acts_as_with_every_slot():
    envs = gym.make_vec("treeworld/TreeWorldNoisy-v0", num_envs=3, vectorization_mode="vector_entry_point")
    observations, _ = envs.reset(seed=5)
    agent = TEMAgent.for_config(envs.config, 3)
    agent.reset(seed=5)
    every = copy.deepcopy(agent)
    every.tree_slots = lambda sighted: every.memory.capacity  # the planner given all C slots
    for step in range(300):
        actions = agent.act(observations)
        np.testing.assert_array_equal(actions, every.act(observations), err_msg=f"step {step}")
        observations = envs.step(actions)[0]
    envs.close()
    used = agent.memory.used_slots
    assert 0 < used < agent.memory.capacity and not agent.memory.valid[:, used:].any()
    assert agent.memory.valid[:, used - 1].any()
    for part, whole in zip(agent.remembered_trees(used), agent.remembered_trees()):
        assert torch.equal(part, whole[:, :used])


def test_the_coverage_is_marked_by_act_and_left_by_perceive_alone():
    rng = np.random.default_rng(8)
    agent = TEMAgent(2)
    agent.reset(seed=0)
    observations = _obs(2, rng)
    agent.perceive(observations)  # a memory reader's step: no planner, no coverage
    assert not agent.coverage.viewed.any()
    agent.act(observations)
    assert agent.coverage.viewed.sum(1).min() > 1  # the cell it stands in and its sight cone
