"""Baseline agents: protocol conformance, seeding, percept decoding against ground truth (clean
and noisy), map accuracy, the forager beating the random walker and foraging in the noisy world."""
import gymnasium as gym
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import Agent, Forager, RandomWalker
from treeworld.agents.baselines import PerceptDecoder, SeenTree
from treeworld.config import WorldConfig
from treeworld.envs import NOISY
from treeworld.sensors import PerceptTables
from treeworld.vocabulary import Vocabulary

torch.set_num_threads(1)

STEPS = 600
SEEDS = (0, 1, 2)


def rollout(agent, seed, steps=STEPS, **overrides):
    """Run one seeded episode; returns the actions and the final info."""
    env = gym.make("treeworld/TreeWorld-v0", max_episode_steps=steps, **overrides)
    agent.reset(seed=seed)
    observation, info = env.reset(seed=seed)
    actions = []
    for _ in range(steps):
        action = agent.act(observation)
        actions.append(action)
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return np.array(actions), info


@pytest.mark.parametrize("make", [lambda: RandomWalker(seed=0), lambda: Forager(seed=0)], ids=["random", "forager"])
def test_protocol_and_actions(make):
    agent = make()
    assert isinstance(agent, Agent)
    actions, _ = rollout(agent, seed=0, steps=50)
    assert actions.shape == (50, 3) and actions.dtype == np.float32
    assert np.all(actions >= -1) and np.all(actions <= 1)


@pytest.mark.parametrize("cls", [RandomWalker, Forager])
def test_seeded_determinism(cls):
    first, _ = rollout(cls(), seed=5, steps=200)
    second, _ = rollout(cls(), seed=5, steps=200)
    np.testing.assert_array_equal(first, second)
    # The constructor seed is used at the first reset without one.
    a, b = cls(seed=3), cls(seed=3)
    a.reset(), b.reset()
    env = gym.make("treeworld/TreeWorld-v0")
    observation, _ = env.reset(seed=0)
    np.testing.assert_array_equal([a.act(observation) for _ in range(20)], [b.act(observation) for _ in range(20)])


def test_random_walker_is_random_and_persistent():
    agent = RandomWalker(seed=0, persistence=0.9)
    actions, _ = rollout(agent, seed=0, steps=300)
    headings = np.round(np.arctan2(actions[:, 1], actions[:, 0]), 6)
    turns = np.mean(headings[1:] != headings[:-1])
    assert 0.03 < turns < 0.2  # about 1 - persistence
    other, _ = rollout(RandomWalker(), seed=1, steps=300)
    assert not np.array_equal(actions, other)


def test_random_walker_eats_when_a_tree_is_near():
    agent = RandomWalker(seed=0)
    agent.reset()
    zeros = np.zeros(384, np.float32)
    obs = {"smell": zeros, "sight": zeros, "motion": np.zeros(2), "heading": np.array([1.0, 0.0]), "health": [1.0]}
    assert agent.act({**obs, "sight_distance": np.array([0.05])})[2] > 0
    assert agent.act({**obs, "sight_distance": np.array([0.5])})[2] <= 0
    assert agent.act({**obs, "sight_distance": np.array([0.0])})[2] <= 0  # nothing seen


def test_random_walker_clips_to_action_space():
    space = gym.spaces.Box(-0.5, 0.5, (3,), np.float32)
    actions, _ = rollout(RandomWalker(space, seed=0), seed=0, steps=30)
    assert np.all(np.abs(actions) <= 0.5)


def test_forager_decodes_sight_against_ground_truth():
    """Every sight percept along a forager's path decodes to the true kind, name and fruit count."""
    agent = Forager(seed=0)
    env = gym.make("treeworld/TreeWorld-v0")
    agent.reset(seed=4)
    observation, info = env.reset(seed=4)
    state = env.unwrapped.state
    vocabulary = Vocabulary.minilm()
    names = list(state.tree_name[0] - vocabulary.name_offset)
    checked = 0
    for _ in range(400):
        seen = agent.decoder.sight(observation["sight"])
        if seen is not None:
            i = names.index(seen.name)
            offset = info["tree_positions"][i] - info["position"]
            assert seen.kind == state.tree_kind[0, i]
            assert seen.fruit == info["tree_fruit"][i]
            assert seen.poisonous == info["tree_poisonous"][i]
            assert np.hypot(*offset) == pytest.approx(observation["sight_distance"][0] * 100, abs=1e-3)
            checked += 1
        else:
            assert observation["sight_distance"][0] == 0
        observation, _, _, _, info = env.step(agent.act(observation))
    assert checked > 100
    assert agent.decoder.sight(np.zeros(384, np.float32)) is None


def test_decoder_is_exact_on_every_kind_and_phrase():
    vocabulary = Vocabulary.minilm()
    decoder = PerceptDecoder(vocabulary)
    table = vocabulary.table
    for kind in range(vocabulary.num_kinds):
        for fruit in range(6):
            name = (7 * kind + fruit) % vocabulary.num_names
            percept = table[kind] + table[vocabulary.name_offset + name] + table[vocabulary.phrase_offset + fruit]
            seen = decoder.sight((percept / np.linalg.norm(percept)).astype(np.float32))
            assert seen == SeenTree(kind=kind, name=name, fruit=fruit, poisonous=kind >= 12)


def decode_sight(decoder, percepts):
    """(N, 3) decoded (kind, name, fruit) of (N, D) sight percepts."""
    return np.array([[seen.kind, seen.name, seen.fruit] for seen in map(decoder.sight, percepts)])


def test_nearest_sight_decode_equals_the_least_squares_decode_and_survives_noise():
    """Every possible sight percept decodes to its (kind, name, fruit), as least squares does on clean
    input; with the noisy world's percept noise the nearest-percept decode stays right (>= 99%)."""
    vocabulary, config = Vocabulary.minilm(), WorldConfig()
    decoder = PerceptDecoder(vocabulary, name_pool=config.name_pool)
    rows = np.asarray(PerceptTables.build(config, vocabulary).sight[:-1])  # (K * P * F, D), as the world sees them
    truth = np.stack(np.unravel_index(np.arange(len(rows)), (vocabulary.num_kinds, config.name_pool, 6)), axis=1)
    coefficients = decoder.coefficients(rows.T).T  # (K * P * F, V): the least-squares decode
    words = np.split(coefficients, [vocabulary.name_offset, vocabulary.phrase_offset], axis=1)  # kinds, names, phrases
    least_squares = np.stack([c.argmax(axis=1) for c in words], axis=1)
    np.testing.assert_array_equal(least_squares, truth)
    np.testing.assert_array_equal(decode_sight(decoder, rows), truth)
    noisy = rows + np.random.default_rng(0).normal(0.0, NOISY["percept_noise"], rows.shape).astype(np.float32)
    assert np.all(decode_sight(decoder, noisy) == truth, axis=1).mean() >= 0.99

    # Along a forager's path in the noisy world, against the ground truth.
    env = gym.make("treeworld/TreeWorldNoisy-v0")
    agent = Forager(vocabulary=env.unwrapped._batch.vocabulary, config=env.unwrapped.config, seed=0)
    agent.reset(seed=4)
    observation, info = env.reset(seed=4)
    state = env.unwrapped.state
    names = state.tree_name[0] - vocabulary.name_offset
    right = seen_steps = 0
    for _ in range(600):
        seen = agent.decoder.sight(observation["sight"])
        tree = int(env.unwrapped.state.sight_tree[0])
        assert (seen is None) == (tree < 0)
        if seen is not None:
            right += (seen.name == names[tree] and seen.kind == state.tree_kind[0, tree]
                      and seen.fruit == info["tree_fruit"][tree])
            seen_steps += 1
        observation, _, _, _, info = env.step(agent.act(observation))
    assert seen_steps > 100 and right >= 0.99 * seen_steps


def test_forager_maps_trees_by_smell():
    """The forager's smell map (relative to its start) matches the true tree positions."""
    agent = Forager(seed=0)
    env = gym.make("treeworld/TreeWorld-v0")
    agent.reset(seed=3)
    observation, info = env.reset(seed=3)
    start = info["position"].astype(np.float64)
    names = env.unwrapped.state.tree_name[0] - Vocabulary.minilm().name_offset
    for _ in range(200):
        observation, _, _, _, info = env.step(agent.act(observation))
    positions, located = agent.tree_map()
    assert located[names].sum() >= 20
    assert located.sum() == located[names].sum()  # no tree that is not there
    error = np.hypot(*(positions[names] + start - info["tree_positions"]).T)
    assert error[located[names]].max() < 1.0


def test_forager_beats_random_walker():
    walker = [rollout(RandomWalker(), seed)[1] for seed in SEEDS]
    forager = [rollout(Forager(), seed)[1] for seed in SEEDS]

    def mean(infos, key):
        return np.mean([float(info[key]) for info in infos])

    assert mean(forager, "fruit_eaten") > 5 * max(mean(walker, "fruit_eaten"), 1.0)
    assert mean(forager, "poison_eaten") <= mean(walker, "poison_eaten")
    assert mean(forager, "poison_eaten") == 0
    assert mean(forager, "health") > mean(walker, "health") + 200


def test_forager_takes_no_bite_with_a_poisonous_tree_nearer_than_its_target():
    # world seed 10: at step 1,113 a nightshade it had located stood 3.6 units away while it bit a
    # cherry seen at 8.8; the world feeds from the nearest tree with fruit, so it ate poison
    _, info = rollout(Forager(), seed=10, steps=1150)
    assert info["poison_eaten"] == 0 and info["fruit_eaten"] > 100


def test_forager_eats_only_edible_fruit_with_a_noisy_compass():
    _, info = rollout(Forager(), seed=0, steps=300, motion_noise=1.0)
    assert info["fruit_eaten"] > 5 and info["poison_eaten"] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_forager_forages_in_the_noisy_world(seed):
    """Sight alone maps the trees when percept noise drowns smell: the forager lives through a full
    episode, and every time it eats, the tree in sight is edible."""
    env = gym.make("treeworld/TreeWorldNoisy-v0")
    agent = Forager(vocabulary=env.unwrapped._batch.vocabulary, config=env.unwrapped.config)
    agent.reset(seed=seed)
    observation, info = env.reset(seed=seed)
    start = info["position"].astype(np.float64)
    for step in range(1, 2001):
        action = agent.act(observation)
        if action[2] > 0:
            tree = int(env.unwrapped.state.sight_tree[0])
            assert tree >= 0 and not info["tree_poisonous"][tree]
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert step == 2000 and truncated and not terminated
    assert info["fruit_eaten"] > 50 and info["poison_eaten"] <= 1
    positions, located = agent.tree_map()
    names = env.unwrapped.state.tree_name[0] - Vocabulary.minilm().name_offset
    error = np.hypot(*(positions[names] + start - info["tree_positions"]).T)[located[names]]
    assert located[names].sum() >= 10 and located.sum() == located[names].sum()  # placed by sight, none made up
    assert np.median(error) < 40  # the cone's lateral spread and tens of units of odometry drift


def test_bad_arguments():
    with pytest.raises(ValueError, match="persistence"):
        RandomWalker(persistence=1.5)
    with pytest.raises(TypeError, match="action_space"):
        RandomWalker(gym.spaces.Discrete(3))
    with pytest.raises(TypeError, match="seed"):
        Forager(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        RandomWalker(seed=-1)
    with pytest.raises(TypeError, match="config"):
        Forager(config={"num_trees": 3})
    with pytest.raises(TypeError, match="vocabulary"):
        Forager(vocabulary="minilm")
    with pytest.raises(ValueError, match="vocabulary: .*linearly independent"):
        Forager(config=WorldConfig(vocabulary="hashed", percept_dim=64))
    with pytest.raises(ValueError, match="vocabulary: expected 384-d"):
        Forager(vocabulary=Vocabulary.hashed(400))
    with pytest.raises(RuntimeError, match="reset"):
        Forager().act({})
    agent = Forager()
    agent.reset(seed=0)
    with pytest.raises(TypeError, match="observation"):
        agent.act([1, 2, 3])
    with pytest.raises(ValueError, match="observation: missing key 'motion'"):
        agent.act({"sight": np.zeros(384)})
    with pytest.raises(ValueError, match=r"observation\['sight'\]: expected shape \(384,\)"):
        agent.act({"motion": np.zeros(2), "sight": np.zeros(10)})
