"""What runners drive: the single-env :class:`Agent`, the batched :class:`BatchAgent`, adapters
between them and :func:`run_batch`, an episode runner over a Gymnasium vector env.

A :class:`BatchAgent` acts for ``num_agents`` envs at once: row ``i`` of every observation array
and of the (B, 3) actions belongs to env ``i``. ``reset(rows)`` starts new episodes in those rows
only, as a vector env's autoreset restarts single envs.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from treeworld import checks


@runtime_checkable
class Agent(Protocol):
    """What the runner drives: ``reset`` before an episode, then ``act`` on every observation.

    An agent may also have ``overlays``: a list of :mod:`treeworld.overlay` primitives in its own
    frame (origin at its episode's start, the world's axes), which a runner moves by the true start
    position (:func:`treeworld.overlay.translated`) onto ``env.unwrapped.overlays`` to draw them.
    """

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; a non-None ``seed`` reseeds the agent's generator."""

    def act(self, observation: dict) -> np.ndarray:
        """The (3,) float32 action in [-1, 1] for a TreeWorldEnv ``observation``."""


@runtime_checkable
class BatchAgent(Protocol):
    """An agent for ``num_agents`` envs at once: observations and actions have a leading batch axis."""

    num_agents: int

    def reset(self, rows: Sequence[int] | None = None, seed: int | None = None) -> None:
        """Start episodes in ``rows`` (all when None); a non-None ``seed`` reseeds row ``i`` with ``seed + i``."""

    def act(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """The (B, 3) float32 actions in [-1, 1] for a dict of (B, ...) observation arrays."""


def _check_rows(rows: Sequence[int] | None, num_agents: int) -> list[int]:
    if rows is None:
        return list(range(num_agents))
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu") or not np.all((rows >= 0) & (rows < num_agents)):
        raise ValueError(f"rows: expected a sequence of row indices in [0, {num_agents}) or None, got {rows.tolist()}")
    return rows.astype(int).tolist()


def _check_batch(observations: Any, num_agents: int) -> dict[str, np.ndarray]:
    if not isinstance(observations, Mapping):
        raise TypeError(f"observations: expected a dict of (B, ...) arrays, got {type(observations).__name__}")
    arrays = {key: _numpy(value) for key, value in observations.items()}
    for key, value in arrays.items():
        if value.ndim == 0 or value.shape[0] != num_agents:
            raise ValueError(f"observations: expected a batch of {num_agents} rows, "
                             f"got {key!r} of shape {value.shape}")
    return arrays


def _numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or device) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


class Batched:
    """Single-env agents run row by row as a :class:`BatchAgent`; row ``i`` reseeds with ``seed + i``,
    as env ``i`` of a vector env does. ``overlays`` are row 0's (the env a vector env renders)."""

    def __init__(self, agents: Sequence[Agent]):
        agents = list(agents)
        if not agents or not all(isinstance(agent, Agent) for agent in agents):
            raise TypeError("agents: expected a non-empty sequence of Agent (reset and act)")
        self.agents = agents
        self.num_agents = len(agents)

    @property
    def overlays(self) -> list | None:
        return getattr(self.agents[0], "overlays", None)

    def reset(self, rows: Sequence[int] | None = None, seed: int | None = None) -> None:
        seed = None if seed is None else checks.integer(seed, "seed", low=0)
        for row in _check_rows(rows, self.num_agents):
            self.agents[row].reset(seed=None if seed is None else seed + row)

    def act(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = _check_batch(observations, self.num_agents)
        actions = [np.asarray(agent.act({key: value[row] for key, value in arrays.items()}), dtype=np.float32)
                   for row, agent in enumerate(self.agents)]
        return np.stack(actions).reshape(self.num_agents, 3)


class Single:
    """A :class:`BatchAgent` of one row (``num_agents`` = 1) as a single-env :class:`Agent`."""

    def __init__(self, batch_agent: BatchAgent):
        if not isinstance(batch_agent, BatchAgent):
            raise TypeError(f"batch_agent: expected a BatchAgent, got {type(batch_agent).__name__}")
        if batch_agent.num_agents != 1:
            raise ValueError(f"batch_agent: expected num_agents 1, got {batch_agent.num_agents}")
        self.batch_agent = batch_agent

    @property
    def overlays(self) -> list | None:
        return getattr(self.batch_agent, "overlays", None)

    def reset(self, seed: int | None = None) -> None:
        self.batch_agent.reset(None, seed=seed)

    def act(self, observation: dict) -> np.ndarray:
        if not isinstance(observation, Mapping):
            raise TypeError(f"observation: expected a dict of arrays, got {type(observation).__name__}")
        batch = {key: _numpy(value)[None] for key, value in observation.items()}
        return np.asarray(self.batch_agent.act(batch), dtype=np.float32).reshape(3)


def run_batch(envs: Any, agent: BatchAgent, steps: int, seed: int | None = None) -> dict[str, list]:
    """Drive ``agent`` in the vector env ``envs`` (next-step autoreset) for ``steps`` steps.

    Resets env and agent with ``seed`` first (row ``i`` gets ``seed + i``); an env that ended is
    restarted by the next step, and the agent's row is reset then, before it acts on the new
    episode's first observation. Returns, per finished episode in order of ending: ``env``,
    ``return``, ``length``, ``fruit_eaten``, ``poison_eaten``, ``terminated`` (lists of Python scalars).
    """
    if not isinstance(agent, BatchAgent):
        raise TypeError(f"agent: expected a BatchAgent, got {type(agent).__name__}")
    if agent.num_agents != envs.num_envs:
        raise ValueError(f"agent: expected num_agents {envs.num_envs} (envs.num_envs), got {agent.num_agents}")
    steps = checks.count(steps, "steps")
    n = envs.num_envs
    agent.reset(None, seed=seed)
    observations, _ = envs.reset(seed=seed)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    restart = np.zeros(n, dtype=bool)
    episodes: dict[str, list] = {key: [] for key in
                                 ("env", "return", "length", "fruit_eaten", "poison_eaten", "terminated")}
    for _ in range(steps):
        actions = agent.act(observations)
        observations, reward, terminated, truncated, info = envs.step(actions)
        reward, terminated, truncated = _numpy(reward), _numpy(terminated), _numpy(truncated)
        if restart.any():  # these rows began a new episode on this step (reward 0, action ignored)
            agent.reset(np.flatnonzero(restart).tolist())
            returns[restart], lengths[restart] = 0.0, 0
        live = ~restart
        returns[live] += reward[live]
        lengths[live] += 1
        restart = terminated | truncated
        fruit, poison = _numpy(info["fruit_eaten"]), _numpy(info["poison_eaten"])
        for i in np.flatnonzero(restart):
            for key, value in (("env", int(i)), ("return", float(returns[i])), ("length", int(lengths[i])),
                               ("fruit_eaten", int(fruit[i])), ("poison_eaten", int(poison[i])),
                               ("terminated", bool(terminated[i]))):
                episodes[key].append(value)
    return episodes
