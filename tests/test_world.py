"""World rules, sensors and vocabulary, checked on hand-built worlds and against brute force."""
import dataclasses
import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from treeworld import PerceptTables, Vocabulary, WorldConfig, build_world, observe, sample_world, stack, step
from treeworld import kernels
from treeworld.kernels import CompiledPhysics
from treeworld.vocabulary import KINDS, NAMES, WORDS

torch.set_num_threads(1)

APPLE, NIGHTSHADE = KINDS.index("apple"), KINDS.index("deadly nightshade")


def world(config=WorldConfig(), trees=(), agent=(0.0, 0.0), heading=(1.0, 0.0)):
    """A B = 1 world with ``trees`` = [(x, y, kind, fruit)] (or a sampled layout when empty)."""
    vocabulary = Vocabulary.for_config(config)
    if not trees:
        sampled = sample_world(config, vocabulary, np.random.default_rng(0), np.random.default_rng(1))
        trees = [(*p, k, f) for p, k, f in zip(sampled.tree_position[0], sampled.tree_kind[0], sampled.tree_fruit[0])]
    x, y, kinds, fruit = zip(*trees)
    names = vocabulary.name_offset + np.arange(len(trees))
    return config, vocabulary, build_world(config, vocabulary, np.stack([x, y], 1), kinds, names, fruit, agent, heading)


@functools.lru_cache
def compiled(config):
    return CompiledPhysics(config, PerceptTables.build(config, Vocabulary.for_config(config)))


class Compiled:
    """The numba kernels behind the reference's functional signatures (they update states in place)."""

    @staticmethod
    def step(config, state, action):
        return compiled(config).step(state.map(np.copy), np.ascontiguousarray(action, np.float32))

    @staticmethod
    def observe(config, tables, state):
        return compiled(config).observe(state)


@pytest.fixture(params=["reference", "compiled"])
def physics(request):
    """The world rules hold for both physics: the array-API reference and the compiled kernels."""
    return SimpleNamespace(step=step, observe=observe) if request.param == "reference" else Compiled


def act(dx=0.0, dy=0.0, eat=False):
    return np.array([[dx, dy, 1.0 if eat else -1.0]], np.float32)


def test_eating_needs_fruit_an_eat_action_and_reach(physics):
    config, _, state = world(trees=[(3.0, 0.0, APPLE, 0), (9.0, 0.0, APPLE, 2), (30.0, 0.0, APPLE, 5)])
    after, events = physics.step(config, state, act(eat=False))
    assert not events.ate[0] and after.tree_fruit[0].tolist() == [0, 2, 5]
    after, events = physics.step(config, state, act(eat=True))  # nearest tree with fruit in reach is the second
    assert events.ate[0] and not events.poisoned[0]
    assert after.tree_fruit[0].tolist() == [0, 1, 5]
    assert after.health[0] == pytest.approx(config.max_health)  # +25 clamped at max after the living cost
    assert after.fruit_eaten[0] == 1
    config, _, far = world(trees=[(10.5, 0.0, APPLE, 3)])
    _, events = physics.step(config, far, act(eat=True))
    assert not events.ate[0]
    assert events.health_change[0] == pytest.approx(-config.living_cost)


def test_edible_fruit_heals_and_poison_hurts(physics):
    config, _, state = world(trees=[(2.0, 0.0, APPLE, 1)])
    state = dataclasses.replace(state, health=np.array([500.0], np.float32))
    after, events = physics.step(config, state, act(eat=True))
    assert events.health_change[0] == pytest.approx(config.fruit_health - config.living_cost)
    config, _, state = world(trees=[(2.0, 0.0, NIGHTSHADE, 1)])
    after, events = physics.step(config, state, act(eat=True))
    assert events.ate[0] and events.poisoned[0]
    assert events.health_change[0] == pytest.approx(-config.fruit_health - config.living_cost)
    assert after.poison_eaten[0] == 1 and after.fruit_eaten[0] == 0
    assert after.tree_fruit[0, 0] == 0


def test_regrowth_restores_fruit_up_to_the_maximum(physics):
    config, _, state = world(WorldConfig(regrow_every=3), trees=[(50.0, 0.0, APPLE, 0), (60.0, 0.0, APPLE, 5)])
    history = []
    for _ in range(7):
        state, _ = physics.step(config, state, act())
        history.append(state.tree_fruit[0].tolist())
    assert [h[0] for h in history] == [0, 0, 1, 1, 1, 2, 2]
    assert all(h[1] == config.max_fruit for h in history)


def test_costs_add_up_and_moves_are_capped_at_max_step(physics):
    config, _, state = world(trees=[(300.0, 300.0, APPLE, 0)])
    rng = np.random.default_rng(3)
    for _ in range(50):
        state, _ = physics.step(config, state, rng.uniform(-1, 1, (1, 3)).astype(np.float32) * [[1, 1, 0]] - [[0, 0, 1]])
        assert np.hypot(*state.motion[0]) <= config.max_step + 1e-5
    expected = config.max_health - 50 * config.living_cost - config.move_cost * state.distance[0]
    assert state.health[0] == pytest.approx(expected, rel=1e-5)
    _, events = physics.step(config, state, act(1.0, 1.0))  # a diagonal is shortened to max_step
    assert events.health_change[0] == pytest.approx(-(config.living_cost + config.move_cost * config.max_step), rel=1e-5)


def test_agent_stops_at_the_arena_wall_and_open_plane_has_none(physics):
    config, _, state = world(agent=(498.0, 0.0))
    after, _ = physics.step(config, state, act(1.0, 0.0))
    assert np.hypot(*after.agent_position[0]) == pytest.approx(config.arena_radius, abs=1e-3)
    assert after.motion[0, 0] == pytest.approx(2.0, abs=1e-3)
    for _ in range(10):
        after, _ = physics.step(config, after, act(0.6, 0.8))
        assert np.hypot(*after.agent_position[0]) <= config.arena_radius + 1e-3
    open_config, _, state = world(WorldConfig(arena_radius=None), agent=(498.0, 0.0))
    after, _ = physics.step(open_config, state, act(1.0, 0.0))
    assert after.agent_position[0, 0] == pytest.approx(503.0)


def test_heading_follows_the_last_move_and_health_ends_at_zero(physics):
    config, _, state = world(heading=(1.0, 0.0))
    after, _ = physics.step(config, state, act(0.0, -0.5))
    assert after.heading[0].tolist() == pytest.approx([0.0, -1.0])
    after, _ = physics.step(config, after, act(0.0, 0.0))
    assert after.heading[0].tolist() == pytest.approx([0.0, -1.0])
    dying = dataclasses.replace(after, health=np.array([0.5], np.float32))
    dead, events = physics.step(config, dying, act())
    assert dead.health[0] == 0.0 and events.health_change[0] == pytest.approx(-0.5)


def test_sampled_worlds_have_unique_names_trees_in_the_arena_and_seeded_layouts():
    config = WorldConfig(num_trees=32, name_pool=32)
    vocabulary = Vocabulary.for_config(config)
    states = [sample_world(config, vocabulary, np.random.default_rng(s), np.random.default_rng(s)) for s in range(20)]
    for s in states:
        assert len(set(s.tree_name[0].tolist())) == 32
        assert (np.hypot(*s.tree_position[0].T) <= config.arena_radius).all()
        assert np.hypot(*s.agent_position[0]) <= config.start_radius
    poison_rate = np.mean([s.tree_poisonous.mean() for s in states])
    assert 0.2 < poison_rate < 0.4
    assert all((s.tree_poisonous == (s.tree_kind >= 12)).all() for s in states)
    a = sample_world(config, vocabulary, np.random.default_rng(7), np.random.default_rng(1))
    b = sample_world(config, vocabulary, np.random.default_rng(7), np.random.default_rng(2))
    assert np.array_equal(a.tree_position, b.tree_position) and not np.array_equal(a.agent_position, b.agent_position)


def test_smell_matches_a_brute_force_kernel_sum(physics):
    config = WorldConfig()
    vocabulary = Vocabulary.for_config(config)
    state = sample_world(config, vocabulary, np.random.default_rng(5), np.random.default_rng(5))
    obs = physics.observe(config, PerceptTables.build(config, vocabulary), state)
    table = vocabulary.table.astype(np.float64)
    expected = np.zeros(vocabulary.dim)
    for t in range(config.num_trees):
        d = np.hypot(*(state.tree_position[0, t] - state.agent_position[0]))
        percept = table[state.tree_kind[0, t]] + table[state.tree_name[0, t]]
        expected += config.smell_attenuation ** ((d / config.smell_distance) ** 2) * percept / np.linalg.norm(percept)
    np.testing.assert_allclose(obs["smell"][0], expected, atol=1e-5)


def test_sight_sees_the_nearest_tree_in_the_cone_with_its_fruit_phrase(physics):
    trees = [(50.0, 3.0, APPLE, 2), (80.0, 0.0, NIGHTSHADE, 1), (-20.0, 0.0, APPLE, 4)]
    config, vocabulary, state = world(trees=trees)
    tables = PerceptTables.build(config, vocabulary)
    obs = physics.observe(config, tables, state)
    table = vocabulary.table
    percept = table[APPLE] + table[state.tree_name[0, 0]] + table[vocabulary.phrase_offset + 2]
    np.testing.assert_allclose(obs["sight"][0], percept / np.linalg.norm(percept), atol=1e-5)
    assert obs["sight_distance"][0, 0] == pytest.approx(np.hypot(50, 3) / config.sight_distance)
    behind = physics.observe(config, tables, world(trees=trees, heading=(0.0, 1.0))[2])
    assert not behind["sight"].any() and behind["sight_distance"][0, 0] == 0.0
    assert WORDS[vocabulary.phrase_offset + 2] == "two fruits"


def test_numpy_and_torch_backends_agree_step_for_step():
    config = WorldConfig(regrow_every=7)
    vocabulary = Vocabulary.for_config(config)
    state = stack([sample_world(config, vocabulary, np.random.default_rng(s), np.random.default_rng(s)) for s in range(6)])
    torch_state = state.to("torch")
    tables, torch_tables = PerceptTables.build(config, vocabulary), PerceptTables.build(config, vocabulary, "torch")
    rng = np.random.default_rng(0)
    for _ in range(60):
        action = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
        state, events = step(config, state, action)
        torch_state, torch_events = step(config, torch_state, torch.from_numpy(action))
        assert np.array_equal(events.ate, torch_events.ate.numpy())
        a, b = observe(config, tables, state), observe(config, torch_tables, torch_state)
        for key in a:
            np.testing.assert_allclose(a[key], b[key].numpy(), atol=1e-4, err_msg=key)
    assert np.array_equal(state.tree_fruit, torch_state.tree_fruit.numpy())


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("config", [WorldConfig(tree_spread=40.0, regrow_every=7),
                                    WorldConfig(tree_spread=40.0, arena_radius=None, observe_position=True)])
def test_compiled_kernels_match_the_reference_step_for_step(monkeypatch, parallel, config):
    monkeypatch.setattr(kernels, "PARALLEL_FROM", 1 if parallel else 10 ** 9)
    vocabulary = Vocabulary.for_config(config)
    state = stack([sample_world(config, vocabulary, np.random.default_rng(s), np.random.default_rng(s)) for s in range(6)])
    tables = PerceptTables.build(config, vocabulary)
    physics = CompiledPhysics(config, tables)
    fast = state.map(np.copy)
    rng = np.random.default_rng(0)
    eaten = 0
    for _ in range(150):
        action = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
        state, events = step(config, state, action)
        after, fast_events = physics.step(fast, action)
        assert after is fast  # in place
        assert np.array_equal(events.ate, fast_events.ate) and np.array_equal(events.poisoned, fast_events.poisoned)
        np.testing.assert_allclose(events.health_change, fast_events.health_change, atol=1e-4)
        eaten += events.ate.sum()
        a, b = observe(config, tables, state), physics.observe(fast)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    for name in ("tree_fruit", "steps", "fruit_eaten", "poison_eaten"):
        assert np.array_equal(getattr(state, name), getattr(fast, name)), name
    for name in ("agent_position", "heading", "health", "distance", "tree_offset", "tree_distance"):
        np.testing.assert_allclose(getattr(state, name), getattr(fast, name), atol=1e-3, err_msg=name)
    assert eaten >= 5  # the comparison covered eating


def test_vocabulary_is_real_minilm_and_hashed_is_seeded():
    vocabulary = Vocabulary.minilm()
    assert vocabulary.table.shape == (len(WORDS), 384) and vocabulary.table.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vocabulary.table, axis=1), 1.0, atol=1e-5)
    e = dict(zip(WORDS, vocabulary.table))
    assert e["apple"] @ e["pear"] > e["apple"] @ e["the Old Oak"]  # semantics of a real text model
    assert e["one fruit"] @ e["two fruits"] > e["one fruit"] @ e["banana"]
    a, b = Vocabulary.hashed(64, seed=1), Vocabulary.hashed(64, seed=1)
    assert np.array_equal(a.table, b.table) and a.table.shape == (len(WORDS), 64)
    assert not np.array_equal(a.table, Vocabulary.hashed(64, seed=2).table)
    for args, name in (((0,), "dim"), ((2.5,), "dim"), ((64, -1), "seed")):
        with pytest.raises((TypeError, ValueError), match=f"^{name}: "):
            Vocabulary.hashed(*args)
    assert len(set(NAMES)) == len(NAMES) == 128
    assert vocabulary.poisonous.sum() == 4


@pytest.mark.parametrize("changes, match", [
    ({"num_trees": -1}, "num_trees"), ({"arena_radius": -5.0}, "arena_radius"), ({"num_trees": 2.5}, "num_trees"),
    ({"max_fruit": 9}, "max_fruit"), ({"smell_attenuation": 1.5}, "smell_attenuation"),
    ({"percept_dim": 64}, "percept_dim"), ({"vocabulary": "glove"}, "vocabulary"),
    ({"tree_spread": math.nan}, "tree_spread"), ({"num_trees": 40}, "name_pool"), ({"colour": 1}, "unknown config key"),
])
def test_bad_config_values_name_the_field(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WorldConfig.from_dict(changes)


def test_config_builds_from_dict_and_documents_fields():
    config = WorldConfig.from_dict({"num_trees": 10, "arena_radius": None})
    assert config.num_trees == 10 and config.arena_radius is None
    docs = WorldConfig.field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(WorldConfig)} and all(docs.values())


def test_a_tiny_move_turns_the_heading_to_a_unit_vector(physics):
    config, _, state = world(trees=[(30.0, 0.0, APPLE, 1)], agent=(0.0, 0.0), heading=(0.0, 1.0))
    state, _ = physics.step(config, state, act(dx=1e-14 / config.max_step))
    if np.hypot(*state.agent_position[0]) > 0:  # the move survived float32: the heading is its direction
        np.testing.assert_allclose(state.heading[0], [1.0, 0.0], atol=1e-6)
    else:
        np.testing.assert_allclose(state.heading[0], [0.0, 1.0])
