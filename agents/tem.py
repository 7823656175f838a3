"""The TEM agent: path integration, landmarks with loop closure, learned valence, a map layer and
the planner, composed into one :class:`~treeworld.agents.protocol.BatchAgent`.

Per step and per row (env) of a batch, from the observations only (never ``info``, never the
vocabulary):

1. Path integration: ``Belief.step(obs["motion"])`` (exact or learned integrator).
2. Valence learning: if the agent tried to eat on the previous step, the health change
   ``(health - previous) * max_health`` tells the outcome of the bite: above ``+fruit_health / 2``
   edible (+1), below ``-fruit_health / 2`` poison (-1), anything else unclear (ignored for the
   readout); the tree bitten (its memory slot) keeps its own outcome, ``tasted``, which overrides
   the readout's valence of that tree (mean +-1, std 0) for the rest of the episode. A tree's kind
   never changes, while the readout can leave a bitten poisonous tree looking unknown: its look
   changes with its fruit count, and early on the adaptation centre is mostly that very tree (32
   clean validation worlds, 9,200+: one agent bit the same poisonous tree six times running).
   A bite that leaves health below ``max_health`` with no such change found no fruit: the
   tree in sight is marked as bare (fruit estimate 0 until the next regrowth). At ``max_health`` it
   tells nothing: the world clamps health there, so a bite that fed leaves it unchanged.
   The percept learned from is the sight percept of the step the eat was attempted on. Caveat:
   the world feeds on the nearest tree in reach, which may not be the one in sight.
3. Landmarks: ``LandmarkMap.observe`` with sight, sight distance and heading (valence from the
   readout; the fruit count is unknown: ``None``), which stores trees by object-vector coding and
   closes loops into the belief. Tracking: a tree in sight whose distance is within one step's
   travel (``max_step + 4 motion_noise``) of the target's distance in sight on the step before is
   that target still, whatever slot its (noisy) look was matched to: the world's sight distance is
   exact, so a one-step misrecognition does not send the agent scanning for a tree in front of it.
4. Coverage (in ``act``: a reader of the memory that never plans skips it): the cells of the
   agent's frame that its sight cone has swept (up to the tree in sight, else the sight range)
   are marked viewed; the frontier, the nearest unviewed cell weighted by a prior of trees around
   the start (:class:`~treeworld.agents.coverage.Coverage`), is where the planner explores. It replaced a repulsion from known places that walked the empty
   side of a world as readily as the wooded one (validation worlds 9,200+ and 9,300+, clean task,
   with ``tasted``: survival 0.88 / 0.91 before, 0.97 / 0.97 after; fruit per 1,000 steps 76 / 81
   before, 86 / 94 after). Turning towards the frontier sweeps the cone over what was not seen, so
   the planner's periodic look-around while exploring is off (``explore_scan_every = 0``; on
   validation worlds 9,100+ to 9,400+ it gave 1-4 more fruit per 1,000 steps and a belief error
   about 10% larger on the costless walks, 3.2-3.5 against 2.9-3.3).
5. Every ``consolidate_every`` steps of a row, its memory is consolidated into the map layer
   (``SpatialMemory.consolidate`` over a shared ``Topography``); the map units' decoded places are
   extra places the explorer moves away from once no frontier is left.
6. Homing: where ``obs["goal"]`` is non-zero, ``recall_location(goal, 1)`` gives the remembered
   place with the most similar look; its decoded position is the planner's goal, and a sight
   recognised as that slot is the goal tree in sight (approached along the heading).
7. ``Planner.act`` on the remembered trees (positions decoded from their codes, kept per slot by
   the ``LandmarkMap``; valence from the readout on their stored percepts, cached per slot and
   refreshed for changed slots every step and for all after the readout learned, at most every
   ``valence_every`` steps; fruit: ``initial_fruit`` from the episode start when stored (never eaten
   from), 0 from the step it was marked bare, plus the world's regrowth
   ticks since) -> actions and eat flags.
8. Targets that disappoint: a full scan at a remembered tree's place that does not see it, or a
   target in sight and in reach that the eat rule declines (its look says no fruit, or not edible),
   marks the tree bare, so the planner moves on. A landmark sought to relocalize (the planner's
   rule, given the belief std and each tree's closure std from ``LandmarkMap.closure_variance``)
   that a full scan does not find is not sought again until it is seen.

The frame is the agent's own: at ``reset`` the belief is the origin code with zero variance.
The valence readouts and the learned path-integration parameters persist across ``reset``;
memory, landmarks, map and belief are reset per row. Each row learns valence alone by default
(``valence_sharing="agent"``: B independent agents); ``"batch"`` keeps one readout that learns
from every row's bites (used for RL, where knowledge is shared across the training envs as the
policy's weights are). A shared readout learns B times faster: on 32 noisy validation worlds,
with the cautious first-bite rule of the time (``taste_optimism = 0``), a batch with one readout
survived 2,000 steps in 0.94 of worlds and single agents in 0.41, so figures of batched agents
with one readout are not figures of independent agents.

Randomness: the planner's exploration noise uses one generator for the batch (seeded with
``seed``); consolidation uses one generator per row (``seed + row``). With
``explore_jitter = 0`` (and a readout per row) a batch of B equals B single agents seeded ``seed + row``.

``save(path)`` / ``TEMAgent.load(path)``: a ``torch.save`` of ``{"format", "config",
"state_dict", "generators"}``; the state includes the episode state (belief, targets, counters),
so a loaded agent acts exactly as the saved one would have. A file that is not such a checkpoint,
or one of other shapes, raises ValueError.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from treeworld import checks
from treeworld.config import WorldConfig
from treeworld.agents.belief_overlays import belief_overlays
from treeworld.agents.coverage import Coverage
from treeworld.agents.landmarks import LandmarkMap
from treeworld.agents.memory import SpatialMemory
from treeworld.agents.path_integration import (Belief, ExactPathIntegration, LearnedPathIntegration,
                                               default_metric, odometry_step_variance)
from treeworld.agents.planner import EXPLORE, SCAN, Planner, PlannerConfig
from treeworld.agents.protocol import _check_batch, _check_rows
from treeworld.agents.pseudometric import PseudoMetric
from treeworld.agents.topography import Topography
from treeworld.agents.valence import ValenceReadout

FORMAT = "treeworld.TEMAgent/4"

#: How the valence readout is kept: one per agent (row), or one for the whole batch.
VALENCE_SHARING = ("agent", "batch")


def _own_taste(mean: torch.Tensor, std: torch.Tensor, tasted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valence mean and std (any shape) with a tree's own bite outcome ``tasted`` (same shape: +1,
    -1, 0 untasted) in place of the readout's: mean ``tasted``, std 0."""
    own = tasted != 0
    return torch.where(own, tasted, mean), std.masked_fill(own, 0.0)


class Perception(NamedTuple):
    """What :meth:`TEMAgent.perceive` made of one step's observations (B rows)."""

    sight: torch.Tensor  # (B, P) the look in sight (zeros: none)
    seen: torch.Tensor  # (B,) bool, a tree in sight
    distance: torch.Tensor  # (B,) its distance over the sight range (0: none)
    health: torch.Tensor  # (B,) float64 health over max_health
    position: torch.Tensor  # (B, 2) the believed position after this step's loop closures
    heading: torch.Tensor  # (B, 2) the observed heading
    sight_valence: torch.Tensor  # (B,) the readout's valence mean of the sight
    sight_valence_std: torch.Tensor  # (B,) and its std
    sighted: torch.Tensor  # (B,) long, the memory slot the sight was recognised as or written to (-1: none)
    goal: torch.Tensor | None  # (B, 2) the homing goal's recalled place (None: no goal in any row)
    goal_mask: torch.Tensor | None  # (B,) bool, rows with a recalled goal
    goal_confidence: torch.Tensor  # (B,) float64 the recall's weight in [0, 1] (0: no goal)
    goal_slot: torch.Tensor  # (B,) long, the memory slot the goal was recalled from (-1: no goal)


def _check_observations(observations: Any, batch: int, percept_dim: int) -> dict[str, np.ndarray]:
    """The (B, ...) numpy arrays of ``observations``; ValueError naming ``observations[key]`` for a
    missing key, a wrong shape, a non-finite value or a ``sight_distance`` / ``health`` outside
    [0, 1]: checked before the agent changes anything."""
    arrays = _check_batch(observations, batch)
    widths = {"sight": percept_dim, "sight_distance": 1, "motion": 2, "heading": 2, "health": 1, "goal": percept_dim}
    for key, width in widths.items():
        if key not in arrays:
            if key == "goal":
                continue
            raise ValueError(f"observations: expected key {key!r}, got {sorted(arrays)}")
        value, name = arrays[key], f"observations[{key!r}]"
        if value.shape not in ((batch, width),) + (((batch,),) if width == 1 else ()):
            raise ValueError(f"{name}: expected shape ({batch}, {width}), got {value.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"{name}: expected finite values, got {int((~np.isfinite(value)).sum())} non-finite")
        if key in ("sight_distance", "health") and not ((value >= 0) & (value <= 1)).all():
            raise ValueError(f"{name}: expected values in [0, 1], got min {value.min()} and max {value.max()}")
    return arrays


def _percept_metric(P: int, rank: int | None) -> PseudoMetric:
    """The memory's percept metric: Euclidean (``E = I``) for ``rank`` None, else a rank-``rank``
    ``E`` to be loaded (a trained one, see ``treeworld.agents.training.tem_agent``)."""
    metric = PseudoMetric(P, P if rank is None else rank, generator=torch.Generator().manual_seed(0))
    if rank is None:
        with torch.no_grad():
            metric.embedding.copy_(torch.eye(P))
    return metric


class TEMAgent(nn.Module):
    """A batched TEM agent (``BatchAgent``): see the module docstring.

    Args:
        num_agents: rows B.
        percept_dim: sight / goal percept size (384).
        capacity: memory slots per row.
        place_radius, percept_radius: the memory's novelty gates (world units, percept-metric units).
        percept_rank: None for a Euclidean percept metric, else the rank of a learned one (loaded
            from a training checkpoint or a saved agent).
        motion_noise, motion_gain: the odometry's noise std per axis and gain (belief variance per step).
        learned_pi: use ``LearnedPathIntegration`` (initialised exact) instead of the exact one.
        sight_range, cone_cos: the world's sight distance and cone.
        tree_spread: the world's std of tree positions around the arena centre, the exploring
            frontier's prior (:class:`~treeworld.agents.coverage.Coverage`).
        max_health, fruit_health: the world's health scale and health per bite.
        consolidate_every: steps between consolidations (0: never); map_height, map_width, map_epochs.
        valence_every: calls between refreshes of the remembered trees' valence after the readout learned.
        min_gap: the LandmarkMap's: a tree in view is fused into the belief at most every this many steps.
        fusion: the LandmarkMap's: "intersection" (consistent whatever the correlations) or "kalman".
        planner: keyword overrides of ``PlannerConfig``.
        prior_var: the valence readout's prior variance.
        valence_sharing: ``"agent"``, one valence readout per row (independent agents: a batch equals
            its rows run alone), or ``"batch"``, one readout learning from every row's bites (shared
            knowledge, as a policy's weights are shared by the envs it is trained on).
    """

    def __init__(self, num_agents: int = 1, *, percept_dim: int = 384, capacity: int = 256,
                 place_radius: float = 20.0, percept_radius: float = 0.7, percept_rank: int | None = None,
                 motion_noise: float = 0.5,
                 motion_gain: float = 1.0, learned_pi: bool = False, sight_range: float = 100.0,
                 cone_cos: float = 0.9, tree_spread: float = 200.0, max_health: float = 1000.0,
                 fruit_health: float = 25.0,
                 consolidate_every: int = 200, valence_every: int = 10, min_gap: int = 5,
                 map_height: int = 4, map_width: int = 4, map_epochs: int = 2,
                 planner: Mapping[str, Any] | None = None, prior_var: float = 16.0,
                 fusion: str = "intersection", valence_sharing: str = "agent") -> None:
        super().__init__()
        self.config = dict(num_agents=checks.count(num_agents, "num_agents"),
                           percept_dim=checks.count(percept_dim, "percept_dim"),
                           capacity=checks.count(capacity, "capacity"), place_radius=float(place_radius),
                           percept_radius=float(percept_radius),
                           percept_rank=None if percept_rank is None else checks.count(percept_rank, "percept_rank"),
                           motion_noise=float(motion_noise),
                           motion_gain=float(motion_gain), learned_pi=bool(learned_pi),
                           sight_range=float(sight_range), cone_cos=float(cone_cos),
                           tree_spread=checks.positive(tree_spread, "tree_spread"),
                           max_health=checks.positive(max_health, "max_health"),
                           fruit_health=checks.positive(fruit_health, "fruit_health"),
                           consolidate_every=checks.integer(consolidate_every, "consolidate_every", low=0),
                           valence_every=checks.count(valence_every, "valence_every"),
                           min_gap=checks.integer(min_gap, "min_gap", low=0),
                           map_height=checks.count(map_height, "map_height"),
                           map_width=checks.count(map_width, "map_width"),
                           map_epochs=checks.count(map_epochs, "map_epochs"),
                           planner=dict(planner or {}), prior_var=float(prior_var), fusion=fusion,
                           valence_sharing=valence_sharing)
        if valence_sharing not in VALENCE_SHARING:
            raise ValueError(f"valence_sharing: expected one of {VALENCE_SHARING}, got {valence_sharing!r}")
        c = self.config
        B, P = c["num_agents"], c["percept_dim"]
        self.num_agents = B
        metric = default_metric()
        integrator = (LearnedPathIntegration if c["learned_pi"] else ExactPathIntegration)(metric)
        self.belief = Belief(integrator, B, step_variance=odometry_step_variance(c["motion_noise"], c["motion_gain"]))
        memory = SpatialMemory(metric, _percept_metric(P, c["percept_rank"]), c["capacity"], B, place_radius=c["place_radius"],
                               percept_radius=c["percept_radius"])
        self.readouts = ValenceReadout(P, prior_var=c["prior_var"], count=B if valence_sharing == "agent" else 1)
        self.landmarks = LandmarkMap(memory, sight_range=c["sight_range"], cone_cos=c["cone_cos"],
                                     min_gap=c["min_gap"], fusion=c["fusion"])
        # the coverage frontier sweeps the cone over what was not seen: no periodic look-around
        planner_config = {"fruit_health": c["fruit_health"], "known_std": 0.8, "explore_scan_every": 0,
                          **c["planner"]}
        self.planner = Planner(PlannerConfig(**planner_config))
        arena = self.planner.config.arena_radius
        self.coverage = Coverage(B, radius=arena if arena is not None else 2 * c["tree_spread"],
                                 spread=c["tree_spread"])
        # Episode state (persistent buffers: saved, so a loaded agent continues exactly).
        self.register_buffer("code", self.belief.code.clone())
        self.register_buffer("variance", self.belief.variance.clone())
        self.register_buffer("steps", torch.zeros(B, dtype=torch.long))
        self.register_buffer("heading", torch.zeros(B, 2))
        self.register_buffer("target", torch.full((B,), -1, dtype=torch.long))
        self.register_buffer("scan_steps", torch.zeros(B, dtype=torch.long))  # consecutive scanning steps
        self.register_buffer("target_range", torch.full((B,), math.nan))  # the target's distance in sight last step (nan: not)
        # step of each slot's fruit estimate (stored: 0, the episode start; marked bare: that step), for the regrowth count
        self.register_buffer("fruit_since", torch.zeros(B, c["capacity"], dtype=torch.long))
        # step a full scan at a slot's place sought to relocalize did not see it (-1: never; a candidate again once seen)
        self.register_buffer("missed", torch.full((B, c["capacity"]), -1, dtype=torch.long))
        self.register_buffer("previous_health", torch.full((B,), math.nan))
        self.register_buffer("ate", torch.zeros(B, dtype=torch.bool))
        self.register_buffer("eaten_percept", torch.zeros(B, P))
        self.register_buffer("eaten_slot", torch.full((B,), -1, dtype=torch.long))  # the slot bitten (-1: none)
        self.register_buffer("goal_position", torch.full((B, 2), math.nan))
        C, U = c["capacity"], c["map_height"] * c["map_width"]
        self.register_buffer("tasted", torch.zeros(B, C))  # each slot's own bite outcome: +1, -1, 0 untasted
        self.register_buffer("tree_valence", torch.zeros(B, C))  # valence mean per memory slot (see _refresh_valence)
        self.register_buffer("tree_valence_std", torch.ones(B, C))  # and its std
        # per row: its readout's eats at the row's last full valence refresh
        self.register_buffer("valence_refreshed", torch.zeros(B, dtype=torch.long))
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))  # act() calls
        self.register_buffer("map_position", torch.zeros(B, U, 2))  # decoded map units per row
        self.register_buffer("last_mode", torch.zeros(B, dtype=torch.long))  # the planner's mode of the last step
        self.register_buffer("frontier", torch.full((B, 2), math.nan))  # the frontier cell of the last step (nan: none)
        self.generator = torch.Generator().manual_seed(0)
        self.row_generators = [torch.Generator().manual_seed(row) for row in range(B)]
        self._sync_belief_out()

    @classmethod
    def for_config(cls, config, num_agents: int = 1, **overrides) -> "TEMAgent":
        """An agent whose sensor, body and world constants match a ``WorldConfig`` (sight range and
        cone, health scale, fruit health, odometry noise and gain; the planner's step, reach, arena,
        regrowth and fruit cap), with keyword ``overrides`` (``planner`` ones merged into these)."""
        checks.instance(config, WorldConfig, "config")
        matched = dict(percept_dim=config.percept_dim, sight_range=config.sight_distance,
                       cone_cos=config.sight_cos, tree_spread=config.tree_spread,
                       max_health=config.max_health,
                       fruit_health=config.fruit_health, motion_noise=config.motion_noise,
                       motion_gain=config.motion_gain)
        # a tree starts with 0..max_fruit fruit, uniformly; the trip and approach thresholds scale with
        # the fruit cap and the reach (at the defaults 3 fruit and 8 units)
        planner = dict(max_step=config.max_step, eat_radius=config.eat_radius, arena_radius=config.arena_radius,
                       regrow_every=config.regrow_every, max_fruit=config.max_fruit,
                       initial_fruit=config.max_fruit / 2, min_fruit=0.6 * config.max_fruit,
                       sight_stop=0.8 * config.eat_radius)
        planner.update(overrides.pop("planner", None) or {})
        return cls(num_agents, **{**matched, "planner": planner, **overrides})

    @torch.no_grad()
    def position(self) -> torch.Tensor:
        """(B, 2) believed positions (decoded belief codes), in the agent's frame (origin = start)."""
        return self.metric.decode(self.code)[1]

    @torch.no_grad()
    def recall_here(self, motion: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What memory holds at the believed place: the nearest entry's percept (B, P) and the
        confidence (B,) in [0, 1] (``SpatialMemory.recall_percept`` at the belief codes, ``nearest``).

        ``motion`` (B, 2): the odometry of a step taken since the last observation (the next
        observation's ``"motion"``), path-integrated into a copy of the belief first: the place the
        agent believes it has come to before it sees it, so the recall is TEM's prediction of the
        next percept from the prior code ``PI(g, motion)``. Nothing changes."""
        code = self.code
        if motion is not None:
            if not isinstance(motion, (torch.Tensor, np.ndarray)):
                raise TypeError(f"motion: expected a (B, 2) torch.Tensor or numpy array, got {type(motion).__name__}")
            code = self.belief.integrator(code, torch.as_tensor(motion))
        return self.memory.recall_percept(code, nearest=True)

    @torch.no_grad()
    def sigma(self) -> torch.Tensor:
        """(B,) believed position std per axis (world units)."""
        return self.variance.clamp_min(0.0).sqrt()

    # ------------------------------------------------------------------------------ valence
    def _owners(self, rows: torch.Tensor) -> torch.Tensor:
        """(M,) the readout judging each of agents ``rows`` (M,): its own, or the shared one."""
        return rows if self.readouts.count > 1 else torch.zeros_like(rows)

    def valence(self, rows: torch.Tensor, percepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Valence mean and std (M,) of percepts (M, P) judged by the readouts of agents ``rows`` (M,)."""
        return self.readouts.predict(percepts, self._owners(rows))

    def _learn(self, rows: torch.Tensor, percepts: torch.Tensor, outcomes: torch.Tensor) -> None:
        """Bites of agents ``rows`` (M,): percepts (M, P) eaten, outcomes (M,) +1 edible / -1 poison."""
        self.readouts.update(percepts, outcomes, self._owners(rows))

    def _adapt(self, rows: torch.Tensor, percepts: torch.Tensor) -> None:
        """Sensory adaptation of the readouts of agents ``rows`` (M,) to the percepts (M, P) they see."""
        self.readouts.adapt(percepts, self._owners(rows))

    # ------------------------------------------------------------------------------ helpers
    def tree_slots(self, sighted: torch.Tensor) -> int:
        """C >= 1, the leading memory slots that hold every remembered tree and the tree in sight
        ``sighted`` (B,) (-1: none): what the planner and the features read (the rest are empty)."""
        return max(self.memory.used_slots, int(sighted.max()) + 1, 1)

    @torch.no_grad()
    def remembered_trees(self, slots: int | None = None) -> tuple[torch.Tensor, ...]:
        """What the agent knows of its remembered trees now, in the first ``slots`` memory slots of
        each row (C; default all, ``memory.used_slots`` hold every tree): believed places (B, C, 2),
        valid slots (B, C) bool, the fruit estimate (B, C) float64 (``initial_fruit`` when stored, 0
        when marked bare), the step of that estimate (B, C) long and the fruit expected now with
        the world's regrowth since (B, C) float64."""
        C = self.memory.capacity if slots is None else slots
        fruit = torch.nan_to_num(self.landmarks.fruit[:, :C].double(), nan=self.planner.config.initial_fruit)
        fruit = fruit.clamp_min(0.0)
        last_seen = self.fruit_since[:, :C].clamp(max=self.steps[:, None])
        expected = self.planner.expected_fruit(fruit, last_seen, self.steps[:, None])
        return self.landmarks.position[:, :C].float(), self.memory.valid[:, :C].clone(), fruit, last_seen, expected

    @torch.no_grad()
    def _closure_std(self, health: torch.Tensor | None = None, slots: int | None = None) -> torch.Tensor:
        """(B, C) float64 belief std a loop closure at each remembered tree of the first ``slots``
        memory slots (C; default all) would leave, seen from where the planner stops short of a tree
        (+inf for empty slots, for trees sought there since they were last seen and not found, and
        for every tree of rows the planner would not relocalize with ``health`` (B,); None: any health)."""
        c = self.planner.config
        C = self.memory.capacity if slots is None else slots
        if health is None:
            health = torch.full((self.num_agents,), math.inf, dtype=torch.float64)
        rows = self.planner.may_relocalize(self.sigma(), health)
        left = self.landmarks.closure_variance(self.variance, c.stop_fraction * c.eat_radius, rows)[:, :C].sqrt()
        return left.masked_fill(self.missed[:, :C] > self.landmarks.last_seen[:, :C], math.inf)

    @property
    def memory(self) -> SpatialMemory:
        return self.landmarks.memory

    @property
    def metric(self):
        return self.belief.metric

    def _sync_belief_out(self) -> None:
        self.code.copy_(self.belief.code.detach())
        self.variance.copy_(self.belief.variance.detach())

    def _sync_belief_in(self) -> None:
        self.belief.code = self.code.clone()
        self.belief.variance = self.variance.clone()

    def _map_places(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B, U, 2) decoded map units and (B, U) mask of the rows with a map, or None."""
        ready = self.memory.map_ready
        if ready is None or not bool(ready.any()):
            return None
        return self.map_position, ready[:, None].expand(self.map_position.shape[:2])

    def _mark_bare(self, rows: torch.Tensor, slots: torch.Tensor) -> None:
        """Fruit estimate 0 now for the trees in (rows[mask], slots[mask]): no expected fruit until
        the next regrowth tick.  rows (B,) bool mask, slots (B,) long"""
        self.landmarks.fruit[rows.nonzero().flatten(), slots[rows]] = 0.0
        self.fruit_since[rows.nonzero().flatten(), slots[rows]] = self.steps[rows]

    def _refresh_valence(self, written: torch.Tensor) -> None:
        """Refresh the per-slot valence cache: the slots ``written`` (B,) this step (-1: none)
        always; every stored slot when the readout has learned since the last full refresh, at
        most every ``valence_every`` calls (a cached valence is at most that stale; the sight's,
        which decides every bite, is always current). A tasted tree's own outcome overrides the
        readout: mean ``tasted`` (+-1), std 0."""
        rows = torch.arange(self.num_agents)
        eats = self.readouts.eats[self._owners(rows)]  # (B,) each row's readout's bites so far
        full = (eats != self.valence_refreshed) & (int(self.clock) % self.config["valence_every"] == 0)
        slots = self.memory.valid & full[:, None]
        changed = written >= 0
        slots[rows[changed], written[changed]] = True
        self.valence_refreshed.copy_(torch.where(full, eats, self.valence_refreshed))
        if bool(slots.any()):
            owners = rows[:, None].expand_as(slots)[slots]
            self.tree_valence[slots], self.tree_valence_std[slots] = self.valence(owners, self.memory.percepts[slots])
        mean, std = _own_taste(self.tree_valence, self.tree_valence_std, self.tasted)
        self.tree_valence.copy_(mean)
        self.tree_valence_std.copy_(std)

    # ------------------------------------------------------------------------------ protocol
    @torch.no_grad()
    def reset(self, rows: Sequence[int] | None = None, seed: int | None = None) -> None:
        """Start episodes in ``rows`` (all when None): belief at the origin with variance 0,
        memory / landmarks / map of those rows forgotten; the readout and learned PI persist.
        ``seed``: the planner's generator gets ``seed``, row ``i``'s consolidation ``seed + i``."""
        chosen = _check_rows(rows, self.num_agents)
        if seed is not None:
            seed = checks.integer(seed, "seed", low=0)
            self.generator.manual_seed(seed)
            for row in chosen:
                self.row_generators[row].manual_seed(seed + row)
        if not chosen:
            return
        self._sync_belief_in()
        self.belief.reset(chosen)
        self._sync_belief_out()
        self.landmarks.reset(chosen)
        self.coverage.reset(chosen)
        self.steps[chosen] = 0
        self.heading[chosen] = 0.0
        self.target[chosen] = -1
        self.scan_steps[chosen] = 0
        self.target_range[chosen] = math.nan
        self.fruit_since[chosen] = 0
        self.missed[chosen] = -1
        self.previous_health[chosen] = math.nan
        self.ate[chosen] = False
        self.eaten_percept[chosen] = 0.0
        self.eaten_slot[chosen] = -1
        self.tasted[chosen] = 0.0
        self.goal_position[chosen] = math.nan
        self.last_mode[chosen] = 0
        self.frontier[chosen] = math.nan
        self.tree_valence[chosen] = 0.0
        self.tree_valence_std[chosen] = 1.0
        self.map_position[chosen] = 0.0

    @torch.no_grad()
    def perceive(self, observations: Mapping[str, np.ndarray]) -> Perception:
        """Steps 1-3, 5 and 6 of the module docstring for a dict of (B, ...) observation arrays: the
        belief, valence, landmarks, map and goal are updated; nothing is decided. Follow it with
        :meth:`finish_step` once the actions are chosen (``act`` does both, with the coverage and
        the planner between)."""
        c = self.config
        B, P = self.num_agents, c["percept_dim"]
        arrays = _check_observations(observations, B, P)
        as_t = lambda key: torch.as_tensor(np.asarray(arrays[key], dtype=np.float32))  # noqa: E731
        sight, motion, obs_heading = as_t("sight"), as_t("motion"), as_t("heading")
        distance = as_t("sight_distance").reshape(B)
        health = as_t("health").reshape(B).to(torch.float64)
        seen = distance > 0
        rows = torch.arange(B)

        # 1. path integration
        self._sync_belief_in()
        self.belief.step(motion)

        # 2. valence from the outcome of last step's eat
        bare = self._learn_bites(health, torch.ones(B, dtype=torch.bool))

        # 3. landmarks, then the valence of the sight and of the changed or stale slots
        if bool(seen.any()):
            self._adapt(rows[seen], sight[seen])
        sight_mean, sight_std = self.valence(rows, sight)
        heading_in = torch.where(seen[:, None], obs_heading, torch.ones_like(obs_heading))
        result = self.landmarks.observe(self.belief, sight, distance, heading_in, self.steps.clone(),
                                        valence=sight_mean.double())
        written = result["written"]
        new = (written >= 0) & (self.memory.counts[rows, written.clamp_min(0)] == 1)
        self.fruit_since[rows[new], written[new]] = 0  # never eaten from: the episode start's fruit, regrown since
        self.tasted[rows[new], written[new]] = 0.0  # a new tree in that slot
        self._refresh_valence(written)
        sighted = torch.where(result["slot"] >= 0, result["slot"], result["written"])  # (B,)
        travel = self.planner.config.max_step + 4.0 * c["motion_noise"]
        still = seen & (self.target >= 0) & ((distance * c["sight_range"] - self.target_range).abs() <= travel)
        sighted = torch.where(still, self.target, sighted)
        mark = bare & seen & (sighted >= 0)
        if bool(mark.any()):
            self._mark_bare(mark, sighted)
        taste = torch.where(seen & (sighted >= 0), self.tasted[rows, sighted.clamp_min(0)], 0.0)
        sight_mean, sight_std = _own_taste(sight_mean, sight_std, taste)
        self._sync_belief_out()

        position = self.belief.position().float()

        # 5. consolidation into the map layer
        every = c["consolidate_every"]
        if every:
            due = (self.steps > 0) & (self.steps % every == 0) & self.memory.valid.any(-1)
            for row in torch.nonzero(due).flatten().tolist():
                topography = self.memory.topography
                if topography is None:
                    topography = Topography(self.memory.location_dim + P, c["map_height"], c["map_width"],
                                            generator=torch.Generator().manual_seed(0))
                self.memory.consolidate(topography, agent=row, epochs=c["map_epochs"], batch_size=64,
                                        generator=self.row_generators[row])
                units = self.memory.map_weights[row, :, :self.memory.location_dim]
                self.map_position[row] = torch.nan_to_num(self.metric.decode(units)[1], nan=0.0, posinf=0.0,
                                                          neginf=0.0)

        # 6. homing goal
        goal = goal_mask = None
        goal_confidence = torch.zeros(B, dtype=torch.float64)
        goal_slot = torch.full((B,), -1, dtype=torch.long)
        self.goal_position.fill_(math.nan)
        if "goal" in arrays:
            goal_percept = as_t("goal")
            wants = goal_percept.abs().sum(-1) > 0
            if bool(wants.any()) and bool(self.memory.valid.any()):
                codes, weights, slots = self.memory.recall_location(goal_percept, 1, return_slots=True)  # (B, 1, ...)
                goal = torch.nan_to_num(self.metric.decode(codes[:, 0])[1], nan=0.0, posinf=0.0, neginf=0.0)
                goal_mask = wants & (weights[:, 0] > 0)
                goal_confidence = torch.where(goal_mask, weights[:, 0].double(), 0.0)
                goal_slot = torch.where(goal_mask, slots[:, 0], -1)
                self.goal_position.copy_(torch.where(goal_mask[:, None], goal, torch.full_like(goal, math.nan)))

        return Perception(sight=sight, seen=seen, distance=distance, health=health, position=position,
                          heading=obs_heading, sight_valence=sight_mean, sight_valence_std=sight_std,
                          sighted=sighted, goal=goal, goal_mask=goal_mask, goal_confidence=goal_confidence,
                          goal_slot=goal_slot)

    def _learn_bites(self, health: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Learn valence from the outcome of last step's bites in ``rows`` (B,) bool, read off the
        health (B,) float64 now (over max_health); returns (B,) bool, the bites that found no fruit."""
        c, B = self.config, self.num_agents
        delta = (health - self.previous_health.double()) * c["max_health"]
        tried = self.ate & torch.isfinite(delta) & rows
        half = 0.5 * c["fruit_health"]
        edible, poison = tried & (delta > half), tried & (delta < -half)
        learned = edible | poison
        if bool(learned.any()):
            every = torch.arange(B)
            outcomes = torch.where(edible, 1.0, -1.0)[learned]
            self._learn(every[learned], self.eaten_percept[learned], outcomes)
            own = learned & (self.eaten_slot >= 0)
            self.tasted[every[own], self.eaten_slot[own]] = torch.where(edible, 1.0, -1.0)[own]
        return tried & ~learned & (delta.abs() < 0.2 * c["fruit_health"]) & (health < 1.0)

    @torch.no_grad()
    def end_episodes(self, observations: Mapping[str, np.ndarray], rows: Sequence[int]) -> None:
        """End the episodes of ``rows`` on their terminal ``observations`` (a dict of (B, ...) arrays;
        other rows' entries are ignored): the readouts learn from the last bites and adapt to the
        last sights as :meth:`perceive` would, then :meth:`reset` forgets those rows' episodes."""
        chosen = _check_rows(rows, self.num_agents)
        B = self.num_agents
        arrays = _check_observations(observations, B, self.config["percept_dim"])
        ending = torch.zeros(B, dtype=torch.bool)
        ending[chosen] = True
        self._learn_bites(torch.as_tensor(arrays["health"], dtype=torch.float64).reshape(B), ending)
        seen = ending & torch.as_tensor(arrays["sight_distance"].reshape(B) > 0)
        if bool(seen.any()):
            self._adapt(torch.arange(B)[seen], torch.as_tensor(arrays["sight"], dtype=torch.float32)[seen])
        self.reset(chosen)

    @torch.no_grad()
    def finish_step(self, perception: Perception, eat: torch.Tensor) -> None:
        """End the step begun by :meth:`perceive`: ``eat`` (B,) bool are the eat flags sent to the
        world; a bite at a tree in sight is learned from on the next step's health."""
        eat = torch.as_tensor(eat, dtype=torch.bool).reshape(self.num_agents) & perception.seen
        self.ate.copy_(eat)
        self.eaten_percept.copy_(torch.where(eat[:, None], perception.sight, torch.zeros_like(perception.sight)))
        self.eaten_slot.copy_(torch.where(eat, perception.sighted, -1))
        self.previous_health.copy_(perception.health.float())
        self.steps += 1
        self.clock += 1

    @torch.no_grad()
    def act(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, 3) float32 actions in [-1, 1] for a dict of (B, ...) observation arrays."""
        c = self.config
        B = self.num_agents
        p = self.perceive(observations)
        seen, distance, sighted, goal, goal_mask = p.seen, p.distance, p.sighted, p.goal, p.goal_mask
        rows = torch.arange(B)

        # 4. coverage: the cells the sight cone swept (the planner's: perceive alone leaves it)
        position = p.position
        reach = torch.where(seen, distance, 1.0) * c["sight_range"]
        self.coverage.mark(position, p.heading, reach, c["cone_cos"])
        # 7. plan
        frontier = self.coverage.frontier(position)
        C = self.tree_slots(sighted)
        trees, valid, fruit, last_seen, expected = self.remembered_trees(C)
        places, places_mask = trees, valid
        mapped = self._map_places()
        if mapped is not None:
            places = torch.cat([trees, mapped[0]], dim=1)
            places_mask = torch.cat([valid, mapped[1]], dim=1)
        heading = torch.where((self.heading.norm(dim=-1) > 0)[:, None], self.heading, p.heading)
        in_sight = torch.where(seen & (sighted >= 0), expected[rows, sighted.clamp_min(0)],
                               torch.ones(B, dtype=torch.float64))
        plan = self.planner.act(
            position, heading, p.health * c["max_health"], self.steps[:, None],
            tree_positions=trees, valid=valid, valence_mean=self.tree_valence[:, :C],
            valence_std=self.tree_valence_std[:, :C], fruit_estimate=fruit.float(),
            last_seen=last_seen, current=self.target.clone(),
            sight_valence_mean=p.sight_valence.float(), sight_valence_std=p.sight_valence_std.float(),
            sight_distance=torch.where(seen, distance.double() * c["sight_range"],
                                       torch.full((B,), math.inf, dtype=torch.float64)).float(),
            fruit_in_sight=in_sight.float(), sighted=torch.where(seen, sighted, -1), goal=goal, goal_mask=goal_mask,
            goal_sighted=seen & (sighted >= 0) & (sighted == p.goal_slot),
            places=places, places_mask=places_mask, position_std=self.sigma().float(),
            closure_std=self._closure_std(p.health * c["max_health"], C).float(),
            frontier=frontier, generator=self.generator)
        action = plan.action.clone()
        eat = (action[:, 2] > 0) & seen
        action[:, 2] = torch.where(eat, 1.0, -1.0)
        # A full turn at a remembered tree's place without seeing it: the memory was wrong there;
        # count it bare (no expected fruit until the next regrowth tick) so the target moves on.
        # Likewise a target in sight and in reach that the eat rule declines (its look now says no
        # fruit, or not edible): nothing to be had there now.
        self.scan_steps.copy_(torch.where(plan.mode == SCAN, self.scan_steps + 1, 0))
        lost = self.scan_steps > math.ceil(2 * math.pi / self.planner.config.scan_turn)
        lost |= (plan.target >= 0) & seen & (sighted == plan.target) & ~eat \
            & (distance * c["sight_range"] <= self.planner.config.eat_radius)
        if bool(lost.any()):
            self.scan_steps[lost] = 0
            relocalizing = lost & (plan.landmark >= 0)
            self.missed[rows[relocalizing], plan.landmark[relocalizing]] = self.steps[relocalizing]
            lost &= plan.target >= 0
            self._mark_bare(lost, plan.target)
        self.target.copy_(plan.target)
        in_view = seen & (plan.target >= 0) & (sighted == plan.target)
        self.target_range.copy_(torch.where(in_view, distance * c["sight_range"], math.nan))
        self.heading.copy_(plan.heading.float())
        self.last_mode.copy_(plan.mode)
        self.frontier.copy_(frontier)
        self.finish_step(p, eat)
        return action.numpy().astype(np.float32)

    # ------------------------------------------------------------------------------ overlays
    @property
    @torch.no_grad()
    def overlays(self) -> list:
        """Belief overlays of row 0 (the env a vector env renders); the target is the tree sought, or
        the frontier cell while exploring."""
        position, sigma = self.position()[0], float(self.sigma()[0])
        trees = self.landmarks.landmarks(0)
        slots = trees["slot"]
        units = None
        mapped = self._map_places()
        if mapped is not None and bool(mapped[1][0].any()):
            units = mapped[0][0]
        target = None
        t = int(self.target[0])
        if t >= 0 and bool(self.memory.valid[0, t]):
            target = self.landmarks.position[0, t]
        elif int(self.last_mode[0]) == EXPLORE and bool(torch.isfinite(self.frontier[0]).all()):
            target = self.frontier[0]  # exploring: the frontier cell it heads for
        goal = self.goal_position[0]
        goal = goal if bool(torch.isfinite(goal).all()) else None
        return belief_overlays(position, sigma, trees["position"], self.tree_valence[0, slots].clamp(-1, 1),
                               self.tree_valence_std[0, slots], map_units=units, target=target, goal=goal)

    # ------------------------------------------------------------------------------ saving
    def save(self, path) -> None:
        """Write the agent (config, learned parts, memory and episode state) to ``path``."""
        torch.save({"format": FORMAT, "config": self.config, "state_dict": self.state_dict(),
                    "generators": [self.generator.get_state()] + [g.get_state() for g in self.row_generators]},
                   path)

    @classmethod
    def load(cls, path) -> "TEMAgent":
        """An agent saved by :meth:`save`; ValueError for a corrupted file or another format."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # corrupted / not a torch file
            raise ValueError(f"path: {path!s} is not a readable TEMAgent checkpoint ({type(error).__name__}: "
                             f"{error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"path: expected a TEMAgent checkpoint of format {FORMAT!r}, got {got!r}")
        for key in ("config", "state_dict", "generators"):
            if key not in data:
                raise ValueError(f"path: TEMAgent checkpoint lacks {key!r}")
        try:
            agent = cls(**data["config"])
        except Exception as error:
            raise ValueError(f"path: bad TEMAgent config in checkpoint ({error})") from None
        try:
            agent.load_state_dict(data["state_dict"])
            generators = data["generators"]
            if len(generators) != 1 + agent.num_agents:
                raise ValueError(f"expected {1 + agent.num_agents} generator states, got {len(generators)}")
            agent.generator.set_state(generators[0])
            for g, state in zip(agent.row_generators, generators[1:]):
                g.set_state(state)
        except Exception as error:
            raise ValueError(f"path: TEMAgent checkpoint does not fit its config ({type(error).__name__}: "
                             f"{error})") from None
        agent._sync_belief_in()
        return agent
