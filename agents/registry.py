"""Agents by name: one place that turns an agent spec into an agent for a world.

A spec is a kind, optionally with a file: ``"random"``, ``"forager"``, ``"tem"`` (a fresh
:class:`~treeworld.agents.tem.TEMAgent` matched to the world's sensors), ``"tem:PATH"`` (a saved
one, ``TEMAgent.save``, or a fresh one with the trained parts of a ``scripts/train.py``
checkpoint), ``"sb3:PATH"`` (a saved stable-baselines3 PPO, SAC or RecurrentPPO policy, acting
deterministically). Other kinds are added with :func:`register`. Scripts list :func:`kinds` in their help
and build agents with :func:`make_batch_agent` (B envs of a vector env) or :func:`make_agent` (one
env); no script keeps its own list of names.

A factory is ``factory(config, num_envs, action_space, seed, path) -> BatchAgent``; single-env
baselines are run row by row (:class:`~treeworld.agents.protocol.Batched`, row ``i`` seeded
``seed + i``, as env ``i`` of a vector env).
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable

from treeworld import checks
from treeworld.agents.protocol import Agent, Batched, BatchAgent, Single
from treeworld.config import WorldConfig

Factory = Callable[[WorldConfig, int, Any, int, "pathlib.Path | None"], BatchAgent]
_FACTORIES: dict[str, tuple[Factory, bool]] = {}  # kind -> (factory, takes a file)


def register(kind: str, factory: Factory, *, takes_file: bool = False) -> None:
    """Make ``kind`` (and ``kind:PATH`` when ``takes_file``) a spec; replaces a kind of that name."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"kind: expected an identifier-like name, got {kind!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    _FACTORIES[kind] = (factory, bool(takes_file))


def kinds() -> tuple[str, ...]:
    """The registered kinds, ``kind:PATH`` for those that load a file."""
    return tuple(f"{kind}[:PATH]" if takes_file else kind for kind, (_, takes_file) in _FACTORIES.items())


def parse(spec: str) -> tuple[str, pathlib.Path | None]:
    """``"kind"`` or ``"kind:PATH"`` -> (kind, path); ValueError naming ``agent`` for an unknown kind,
    a path given to a kind that takes none, or a file that does not exist."""
    if not isinstance(spec, str):
        raise TypeError(f"agent: expected a spec string like 'tem' or 'tem:PATH', got {type(spec).__name__}")
    kind, sep, path = spec.partition(":")
    if kind not in _FACTORIES:
        raise ValueError(f"agent: unknown agent {kind!r}; expected one of {', '.join(kinds())}")
    if not sep:
        return kind, None
    if not _FACTORIES[kind][1]:
        raise ValueError(f"agent: {kind!r} takes no file, got {spec!r}")
    if not path or not pathlib.Path(path).is_file():
        raise ValueError(f"agent: no file at {path!r} (from {spec!r})")
    return kind, pathlib.Path(path)


def make_batch_agent(spec: str, config: WorldConfig, num_envs: int, action_space: Any, seed: int = 0) -> BatchAgent:
    """The agent ``spec`` for ``num_envs`` envs of ``config`` (single-env ``action_space``)."""
    checks.instance(config, WorldConfig, "config")
    num_envs = checks.count(num_envs, "num_envs")
    seed = checks.integer(seed, "seed", low=0)
    kind, path = parse(spec)
    return _FACTORIES[kind][0](config, num_envs, action_space, seed, path)


def make_agent(spec: str, config: WorldConfig, action_space: Any, seed: int = 0) -> Agent:
    """The agent ``spec`` for one env: a baseline as itself, a batched agent as :class:`Single`."""
    agent = make_batch_agent(spec, config, 1, action_space, seed)
    return agent.agents[0] if isinstance(agent, Batched) else Single(agent)


# ---------------------------------------------------------------------------------- built-ins
def _random(config, num_envs, action_space, seed, path):
    from treeworld.agents.baselines import RandomWalker
    return Batched([RandomWalker(action_space, seed=seed + row, config=config) for row in range(num_envs)])


def _forager(config, num_envs, action_space, seed, path):
    from treeworld.agents.baselines import Forager
    return Batched([Forager(config=config, seed=seed + row) for row in range(num_envs)])


def _tem(config, num_envs, action_space, seed, path):
    from treeworld.agents import training
    from treeworld.agents.tem import TEMAgent
    if path is None:
        return TEMAgent.for_config(config, num_envs)
    try:  # a training checkpoint (scripts/train.py): a fresh agent with its trained parts
        state = training.read_checkpoint(path, "agent")
    except ValueError:
        state = None
    if state is not None:
        return training.tem_agent(training.model_from_checkpoint(state, "agent"), config, num_envs)
    agent = TEMAgent.load(path)
    if agent.num_agents != num_envs:
        raise ValueError(f"agent: {path} holds a TEMAgent of num_agents {agent.num_agents}, expected {num_envs} "
                         f"(one row per env)")
    if agent.config["percept_dim"] != config.percept_dim:
        raise ValueError(f"agent: {path} holds an agent for {agent.config['percept_dim']}-d percepts, "
                         f"the world's are {config.percept_dim}-d")
    return agent


def _sb3(config, num_envs, action_space, seed, path):
    from treeworld.agents.sb3_agent import load_policy
    from treeworld.envs.batch import observation_space
    from treeworld.vocabulary import Vocabulary
    if path is None:
        raise ValueError("agent: 'sb3' needs a saved policy: sb3:PATH")
    return load_policy(path, observation_space(config, Vocabulary.for_config(config).dim), action_space, num_envs)


register("random", _random)
register("forager", _forager)
register("tem", _tem, takes_file=True)
register("sb3", _sb3, takes_file=True)
