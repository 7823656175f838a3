"""The agent protocols: batched random walkers match single envs, rows reset on autoreset, the
Single adapter, run_batch's episode statistics, runtime protocol checks and bad input."""
import gymnasium as gym
import numpy as np
import pytest

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import Agent, BatchAgent, Batched, RandomWalker, Single, run_batch

N, SEED, MAX_HEALTH = 3, 7, 60.0  # max_health 60: episodes end after about 30 steps


def make_vec(num_envs=N):
    return gym.make_vec("treeworld/TreeWorld-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        max_health=MAX_HEALTH)


def walkers(num=N):
    return [RandomWalker(gym.spaces.Box(-1.0, 1.0, (3,), np.float32)) for _ in range(num)]


class Recorder:
    """A vector env proxy that keeps every step's rewards, flags and eating events."""

    def __init__(self, envs):
        self.envs, self.num_envs, self.steps = envs, envs.num_envs, []

    def reset(self, **kwargs):
        return self.envs.reset(**kwargs)

    def step(self, actions):
        out = self.envs.step(actions)
        _, reward, terminated, truncated, info = out
        self.steps.append({key: np.array(value) for key, value in dict(
            reward=reward, terminated=terminated, truncated=truncated, ate=info["ate"],
            poisoned=info["poisoned"]).items()})
        return out


class Spy:
    """A BatchAgent that logs its reset and act calls and delegates to ``inner``."""

    def __init__(self, inner):
        self.inner, self.num_agents, self.log = inner, inner.num_agents, []

    def reset(self, rows=None, seed=None):
        self.log.append(("reset", None if rows is None else list(rows)))
        self.inner.reset(rows, seed=seed)

    def act(self, observations):
        self.log.append(("act", None))
        return self.inner.act(observations)


def test_batched_walkers_match_single_envs():
    envs = make_vec()
    agent = Batched(walkers())
    agent.reset(seed=SEED)
    observations, _ = envs.reset(seed=SEED)
    batch_actions, ended = [], np.full(N, -1)
    for t in range(200):
        actions = agent.act(observations)
        assert actions.shape == (N, 3) and actions.dtype == np.float32
        batch_actions.append(actions)
        observations, _, terminated, truncated, _ = envs.step(actions)
        ended[(ended < 0) & (terminated | truncated)] = t
        if (ended >= 0).all():
            break
    assert (ended >= 0).all()
    for i in range(N):  # row i against a walker on a single env seeded SEED + i, up to its first episode end
        env, walker = gym.make("treeworld/TreeWorld-v0", max_health=MAX_HEALTH), walkers(1)[0]
        walker.reset(seed=SEED + i)
        observation, _ = env.reset(seed=SEED + i)
        for t in range(ended[i] + 1):
            action = walker.act(observation)
            np.testing.assert_array_equal(action, batch_actions[t][i])
            observation, _, terminated, truncated, _ = env.step(action)
        assert terminated or truncated
        env.close()
    envs.close()


def test_rows_reset_on_autoreset():
    envs = Recorder(make_vec())
    spy = Spy(Batched(walkers()))
    run_batch(envs, spy, steps=120, seed=SEED)
    assert spy.log[0] == ("reset", None)
    resets, acts = {}, 0  # act count before each reset -> rows
    for kind, rows in spy.log[1:]:
        if kind == "act":
            acts += 1
        else:
            resets[acts] = rows
    assert acts == 120
    expected = {}
    for t, step in enumerate(envs.steps[:-1]):  # done at step t: restarted by step t + 1, reset before act t + 2
        done = np.flatnonzero(step["terminated"] | step["truncated"]).tolist()
        if done:
            expected[t + 2] = done
    assert expected and resets == expected
    envs.envs.close()


def test_single_acts_like_its_agent():
    env = gym.make("treeworld/TreeWorld-v0", max_health=MAX_HEALTH)
    plain, wrapped = walkers(2)
    single = Single(Batched([wrapped]))
    assert isinstance(single, Agent)
    plain.reset(seed=SEED), single.reset(seed=SEED)
    observation, _ = env.reset(seed=SEED)
    for _ in range(40):
        action = plain.act(observation)
        other = single.act(observation)
        assert other.shape == (3,) and other.dtype == np.float32
        np.testing.assert_array_equal(action, other)
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()


def test_run_batch_statistics_match_per_step_rewards():
    envs = Recorder(make_vec())
    result = run_batch(envs, Batched(walkers()), steps=150, seed=SEED)
    assert set(result) == {"env", "return", "length", "fruit_eaten", "poison_eaten", "terminated"}
    assert len({len(values) for values in result.values()}) == 1 and len(result["env"]) >= N
    expected, current = [], [dict(ret=0.0, length=0, fruit=0, poison=0) for _ in range(N)]
    restart = np.zeros(N, dtype=bool)
    for step in envs.steps:
        for i in range(N):
            if restart[i]:  # the autoreset step starts a new episode: not counted
                current[i] = dict(ret=0.0, length=0, fruit=0, poison=0)
                continue
            current[i]["ret"] += float(step["reward"][i])
            current[i]["length"] += 1
            current[i]["fruit"] += int(step["ate"][i] and not step["poisoned"][i])
            current[i]["poison"] += int(step["poisoned"][i])
        restart = step["terminated"] | step["truncated"]
        for i in np.flatnonzero(restart):
            expected.append((int(i), current[i]["ret"], current[i]["length"], current[i]["fruit"],
                             current[i]["poison"], bool(step["terminated"][i])))
    got = list(zip(result["env"], result["return"], result["length"], result["fruit_eaten"],
                   result["poison_eaten"], result["terminated"]))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g[0] == e[0] and g[2:] == e[2:]
        assert g[1] == pytest.approx(e[1], abs=1e-4)
    assert all(type(value) in (int, float, bool) for values in result.values() for value in values)
    envs.envs.close()


def test_runtime_protocol_checks():
    walker = walkers(1)[0]
    batched = Batched([walker])
    assert isinstance(walker, Agent) and not isinstance(walker, BatchAgent)
    assert isinstance(batched, BatchAgent) and batched.num_agents == 1
    assert isinstance(Single(batched), Agent)
    assert not isinstance(object(), Agent) and not isinstance(object(), BatchAgent)


def test_bad_input():
    envs = make_vec()
    observations, _ = envs.reset(seed=0)
    agent = Batched(walkers())
    agent.reset(seed=0)
    short = {key: value[:2] for key, value in observations.items()}
    with pytest.raises(ValueError, match="observations"):
        agent.act(short)
    with pytest.raises(TypeError, match="observations"):
        agent.act([observations])
    with pytest.raises(ValueError, match="rows"):
        agent.reset(rows=[N])
    with pytest.raises(ValueError, match="batch_agent"):
        Single(agent)
    with pytest.raises(TypeError, match="batch_agent"):
        Single(walkers(1)[0])
    with pytest.raises(TypeError, match="agents"):
        Batched([])
    with pytest.raises(TypeError, match="agents"):
        Batched([object()])
    with pytest.raises(ValueError, match="agent"):
        run_batch(envs, Batched(walkers(2)), steps=5)
    with pytest.raises(ValueError, match="steps"):
        run_batch(envs, agent, steps=0)
    envs.close()
