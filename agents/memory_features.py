"""The TEM agent's memory as features for a learned policy: :func:`memory_features` and :class:`MemoryReader`.

A :class:`MemoryReader` runs a batched :class:`~treeworld.agents.tem.TEMAgent`'s inference (path
integration, loop closure, memory writes, valence learning, goal recall) on the observations of B
envs whose actions another policy chooses, and reads its memory out as a fixed-size vector per env.

The features of a row (``feature_names``), lengths over the sight range, in the belief frame (the
agent's own: origin at the episode's start; actions are displacements in the same axes):

- for each of the ``edible`` best remembered trees that are not known poisonous, ranked by the
  planner's score ``P(edible) * expected fruit / (distance + offset)`` (unknown kinds discounted),
  then for each of the ``poison`` nearest remembered poisonous trees, 8 numbers: ``dx, dy,
  distance`` (the tree's believed place minus the believed position), ``valence, valence_std``
  (the readout's), ``fruit`` (expected now, over ``max_fruit``), ``age`` (steps since last seen,
  over the regrowth period) and ``present`` (1; an empty entry is all zeros);
- ``sigma``: the believed position's std per axis;
- the tree in sight: ``seen``, its ``valence``, ``valence_std`` and expected ``fruit`` (all 0 when
  nothing is in sight);
- with a goal (homing): ``dx, dy, distance`` to the goal look's recalled place and the recall's
  ``confidence`` (all 0 while there is no goal or nothing recalled).

Memory, belief and landmarks are per row and start afresh at ``reset(rows)``; the valence readout
and the learned path integration are knowledge shared by the rows that persists, as a policy's
weights do. ``save``/``load`` keep that knowledge and the layout (not the episodes in progress).
"""
from __future__ import annotations

import copy
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from treeworld import checks
from treeworld.agents.tem import Perception, TEMAgent

FORMAT = "treeworld.MemoryReader/3"
TREE_FIELDS = ("dx", "dy", "distance", "valence", "valence_std", "fruit", "age", "present")
#: State-dict prefixes of the agent's shared knowledge (everything else is per-row episode state).
KNOWLEDGE = ("belief.integrator.", "readouts.", "landmarks.memory.percept_metric.")


def feature_names(edible: int, poison: int, goal: bool) -> list[str]:
    """The name of every feature, in order (see the module docstring)."""
    names = [f"{kind}{i}.{field}" for kind, count in (("edible", edible), ("poison", poison))
             for i in range(count) for field in TREE_FIELDS]
    names += ["sigma", "sight.seen", "sight.valence", "sight.valence_std", "sight.fruit"]
    if goal:
        names += ["goal.dx", "goal.dy", "goal.distance", "goal.confidence"]
    return names


def _entries(agent: TEMAgent, order: torch.Tensor, count: int, tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, count, 8) tree entries: the slots with the ``count`` highest finite ``order`` (B, C)
    values, fields gathered from ``tables`` (7 of (B, C)), then the present flag; empty entries 0."""
    B, C = order.shape
    k = min(count, C)
    key, slot = order.topk(k, dim=1)  # (B, k)
    present = torch.isfinite(key)
    fields = torch.stack([table.double().gather(1, slot) for table in tables] + [present.double()], dim=-1)
    entries = torch.where(present[..., None], fields, 0.0)
    if k < count:
        entries = torch.cat([entries, entries.new_zeros(B, count - k, len(TREE_FIELDS))], dim=1)
    return entries


@torch.no_grad()
def memory_features(agent: TEMAgent, perception: Perception, edible: int = 4, poison: int = 2,
                    goal: bool = False) -> torch.Tensor:
    """(B, F) float32 readouts of ``agent`` after :meth:`TEMAgent.perceive` gave ``perception``;
    F = ``len(feature_names(edible, poison, goal))``."""
    c, planner = agent.config, agent.planner.config
    scale = c["sight_range"]
    C = agent.tree_slots(perception.sighted)
    trees, valid, _, _, expected = agent.remembered_trees(C)
    position = perception.position.double()  # (B, 2), the belief this step
    offset = (trees.double() - position[:, None]) / scale  # (B, C, 2)
    distance = offset.norm(dim=-1)
    mean, std = agent.tree_valence[:, :C].double(), agent.tree_valence_std[:, :C].double()
    poisonous, is_edible, _ = agent.planner.kinds(mean, std, torch.full_like(mean, np.inf))
    value = (1 + mean) / 2 * expected * torch.where(is_edible, 1.0, planner.unknown_discount)
    score = value / (distance * scale + planner.distance_offset) - 1e-9 * distance  # nearer wins ties
    age = (agent.steps[:, None] - agent.landmarks.last_seen[:, :C]).clamp_min(0).double() / planner.regrow_every
    tables = (offset[..., 0], offset[..., 1], distance, mean, std, expected / planner.max_fruit, age)
    minus_inf = torch.tensor(-np.inf, dtype=torch.float64)
    best = _entries(agent, torch.where(valid & ~poisonous, score, minus_inf), edible, tables)
    bad = _entries(agent, torch.where(valid & poisonous, -distance, minus_inf), poison, tables)
    B = agent.num_agents
    rows = torch.arange(B)
    slot = perception.sighted.clamp_min(0)
    known = perception.seen & (perception.sighted >= 0)
    seen = perception.seen
    sight = torch.stack([seen.double(), torch.where(seen, perception.sight_valence.double(), 0.0),
                         torch.where(seen, perception.sight_valence_std.double(), 0.0),
                         torch.where(known, expected[rows, slot] / planner.max_fruit, 0.0)], dim=-1)
    parts = [best.reshape(B, -1), bad.reshape(B, -1), agent.sigma().double()[:, None] / scale, sight]
    if goal:
        if perception.goal is None:
            parts.append(torch.zeros(B, 4, dtype=torch.float64))
        else:
            to_goal = (perception.goal.double() - position) / scale
            to_goal = torch.where(perception.goal_mask[:, None], to_goal, 0.0)
            parts.append(torch.cat([to_goal, to_goal.norm(dim=-1, keepdim=True),
                                    perception.goal_confidence.double()[:, None]], dim=-1))
    return torch.cat(parts, dim=-1).float()


class MemoryReader:
    """A TEM agent run alongside another policy: ``observe`` the observations of B envs, then
    ``acted`` with the actions taken; ``reset(rows)`` where episodes restart.

    Args:
        agent: the batched TEM agent (its ``num_agents`` is B); give it ``consolidate_every=0``
            unless the map layer is wanted (the features do not read it).
        edible, poison: tree entries of each kind (see the module docstring).
        goal: add the homing goal's features.
    """

    def __init__(self, agent: TEMAgent, edible: int = 4, poison: int = 2, goal: bool = False) -> None:
        self.agent = checks.instance(agent, TEMAgent, "agent")
        if agent.config["valence_sharing"] != "batch":
            raise ValueError("agent: expected a TEMAgent with valence_sharing='batch' (one readout, shared "
                             f"knowledge whatever the number of envs), got {agent.config['valence_sharing']!r}")
        self.edible = checks.integer(edible, "edible", low=0)
        self.poison = checks.integer(poison, "poison", low=0)
        self.goal = checks.instance(goal, bool, "goal")
        self.perception: Perception | None = None

    @classmethod
    def for_config(cls, config, num_envs: int, checkpoint: Any = None, **options) -> "MemoryReader":
        """A reader for B worlds of ``config`` (a ``WorldConfig``): an untrained TEM agent, or the
        trained parts of a ``scripts/train.py --algo tem`` ``checkpoint`` (a path); the goal features
        when the task is homing. ValueError naming ``checkpoint`` for a file that does not fit."""
        if checkpoint is None:
            agent = TEMAgent.for_config(config, num_envs, consolidate_every=0, valence_sharing="batch")
        else:
            from treeworld.agents.training import model_from_checkpoint, read_checkpoint, tem_agent

            model = model_from_checkpoint(read_checkpoint(checkpoint, "checkpoint"), "checkpoint")
            try:
                agent = tem_agent(model, config, num_envs, consolidate_every=0, valence_sharing="batch")
            except ValueError as error:
                raise ValueError(f"checkpoint: {str(checkpoint)!r} does not fit this world: {error}") from None
        return cls(agent, goal=config.task == "homing", **options)

    @property
    def num_envs(self) -> int:
        return self.agent.num_agents

    @property
    def size(self) -> int:
        """F, the features per row."""
        return len(feature_names(self.edible, self.poison, self.goal))

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Forget the episodes of ``rows`` (all when None): belief at the origin, memory empty."""
        self.agent.reset(rows)

    def end_episodes(self, observations: Mapping[str, np.ndarray], rows: Sequence[int]) -> None:
        """End the episodes of ``rows`` on their terminal ``observations`` (B, ...): the shared readout
        learns from their last bites (:meth:`TEMAgent.end_episodes`), then those rows start afresh."""
        self.agent.end_episodes(observations, rows)

    def observe(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, F) float32 features after the agent took in one step's (B, ...) observations."""
        self.perception = self.agent.perceive(observations)
        return memory_features(self.agent, self.perception, self.edible, self.poison, self.goal).numpy()

    def acted(self, actions: np.ndarray) -> None:
        """Close the step with the (B, 3) actions sent to the world (their eat flags teach valence)."""
        if self.perception is None:
            raise RuntimeError("acted() called before observe()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, 3):
            raise ValueError(f"actions: expected shape ({self.num_envs}, 3), got {actions.shape}")
        self.agent.finish_step(self.perception, torch.as_tensor(actions[:, 2] > 0))
        self.perception = None

    def peek(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """The (B, F) features ``observe`` would give, from a copy: the reader is left unchanged
        (for the terminal observations of ended episodes, which SB3 values but never acts on)."""
        return MemoryReader(copy.deepcopy(self.agent), self.edible, self.poison, self.goal).observe(observations)

    # ------------------------------------------------------------------------------ knowledge, saving
    def knowledge(self) -> dict[str, Any]:
        """The agent's shared knowledge (valence readout, path integration, percept metric) as a
        state dict: what persists across episodes, whatever the number of rows."""
        return {key: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
                for key, value in self.agent.state_dict().items() if key.startswith(KNOWLEDGE)}

    def learn_from(self, other: "MemoryReader") -> None:
        """Take ``other``'s shared knowledge (e.g. a training reader's, for a validation reader)."""
        self._load_knowledge(checks.instance(other, MemoryReader, "other").knowledge())

    def _load_knowledge(self, knowledge: dict[str, Any]) -> None:
        missing = [key for key in self.knowledge() if key not in knowledge]
        if missing:
            raise ValueError(f"knowledge: lacks {missing}")
        state = self.agent.state_dict()
        state.update({key: knowledge[key] for key in state if key.startswith(KNOWLEDGE)})
        self.agent.load_state_dict(state)

    def save(self, path) -> None:
        """Write the layout, the agent's config and its shared knowledge (not the episodes) to ``path``."""
        config = {key: value for key, value in self.agent.config.items() if key != "num_agents"}
        torch.save({"format": FORMAT, "agent_config": config, "knowledge": self.knowledge(),
                    "layout": {"edible": self.edible, "poison": self.poison, "goal": self.goal}}, path)

    @classmethod
    def load(cls, path, num_envs: int) -> "MemoryReader":
        """A reader for ``num_envs`` rows from :meth:`save`; ValueError naming ``path`` for a file
        that is not one."""
        try:
            data = torch.load(pathlib.Path(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (missing, corrupted or not a torch file)
            raise ValueError(f"path: {str(path)!r} is not a readable MemoryReader file ({type(error).__name__}: "
                             f"{error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"path: expected a MemoryReader file of format {FORMAT!r}, got {got!r}")
        try:
            reader = cls(TEMAgent(num_envs, **data["agent_config"]), **data["layout"])
            reader._load_knowledge(data["knowledge"])
            return reader
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"path: {str(path)!r} does not hold a usable MemoryReader ({type(error).__name__}: "
                             f"{error})") from None
