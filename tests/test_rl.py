"""RL with the TEM memory in the loop: features, the VecEnv wrapper, models, saving, bad input."""
import math

import numpy as np
import pytest
import torch

from treeworld.agents import rl
from treeworld.agents.memory_features import TREE_FIELDS, MemoryReader, feature_names, memory_features
from treeworld.agents.sb3_agent import load_policy, reader_path
from treeworld.agents.sb3_features import MEMORY_KEY, TEMFeatures, TreeWorldExtractor
from treeworld.agents.tem import TEMAgent
from treeworld.config import WorldConfig
from treeworld.envs import TASKS, TreeWorldSB3VecEnv

torch.set_num_threads(1)
# small dense worlds, short episodes: trees are seen, eaten and episodes end within a few dozen steps
SMALL = dict(num_trees=12, arena_radius=60.0, name_pool=12)


def world(task="noisy", **overrides):
    return WorldConfig(**{**TASKS[task], **SMALL, **overrides})


def actions(rng, n, eat_every=3):
    a = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    a[:, 2] = np.where(rng.integers(0, eat_every, n) == 0, 1.0, -1.0)
    return a


def wrapped(config, n, seed=0, steps=40):
    venv = TreeWorldSB3VecEnv(n, config, max_episode_steps=steps)
    venv.seed(seed)
    return TEMFeatures(venv, MemoryReader.for_config(config, n))


def reference_features(agent: TEMAgent, perception, edible: int, poison: int) -> np.ndarray:
    """The tree entries computed slot by slot from the agent's state, without memory_features."""
    planner = agent.planner.config
    scale = agent.config["sight_range"]
    trees, valid, _, _, expected = agent.remembered_trees()
    rows = []
    for b in range(agent.num_agents):
        me = agent.position()[b].double()
        entries = {"good": [], "bad": []}
        for s in torch.nonzero(valid[b]).flatten().tolist():
            mean, std = float(agent.tree_valence[b, s]), float(agent.tree_valence_std[b, s])
            offset = (trees[b, s].double() - me) / scale
            distance = float(offset.norm())
            known = std <= planner.known_std
            poisonous = known and mean < -planner.poison_threshold
            fields = [float(offset[0]), float(offset[1]), distance, mean, std,
                      float(expected[b, s]) / planner.max_fruit,
                      float(agent.steps[b] - agent.landmarks.last_seen[b, s]) / planner.regrow_every, 1.0]
            if poisonous:
                entries["bad"].append((distance, fields))
            else:
                value = (1 + mean) / 2 * float(expected[b, s]) * (1.0 if known and mean > 0 else planner.unknown_discount)
                entries["good"].append(((-value / (distance * scale + planner.distance_offset), distance), fields))
        good = [f for _, f in sorted(entries["good"], key=lambda e: e[0])][:edible]
        bad = [f for _, f in sorted(entries["bad"], key=lambda e: e[0])][:poison]
        pad = lambda x, k: x + [[0.0] * len(TREE_FIELDS)] * (k - len(x))  # noqa: E731
        rows.append(np.concatenate([np.ravel(pad(good, edible)), np.ravel(pad(bad, poison)),
                                    [float(agent.sigma()[b]) / scale]]))
    return np.array(rows)


def test_the_wrappers_features_are_the_tem_agents_own_readouts():
    config = world()
    env = wrapped(config, 3)
    agent = TEMAgent.for_config(config, 3, consolidate_every=0, valence_sharing="batch")  # the same agent, by hand
    rng = np.random.default_rng(0)
    observations = env.reset()
    agent.reset()
    perception = agent.perceive({k: v for k, v in observations.items() if k != MEMORY_KEY})
    entries = len(feature_names(4, 2, False)) - 4  # trees and sigma; sight features follow
    checked = 0
    for step in range(60):
        mine = memory_features(agent, perception).numpy()
        np.testing.assert_array_equal(observations[MEMORY_KEY], mine)
        np.testing.assert_allclose(mine[:, :entries], reference_features(agent, perception, 4, 2), atol=1e-5)
        checked += int(mine[:, 7].sum())  # present edible0 entries
        sight = mine[:, entries:]  # seen, valence, valence_std, fruit: all 0 with nothing in sight
        np.testing.assert_array_equal(sight[:, 0], perception.seen.numpy())
        assert (sight[~perception.seen.numpy()] == 0).all()
        a = actions(rng, 3)
        agent.finish_step(perception, torch.as_tensor(a[:, 2] > 0))
        observations, _, dones, infos = env.step(a)
        if dones.any():
            ended = np.flatnonzero(dones).tolist()
            last = {k: v.copy() for k, v in observations.items() if k != MEMORY_KEY}
            for i in ended:
                for k in last:
                    last[k][i] = infos[i]["terminal_observation"][k]
            agent.end_episodes(last, ended)
        perception = agent.perceive({k: v for k, v in observations.items() if k != MEMORY_KEY})
    assert checked > 20  # remembered trees were compared, not only empty entries
    assert int(agent.readouts.eats[0]) > 0  # bites taught the shared valence readout


def test_memory_rows_start_afresh_where_episodes_do_and_never_mix_envs():
    config = world(motion_noise=0.0)
    env = wrapped(config, 2, seed=3, steps=25)
    alone = wrapped(config, 1, seed=3, steps=25)  # env 0 of the pair, on its own
    rng = np.random.default_rng(1)
    env.reset(), alone.reset()
    for step in range(60):
        a = actions(rng, 2, eat_every=10 ** 9)  # no bites: the valence readout stays untrained
        _, _, dones, infos = env.step(a)
        alone.step(a[:1])
        memory, single = env.reader.agent.memory, alone.reader.agent.memory
        assert torch.equal(memory.valid[0], single.valid[0]) and torch.equal(memory.codes[0], single.codes[0])
        if dones.any():
            assert (step + 1) % 25 == 0 and dones.all()
            for info in infos:
                assert info["terminal_observation"][MEMORY_KEY].shape == (env.reader.size,)
            # after the reset only the first observation of the new episode is in memory
            assert int(env.reader.agent.steps.max()) == 0
            assert int(memory.valid.sum(-1).max()) <= 1
    assert int(env.reader.agent.memory.valid.sum()) > 2


def test_the_last_bite_of_an_episode_teaches_the_shared_readout_as_a_terminal_perceive_does():
    config = world(num_trees=30, name_pool=30, arena_radius=30.0, start_radius=15.0, tree_spread=15.0,
                   poison_probability=0.5)
    B = 4
    env = wrapped(config, B, steps=6)
    by_hand = MemoryReader.for_config(config, B)  # takes in every terminal observation, then resets
    strip = lambda obs: {k: v for k, v in obs.items() if k != MEMORY_KEY}  # noqa: E731
    by_hand.observe(strip(env.reset()))
    rng = np.random.default_rng(0)
    last_bites = 0
    for step in range(60):
        a = rng.uniform(-0.2, 0.2, (B, 3)).astype(np.float32)
        a[:, 2] = 1.0  # always bite
        by_hand.acted(a)
        observations, _, dones, infos = env.step(a)
        ended = np.flatnonzero(dones).tolist()
        if ended:
            last = strip(observations)
            for i in ended:
                last = {k: v.copy() for k, v in last.items()}
                for k, v in infos[i]["terminal_observation"].items():
                    if k != MEMORY_KEY:
                        last[k][i] = v
            before = int(by_hand.agent.readouts.eats.sum())
            by_hand.observe(last)  # the next-step autoreset's way: a full perceive of the terminal observations
            last_bites += int(by_hand.agent.readouts.eats.sum()) - before
            by_hand.agent.finish_step(by_hand.perception, torch.zeros(B, dtype=torch.bool))
            by_hand.perception = None
            by_hand.reset(ended)
        by_hand.observe(strip(observations))
    assert last_bites > 0  # some episodes ended on a bite whose outcome only the terminal observation shows
    mine, theirs = env.reader.agent.readouts, by_hand.agent.readouts
    assert torch.equal(mine.eats, theirs.eats)
    torch.testing.assert_close(mine.weight_mean, theirs.weight_mean, rtol=0, atol=1e-9)


def test_the_wrapped_env_keeps_its_spaces_like_check_env():
    for task in ("noisy", "homing"):
        config = world(task, explore_steps=10) if task == "homing" else world(task)
        env = wrapped(config, 2, steps=15)
        space = env.observation_space
        assert space[MEMORY_KEY].shape == (len(feature_names(4, 2, task == "homing")),)
        observations = env.reset()
        rng = np.random.default_rng(2)
        for step in range(20):
            assert set(observations) == set(space.spaces)
            for key, value in observations.items():
                assert value.dtype == np.float32 and value.shape == (2,) + space[key].shape, key
                assert all(space[key].contains(row) for row in value), key
            observations, rewards, dones, infos = env.step(actions(rng, 2))
            assert rewards.shape == (2,) and dones.shape == (2,) and len(infos) == 2
            for i in np.flatnonzero(dones):
                assert space.contains(infos[i]["terminal_observation"])
                figures = rl.episode_figures(infos[i])
                assert figures["length"] == 15 and figures["survived"] == 1.0
                assert (task == "homing") != math.isnan(figures["spl"]) or infos[i].get("goals_reached", 0) == 0


def test_the_extractor_projects_percepts_and_the_memory_separately():
    env = wrapped(world("homing"), 2)
    extractor = TreeWorldExtractor(env.observation_space, percept_features=8, memory_features=16)
    observations = {k: torch.as_tensor(v) for k, v in env.reset().items()}
    body = sum(int(np.prod(env.observation_space[k].shape)) for k in ("heading", "health", "motion", "sight_distance"))
    assert extractor.features_dim == 3 * 8 + body + 16
    assert extractor(observations).shape == (2, extractor.features_dim)
    assert set(extractor.projections) == {"goal", "sight", "smell"}


@pytest.mark.parametrize("algo,tem", [("ppo", True), ("sac", False), ("recurrent_ppo", True)])
def test_a_tiny_training_saves_a_policy_that_acts_identically_after_loading(tmp_path, algo, tem):
    config = world()
    reader = MemoryReader.for_config(config, 2) if tem else None
    env = rl.make_env(config, 2, 0, reader=reader, max_episode_steps=30)
    small = dict(n_steps=16, batch_size=32, n_epochs=1) if algo != "sac" else dict(learning_starts=0, buffer_size=200)
    model = rl.make_model(algo, env, 0, **small)
    model.learn(64)
    path = tmp_path / "policy.zip"
    model.save(path)
    if tem:
        reader.save(reader_path(path))
    loaded = load_policy(path, env.unwrapped.observation_space, env.action_space, 2)
    assert (loaded.reader is not None) == tem
    # a fresh env; the loaded policy reads the same raw observations and keeps its own memory
    fresh_reader = MemoryReader.for_config(config, 2) if tem else None
    if tem:
        fresh_reader.learn_from(reader)
    fresh = rl.make_env(config, 2, 5, reader=fresh_reader, max_episode_steps=30)
    observations = fresh.reset()
    loaded.reset()
    state, starts = None, np.ones(2, dtype=bool)
    for step in range(40):
        mine, state = model.predict(observations, state=state, episode_start=starts, deterministic=True)
        theirs = loaded.act({k: v for k, v in observations.items() if k != MEMORY_KEY})
        np.testing.assert_array_equal(mine, theirs)
        observations, _, starts, _ = fresh.step(mine)
        if starts.any():
            loaded.reset(np.flatnonzero(starts).tolist())


def test_rollout_and_held_out_evaluation_use_validation_worlds():
    config = world()
    env = rl.make_env(config, 2, 0, validation=True, max_episode_steps=12)
    model = rl.make_model("ppo", rl.make_env(config, 2, 0, max_episode_steps=12), 0, n_steps=8, batch_size=16)
    figures = rl.rollout(model, env, episodes_per_env=2)
    assert figures["length"] == [12.0] * 4 and env.venv.batch.world_seeds == [9000, 9001]
    training = rl.make_env(config, 2, 0, max_episode_steps=12)
    training.reset()
    assert all(0 <= s < 9000 for s in training.venv.batch.world_seeds)
    results = []
    model.learn(48, callback=rl.HeldOutEvaluation(env, 24, sink=lambda t, r: results.append((t, r))))
    assert [t for t, _ in results] == [24, 48] and results[-1][1]["length"] == 12.0
    again = rl.make_env(config, 2, 0, validation=True, max_episode_steps=12)
    again.seed(0)
    assert rl.summary(rl.rollout(model, again)) == results[-1][1]  # checks are reproducible
    with pytest.raises(ValueError, match="^seed: validation layouts 9999 .. 10000 reach the evaluation seeds"):
        rl.make_env(config, 2, 999, validation=True)


def test_bad_input_names_the_argument(tmp_path):
    config = world()
    with pytest.raises(ValueError, match="^algo: expected one of ppo, sac, recurrent_ppo, got 'dqn'"):
        rl.make_model("dqn", rl.make_env(config, 1, 0), 0)
    with pytest.raises(ValueError, match=r"^reader: expected 2 rows \(venv.num_envs\), got 3"):
        TEMFeatures(TreeWorldSB3VecEnv(2, config), MemoryReader.for_config(config, 3))
    with pytest.raises(ValueError, match="^reader: goal features True but the env's observations lack a goal"):
        TEMFeatures(TreeWorldSB3VecEnv(1, config), MemoryReader.for_config(world("homing"), 1))
    with pytest.raises(ValueError, match=r"^world_seed_range: expected None or \(low, high\)"):
        TreeWorldSB3VecEnv(1, config, world_seed_range=(5, 5))
    reader = MemoryReader.for_config(config, 2)
    with pytest.raises(RuntimeError, match="acted"):
        reader.acted(np.zeros((2, 3), np.float32))
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="^path: .*junk.pt' is not a readable MemoryReader file"):
        MemoryReader.load(tmp_path / "junk.pt", 2)
    reader.save(tmp_path / "reader.pt")
    again = MemoryReader.load(tmp_path / "reader.pt", 4)
    assert again.num_envs == 4 and again.size == reader.size
    assert all(torch.equal(a, b) for a, b in zip(reader.knowledge().values(), again.knowledge().values())
               if isinstance(a, torch.Tensor))
    # a policy trained on the homing world's observations is refused by the forage world
    env = rl.make_env(world("homing"), 1, 0, max_episode_steps=10)
    model = rl.make_model("ppo", env, 0, n_steps=8, batch_size=8)
    model.save(tmp_path / "homing.zip")
    plain = rl.make_env(config, 1, 0)
    with pytest.raises(ValueError, match="^agent: .*homing.zip' was trained on the observation space"):
        load_policy(tmp_path / "homing.zip", plain.observation_space, plain.action_space, 1)
