"""Planner: where to go and when to eat, from the agent's beliefs (batched over B agents).

Inputs are beliefs, never the world: the believed position ``(B, 2)``, remembered trees (believed
positions ``(B, M, 2)``, a validity mask ``(B, M)``, valence mean and std ``(B, M)`` from
:class:`~treeworld.agents.valence.ValenceReadout`, the fruit seen at the last sight ``(B, M)`` and
the step of that sight ``(B, M)``), what is in sight now, health and the step.

The rules (constants in :class:`PlannerConfig`):

- Kinds. From a valence mean ``m`` in (-1, 1) and its std ``s``: *poisonous* when
  ``m < -poison_threshold`` and ``s <= known_std`` (never targeted, never eaten, whatever else
  holds); *edible* when ``m > 0`` and ``s <= known_std``; anything else is *unknown* (a first
  bite is a risk of ``fruit_health``): allowed only when ``health >= risk_reserve * fruit_health``
  and ``m + taste_optimism * s >= 0``: an upper confidence bound (a bite's expected health change
  is ``m * fruit_health``, and it also tells what the kind is). With ``taste_optimism = 0`` a kind
  the readout leans poisonous on is never tasted: an agent learning alone then starved after its
  first poisonous bite, whose generalization leaves every untasted kind leaning poisonous (32
  validation worlds, 9,000+, one readout per agent: survival 0.25 clean, 0.50 noisy; with 0.5,
  and ``explore_until`` 4 instead of 8: 1.00 and 0.94, and 0.91 and 0.84 on worlds 9,100+).
  Capping the bound at ``m >= -poison_threshold`` (never taste a kind the readout leans strongly
  poisonous on) cost more food than the poison it saved (0.91 / 0.94 and 0.78 / 0.78).
- Expected fruit. The world regrows one fruit on every tree on a global clock (steps that are
  multiples of ``regrow_every``), so the fruit now of a tree seen with ``f`` at step ``t`` is
  ``min(max_fruit, f + floor(now / R) - floor(t / R))`` (exact when nobody ate it since).
- Score of a remembered tree: ``P(edible) * expected_fruit / (distance + distance_offset)`` with
  ``P(edible) = (1 + m) / 2`` (the valence mean is ``E[2 Phi(f) - 1]``), times
  ``unknown_discount`` for unknown kinds; ``-inf`` for poisonous kinds, invalid slots and
  unaffordable unknowns; trees with no expected fruit score 0 and are never chosen.
- Worth a trip: expected fruit ``>= min_fruit`` (``>= max_fruit - 1`` while fewer than
  ``explore_until`` trees worth eating are known), or any when ``health < hungry_health``; other
  trees score 0 (not chosen), so a sated agent explores to find more trees instead of circling
  the few it knows as each regrows one fruit.
- Hysteresis. The current target is kept unless another scores more than ``hysteresis`` times
  its score (or it no longer scores above 0).
- Eating. Eat when the tree in sight is within ``eat_radius``, shows fruit, and is edible (or
  unknown and the risk affordable); never when it is poisonous. The world feeds on the nearest
  tree in reach, which may be another tree than the one in sight: a bite is also declined unless
  every remembered tree the agent would not eat (a *hazard*: not edible and a valence mean below 0,
  other than the one in sight) is believed at
  least ``hazard_margin`` farther than the tree in sight, and a target tree with a hazard within
  ``eat_radius + hazard_margin`` of it is approached to ``crowded_stop`` instead of
  ``stop_fraction * eat_radius`` (``sight_stop`` in sight).
- Exploring. Head for the given ``frontier`` place (the TEM's: the nearest promising cell it has
  not looked at, :class:`~treeworld.agents.coverage.Coverage`); without one, away from the density
  of given places (visited places, map units, remembered trees: repulsion
  ``sum (p - v) / |p - v| * exp(-|p - v| / explore_scale)``). Either way bent inward over the
  last ``wall_margin`` before the arena wall, turning at most ``max_turn`` radians per step (plus
  ``explore_jitter`` radians of noise), at full speed; and every ``explore_scan_every`` steps of
  the clock, a full turn in place (``scan_turn`` per step): sight is a narrow cone, and a straight
  walk past trees 30 units to the side never sees them.
- Relocalizing. With no target and health at least ``relocalize_health`` (below, finding food
  comes first), a belief std per axis (``position_std``) above ``relocalize_std``
  sends the agent to the nearest remembered tree whose loop closure would leave a std
  (``closure_std``, the caller's filter computes it) below ``relocalize_ratio`` times its own: the
  active loop closing of SLAM. The explorer walks away from what it knows, so without it the
  belief drifts with the odometry for as long as the frontier lasts.
- :meth:`Planner.act` combines them: a homing goal place (rows with ``goal_mask``) -> straight
  there (or, with the goal tree in sight, straight at it along the heading), turning in place
  there until the goal tree is in sight; else a target -> to it, slowing to stop
  ``stop_fraction * eat_radius`` short; else a landmark to relocalize at, the same way; else
  explore. A target in sight (``sighted``, the slot the sight was recognised as, is the target)
  is approached straight along the heading, the freshest estimate of where it is (it is in the
  cone ahead), to ``sight_stop`` (in reach; closer, a tree off-centre in the cone leaves it, and
  the agent would scan for a tree it had in front of it); a target (or landmark) not in sight once its
  remembered place is reached is looked for: the heading turns ``scan_turn`` per step in place
  (mode ``SCAN``; a full turn that does not find it tells the caller the memory was wrong).
  Eating follows :meth:`Planner.eat_decision` in every mode; a bite is taken standing still.

Everything is a pure function of its arguments (the light state, the current target and heading,
is passed in and returned), so a batch equals its rows run one by one, except for the random
draws of exploration (``explore_jitter``, and a random heading when none is known).
Bad shapes or non-finite values raise ValueError naming the argument; wrong types TypeError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch

from treeworld import checks

_EPS = 1e-9


@dataclass(frozen=True)
class PlannerConfig:
    """Named constants of the planner (world ones default to :class:`treeworld.WorldConfig`'s)."""

    max_step: float = 5.0  # world units moved per step at |displacement action| = 1
    eat_radius: float = 10.0  # a tree is in reach within this distance (world units)
    arena_radius: float | None = 500.0  # disc arena radius (None: open plane, no wall bias)
    regrow_every: int = 100  # steps between the world's regrowth ticks (one fruit per tree)
    max_fruit: int = 5  # most fruit a tree carries
    initial_fruit: float = 2.5  # expected fruit of a tree at the episode start (drawn uniformly in 0..max_fruit)
    fruit_health: float = 25.0  # health gained (edible) or lost (poison) per bite
    poison_threshold: float = 0.3  # valence mean below -this (with a known std) = believed poisonous
    known_std: float = 0.5  # valence std at or below this = the kind is known; above = unknown
    unknown_discount: float = 0.5  # value of an unknown kind's fruit, relative to a sure one
    risk_reserve: float = 4.0  # a first bite needs health >= risk_reserve * fruit_health (100)
    taste_optimism: float = 0.5  # ... and a valence mean + taste_optimism * std >= 0 (an upper confidence bound)
    distance_offset: float = 20.0  # added to the distance: score = value / (distance + offset)
    min_fruit: float = 3.0  # a tree is worth a trip with at least this much expected fruit ...
    hungry_health: float = 200.0  # ... or with any, below this health (else explore: find more trees)
    explore_until: int = 4  # while fewer trees worth eating are known, a sated trip needs max_fruit - 1
    hysteresis: float = 1.5  # switch targets only to one scoring > hysteresis * current score
    stop_fraction: float = 0.5  # stop this fraction of eat_radius short of a target tree's remembered place
    sight_stop: float = 8.0  # a tree in sight is approached to this distance (in reach, and still in the cone)
    hazard_margin: float = 5.0  # a bite needs every hazard believed this much farther than the tree in sight
    crowded_stop: float = 1.0  # stop this close to a target tree with a hazard near it (world units)
    nudge: float = 0.1  # step (world units) toward a target already within the stop distance
    explore_scale: float = 50.0  # length scale (world units) of the repulsion from known places
    wall_margin: float = 100.0  # start bending inward this far from the arena wall
    max_turn: float = 0.3  # largest heading change per exploring step (radians)
    scan_turn: float = 0.8  # heading change per scanning step (radians; the sight cone is 0.9 wide)
    explore_scan_every: int = 30  # exploring, turn a full circle in place every this many steps (0: never)
    explore_jitter: float = 0.05  # std of the random heading noise per exploring step (radians)
    relocalize_std: float = 4.0  # sated with no target, a belief std (per axis) above this sends it to a landmark
    relocalize_ratio: float = 0.8  # ... one whose loop closure would leave under this fraction of the std (0: never)
    relocalize_health: float = 600.0  # ... and only with at least this health (below, finding food comes first)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("regrow_every", "max_fruit", "explore_scan_every", "explore_until"):
                checks.integer(value, f.name, low=1 if f.name == "regrow_every" else 0)
            elif f.name == "arena_radius":
                if value is not None:
                    checks.positive(value, f.name)
            elif f.name in ("hysteresis",):
                checks.real(value, f.name, low=1.0)
            elif f.name in ("stop_fraction", "unknown_discount"):
                checks.real(value, f.name, low=0.0, high=1.0)
            elif f.name in ("poison_threshold", "known_std", "relocalize_ratio"):
                checks.real(value, f.name, low=0.0, high=1.0)
            elif f.name in ("max_step", "eat_radius", "explore_scale", "max_turn", "scan_turn", "crowded_stop",
                            "sight_stop", "relocalize_std"):
                checks.positive(value, f.name)
            else:
                checks.positive(value, f.name, strict=False)
        if self.sight_stop >= self.eat_radius:
            raise ValueError(f"sight_stop: expected < eat_radius={self.eat_radius}, got {self.sight_stop}")
        if self.initial_fruit > self.max_fruit:
            raise ValueError(f"initial_fruit: expected at most max_fruit={self.max_fruit}, got {self.initial_fruit}")


class Plan(NamedTuple):
    action: torch.Tensor  # (B, 3) float32 in [-1, 1]: (dx, dy) / max_step, eat (> 0) or not
    target: torch.Tensor  # (B,) int64 remembered tree targeted, -1 for none
    heading: torch.Tensor  # (B, 2) unit direction of this step's move (the previous one if no move)
    mode: torch.Tensor  # (B,) int64: 0 explore, 1 go to a target tree, 2 homing, 3 scan for the tree sought,
    #                     4 go to a landmark to relocalize
    landmark: torch.Tensor  # (B,) int64 remembered tree sought to relocalize, -1 for none


EXPLORE, FORAGE, HOMING, SCAN, RELOCALIZE = 0, 1, 2, 3, 4


# ---------------------------------------------------------------------------------------- checks
def _float(x: Any, name: str, shape: tuple[int, ...], allow_inf: bool = False) -> torch.Tensor:
    checks.float_tensor(x, name)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    if allow_inf:
        if bool(torch.isnan(x).any()):
            raise ValueError(f"{name}: expected no NaN, got {int(torch.isnan(x).sum())} NaN of {x.numel()}")
    else:
        checks.finite_tensor(x, name)
    return x


def _bool(x: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor, got {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    return x


def _batch(position: Any) -> int:
    checks.last_dim(position, 2, "position", "2")
    if position.ndim != 2:
        raise ValueError(f"position: expected shape (B, 2), got {tuple(position.shape)}")
    checks.finite_tensor(position, "position")
    return position.shape[0]


def _steps(x: Any, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A step count: a number or a tensor broadcastable to ``shape``, as float64."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            raise TypeError(f"{name}: expected a number or a numeric tensor, got {x.dtype}")
        t = x.to(torch.float64)
        try:
            t = torch.broadcast_to(t, shape)
        except RuntimeError:
            raise ValueError(f"{name}: expected a shape broadcastable to {shape}, got {tuple(x.shape)}") from None
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values")
        return t.to(like.device)
    return torch.full(shape, checks.real(x, name), dtype=torch.float64, device=like.device)


def _health(health: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(health, torch.Tensor):
        return _float(health, "health", (batch,)).to(like.device, torch.float64)
    return torch.full((batch,), checks.real(health, "health"), dtype=torch.float64, device=like.device)


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = v.norm(dim=-1, keepdim=True)
    return v / norm.clamp_min(_EPS), norm[..., 0]


def _ahead(heading: torch.Tensor, distance: torch.Tensor, stop: Any, max_step: float) -> torch.Tensor:
    """(B, 2) float64 step along ``heading`` (B, 2) towards a tree seen ``distance`` (B,) ahead, stopping
    ``stop`` (a number or (B,)) short of it; no step where nothing is seen (distance +inf)."""
    reach = (distance - stop).clamp(0.0, max_step).nan_to_num(0.0, 0.0, 0.0)
    return _unit(heading.double())[0] * reach[:, None]


# -------------------------------------------------------------------------------------- planner
class Planner:
    """The planner of a TEM agent (stateless: state goes in and comes back in :class:`Plan`)."""

    def __init__(self, config: PlannerConfig | None = None):
        self.config = PlannerConfig() if config is None else checks.instance(config, PlannerConfig, "config")

    # -------------------------------------------------------------------------------- beliefs
    def kinds(self, valence_mean: torch.Tensor, valence_std: torch.Tensor, health: torch.Tensor):
        """Boolean masks (poisonous, edible, unknown-and-affordable) of valence beliefs; ``health``
        broadcasts against the last axis (pass it as ``(B, 1)`` for ``(B, M)`` beliefs)."""
        c = self.config
        known = valence_std <= c.known_std
        poisonous = known & (valence_mean < -c.poison_threshold)
        edible = known & (valence_mean > 0)
        worth_a_taste = valence_mean + c.taste_optimism * valence_std >= 0  # an upper confidence bound
        affordable = (health >= c.risk_reserve * c.fruit_health) & worth_a_taste
        risky = ~poisonous & ~edible & affordable
        return poisonous, edible, risky

    def expected_fruit(self, fruit_estimate: torch.Tensor, last_seen: Any, now: Any,
                       regrow_every: int | None = None, max_fruit: int | None = None) -> torch.Tensor:
        """Fruit expected now on each remembered tree: the fruit at its last sight plus the world's
        regrowth ticks since, ``floor(now / R) - floor(last_seen / R)``, capped at ``max_fruit``."""
        return expected_fruit(fruit_estimate, last_seen, now,
                              self.config.regrow_every if regrow_every is None else regrow_every,
                              self.config.max_fruit if max_fruit is None else max_fruit)

    def scores(self, position, tree_positions, valid, valence_mean, valence_std, fruit_estimate,
               last_seen, now, health) -> torch.Tensor:
        """(B, M) float64 score of every remembered tree (see the module doc); -inf = never."""
        batch = _batch(position)
        checks.float_tensor(tree_positions, "tree_positions")
        if tree_positions.ndim != 3 or tree_positions.shape[0] != batch or tree_positions.shape[2] != 2:
            raise ValueError(f"tree_positions: expected shape ({batch}, M, 2), got {tuple(tree_positions.shape)}")
        checks.finite_tensor(tree_positions, "tree_positions")
        shape = tuple(tree_positions.shape[:2])
        valid = _bool(valid, "valid", shape)
        valence_mean = _float(valence_mean, "valence_mean", shape)
        valence_std = _float(valence_std, "valence_std", shape)
        if bool((valence_mean.abs() > 1).any()):
            raise ValueError("valence_mean: expected values in [-1, 1]")
        if bool((valence_std < 0).any()):
            raise ValueError("valence_std: expected values >= 0")
        _float(fruit_estimate, "fruit_estimate", shape)
        health = _health(health, batch, position)
        fruit = self.expected_fruit(fruit_estimate, last_seen, now)
        c = self.config
        mean, std = valence_mean.double(), valence_std.double()
        poisonous, edible, risky = self.kinds(mean, std, health[:, None])
        value = (1 + mean) / 2 * fruit * torch.where(edible, 1.0, c.unknown_discount)
        distance = (tree_positions.double() - position.double()[:, None]).norm(dim=-1)
        score = value / (distance + c.distance_offset)
        allowed = valid & ~poisonous & (edible | risky)
        few = allowed.sum(-1, keepdim=True) < c.explore_until  # knows too few trees: hold out for full ones
        need = torch.where(few, float(max(c.max_fruit - 1, 1)), c.min_fruit)
        worth = (fruit >= need) | (health[:, None] < c.hungry_health)
        return torch.where(allowed, torch.where(worth, score, 0.0), -math.inf)

    def choose_targets(self, position, tree_positions, valid, valence_mean, valence_std, fruit_estimate,
                       last_seen, now, health, current: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) int64 index of the remembered tree to go to (-1 for none): the best score above 0,
        keeping ``current`` (``(B,)`` int64, -1 for none) unless the best beats it by ``hysteresis``."""
        score = self.scores(position, tree_positions, valid, valence_mean, valence_std, fruit_estimate,
                            last_seen, now, health)
        batch, m = score.shape
        if current is None:
            current = torch.full((batch,), -1, dtype=torch.int64, device=score.device)
        if not isinstance(current, torch.Tensor) or current.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"current: expected an int64 tensor, got "
                            f"{current.dtype if isinstance(current, torch.Tensor) else type(current).__name__}")
        if tuple(current.shape) != (batch,):
            raise ValueError(f"current: expected shape ({batch},), got {tuple(current.shape)}")
        if bool(((current < -1) | (current >= m)).any()):
            raise ValueError(f"current: expected indices in [-1, {m}), got {current.tolist()}")
        current = current.to(score.device, torch.int64)
        if m == 0:
            return torch.full((batch,), -1, dtype=torch.int64, device=score.device)
        best_score, best = score.max(dim=1)
        best = torch.where(best_score > 0, best, -1)
        held = score.gather(1, current.clamp_min(0)[:, None])[:, 0]
        keep = (current >= 0) & (held > 0) & ~(best_score > self.config.hysteresis * held)
        return torch.where(keep, current, best)

    # ------------------------------------------------------------------------------------ eating
    def eat_decision(self, sight_valence_mean, sight_valence_std, sight_distance, fruit_in_sight,
                     health, hazard_distance=None) -> torch.Tensor:
        """(B,) bool: eat now. The tree in sight (``sight_distance`` +inf when none) must be within
        ``eat_radius``, show fruit (``fruit_in_sight > 0``) and be edible, or unknown with the risk
        affordable; a kind believed poisonous is never eaten; the nearest hazard (``hazard_distance``
        (B,), +inf or None for none) must be believed ``hazard_margin`` farther than the tree in sight."""
        checks.float_tensor(sight_valence_mean, "sight_valence_mean")
        if sight_valence_mean.ndim != 1:
            raise ValueError(f"sight_valence_mean: expected shape (B,), got {tuple(sight_valence_mean.shape)}")
        batch = sight_valence_mean.shape[0]
        mean = _float(sight_valence_mean, "sight_valence_mean", (batch,)).double()
        std = _float(sight_valence_std, "sight_valence_std", (batch,)).double()
        if bool((mean.abs() > 1).any()):
            raise ValueError("sight_valence_mean: expected values in [-1, 1]")
        if bool((std < 0).any()):
            raise ValueError("sight_valence_std: expected values >= 0")
        distance = _float(sight_distance, "sight_distance", (batch,), allow_inf=True).to(mean.device)
        if bool((distance < 0).any()):
            raise ValueError("sight_distance: expected values >= 0 (+inf for no tree in sight)")
        if not isinstance(fruit_in_sight, torch.Tensor) or fruit_in_sight.dtype == torch.bool:
            raise TypeError("fruit_in_sight: expected a numeric torch.Tensor")
        if tuple(fruit_in_sight.shape) != (batch,):
            raise ValueError(f"fruit_in_sight: expected shape ({batch},), got {tuple(fruit_in_sight.shape)}")
        if fruit_in_sight.is_floating_point():
            checks.finite_tensor(fruit_in_sight, "fruit_in_sight")
        health = _health(health, batch, mean)
        poisonous, edible, risky = self.kinds(mean, std, health)
        eat = (distance <= self.config.eat_radius) & (fruit_in_sight.to(mean.device) > 0) & ~poisonous & (edible | risky)
        if hazard_distance is not None:
            hazard = _float(hazard_distance, "hazard_distance", (batch,), allow_inf=True).double().to(mean.device)
            eat &= hazard - distance >= self.config.hazard_margin
        return eat

    # --------------------------------------------------------------------------------- exploring
    def explore_direction(self, position, places, heading, places_mask: torch.Tensor | None = None,
                          generator: torch.Generator | None = None,
                          frontier: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2) unit direction to explore: towards ``frontier`` ``(B, 2)`` (a place to look at,
        e.g. :meth:`Coverage.frontier`; nan rows: none), else away from ``places`` ``(B, N, 2)``
        (visited places, map units, remembered trees; ``places_mask`` ``(B, N)`` bool marks the real
        ones), bent inward near the wall, turning at most ``max_turn`` from ``heading`` ``(B, 2)``
        (zero rows: no heading yet, any direction)."""
        batch = _batch(position)
        checks.float_tensor(places, "places")
        if places.ndim != 3 or places.shape[0] != batch or places.shape[2] != 2:
            raise ValueError(f"places: expected shape ({batch}, N, 2), got {tuple(places.shape)}")
        checks.finite_tensor(places, "places")
        heading = _float(heading, "heading", (batch, 2))
        n = places.shape[1]
        mask = torch.ones(batch, n, dtype=torch.bool, device=position.device) if places_mask is None \
            else _bool(places_mask, "places_mask", (batch, n))
        generator = checks.generator(generator)
        c = self.config
        p = position.double()
        away, dist = _unit(p[:, None] - places.double().to(p.device))  # (B, N, 2), (B, N)
        weight = torch.exp(-dist / c.explore_scale) * mask
        push = (away * weight[..., None]).sum(1)  # (B, 2)
        head, head_norm = _unit(heading.double())
        has_heading = head_norm > _EPS
        want, push_norm = _unit(push)
        # no push: keep going; the push only matters next to what the agent knows (relative to 1 place)
        strength = (push_norm / (push_norm + math.exp(-1.0))).clamp(0, 1)[:, None]
        want = _unit(want * strength + head * (1 - strength))[0]
        if frontier is not None:
            checks.float_tensor(frontier, "frontier")
            if tuple(frontier.shape) != (batch, 2):
                raise ValueError(f"frontier: expected shape ({batch}, 2), got {tuple(frontier.shape)}")
            frontier = frontier.double().to(p.device)
            has = torch.isfinite(frontier).all(-1)
            if not bool((has | torch.isnan(frontier).all(-1)).all()):
                raise ValueError("frontier: expected rows that are finite, or all NaN (no frontier)")
            want = torch.where(has[:, None], _unit(torch.nan_to_num(frontier) - p)[0], want)
        if c.arena_radius is not None:
            out, radius = _unit(p)
            excess = ((radius - (c.arena_radius - c.wall_margin)) / c.wall_margin).clamp(0, 1)[:, None]
            want = _unit(want * (1 - excess) - out * (2 * excess))[0]
        want_angle = torch.atan2(want[:, 1], want[:, 0])
        head_angle = torch.atan2(head[:, 1], head[:, 0])
        turn = torch.remainder(want_angle - head_angle + math.pi, 2 * math.pi) - math.pi
        angle = head_angle + turn.clamp(-c.max_turn, c.max_turn)
        noise = torch.randn(batch, generator=generator, dtype=torch.float64).to(p.device)
        random_angle = torch.rand(batch, generator=generator, dtype=torch.float64).to(p.device) * 2 * math.pi
        angle = angle + c.explore_jitter * noise
        no_want = want.norm(dim=-1) <= _EPS
        start = torch.where(no_want, random_angle, want_angle)
        angle = torch.where(has_heading, angle, start)
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1).to(position.dtype)

    def _turned(self, heading: torch.Tensor) -> torch.Tensor:
        """(B, 2) float64 unit headings turned by ``scan_turn`` (counter-clockwise; no heading: from +x)."""
        head, norm = _unit(heading.double())
        head = torch.where((norm > _EPS)[:, None], head, torch.tensor([1.0, 0.0], dtype=head.dtype, device=head.device))
        cos, sin = math.cos(self.config.scan_turn), math.sin(self.config.scan_turn)
        return torch.stack([head[:, 0] * cos - head[:, 1] * sin, head[:, 0] * sin + head[:, 1] * cos], -1)

    def may_relocalize(self, position_std: torch.Tensor, health: torch.Tensor) -> torch.Tensor:
        """(B,) bool: rows whose belief std ``position_std`` (B,) exceeds ``relocalize_std`` with
        ``health`` (B,) at least ``relocalize_health`` (the rows that may seek a landmark)."""
        c = self.config
        return (position_std > c.relocalize_std) & (health >= c.relocalize_health)

    def relocalization_landmarks(self, position, tree_positions, valid, position_std, closure_std,
                                 health) -> torch.Tensor:
        """(B,) int64 remembered tree to walk to for a loop closure (-1 for none): in the rows that
        :meth:`may_relocalize`, the nearest valid tree whose closure would leave a std
        ``closure_std`` (B, M) below ``relocalize_ratio * position_std`` (+inf: not a candidate, e.g.
        looked for there and not found)."""
        batch = _batch(position)
        shape = (batch, tree_positions.shape[1])
        if position_std is None or closure_std is None:
            raise ValueError("position_std: position_std and closure_std go together")
        own = _float(position_std, "position_std", (batch,)).double()
        closing = _float(closure_std, "closure_std", shape, allow_inf=True).double()
        if bool((own < 0).any()) or bool((closing < 0).any()):
            raise ValueError("position_std: expected stds >= 0 (closure_std too)")
        if shape[1] == 0:
            return torch.full((batch,), -1, dtype=torch.int64, device=position.device)
        wanted = self.may_relocalize(own, _health(health, batch, position))
        candidate = valid & (closing < self.config.relocalize_ratio * own[:, None]) & wanted[:, None]
        distance = (tree_positions.double() - position.double()[:, None]).norm(dim=-1).masked_fill(~candidate, math.inf)
        best, slot = distance.min(1)
        return torch.where(torch.isfinite(best), slot, -1)

    def _approach(self, p, tree_xy, slot, stop, heading, sighted, seen_at, sight_stop) -> tuple[torch.Tensor, torch.Tensor]:
        """The step (B, 2) float64 towards remembered tree ``slot`` (B,) of ``tree_xy`` (B, M, 2): along
        the heading to ``sight_stop`` (B,) short of it when the sight (``sighted``, at ``seen_at``) is
        that tree, else to ``stop`` (B,) short of its remembered place; and (B,) bool rows arrived
        there without seeing it."""
        batch = p.shape[0]
        aim = tree_xy.gather(1, slot.clamp_min(0)[:, None, None].expand(batch, 1, 2))[:, 0]
        towards, dist = _unit(aim - p)
        move = towards * (dist - stop).clamp(0.0, self.config.max_step)[:, None]
        if sighted is None:
            return move, torch.zeros(batch, dtype=torch.bool, device=p.device)
        seen = (sighted == slot) & torch.isfinite(seen_at)
        move = torch.where(seen[:, None], _ahead(heading, seen_at, sight_stop, self.config.max_step), move)
        # (a tolerance: the float tail of the approach)
        return move, ~seen & (dist <= stop + self.config.max_step / 2)

    # ------------------------------------------------------------------------------------- acting
    def act(self, position, heading, health, now, *,
            tree_positions=None, valid=None, valence_mean=None, valence_std=None, fruit_estimate=None,
            last_seen=None, current=None,
            sight_valence_mean=None, sight_valence_std=None, sight_distance=None, fruit_in_sight=None,
            sighted=None, goal=None, goal_mask=None, goal_sighted=None, places=None, places_mask=None,
            position_std=None, closure_std=None, frontier=None,
            generator: torch.Generator | None = None) -> Plan:
        """One step for B agents: homing goal -> go there; else target tree -> go to it; else a
        landmark to relocalize at; else explore.

        Remembered trees (``tree_positions`` ... ``last_seen``) may be omitted together (no trees
        known), as may the sight arguments (nothing in sight; ``sighted`` (B,) int64 is the
        remembered tree the sight was recognised as, -1 for none), ``goal``/``goal_mask`` (no homing:
        ``goal`` (B, 2), ``goal_mask`` (B,) bool, rows with a goal place; ``goal_sighted`` (B,) bool,
        the tree in sight is the goal's), ``places`` (nothing to explore away from: the remembered
        trees are used if given), ``frontier`` (B, 2) (a place to explore towards, nan rows: none)
        and ``position_std`` (B,) / ``closure_std`` (B, M) (never relocalize)."""
        batch = _batch(position)
        heading = _float(heading, "heading", (batch, 2))
        health_t = _health(health, batch, position)
        c = self.config
        p = position.double()
        device = position.device
        target = torch.full((batch,), -1, dtype=torch.int64, device=device)
        tree_xy = None
        if tree_positions is not None:
            if any(x is None for x in (valid, valence_mean, valence_std, fruit_estimate, last_seen)):
                raise ValueError("valid: tree_positions, valid, valence_mean, valence_std, fruit_estimate and "
                                 "last_seen go together")
            target = self.choose_targets(position, tree_positions, valid, valence_mean, valence_std,
                                         fruit_estimate, last_seen, now, health_t, current)
            tree_xy = tree_positions.double()
            _, edible, _ = self.kinds(valence_mean.double(), valence_std.double(), health_t[:, None])
            hazard = valid & ~edible & (valence_mean < 0)  # (B, M) trees it would not eat (poisonous ones included)
        homing = torch.zeros(batch, dtype=torch.bool, device=device)
        if goal is not None or goal_mask is not None:
            goal = _float(goal, "goal", (batch, 2)).double()
            homing = _bool(goal_mask, "goal_mask", (batch,))
        # exploring
        if places is None:
            if tree_xy is not None:
                places, places_mask = tree_positions, valid
            else:
                places = position.new_zeros(batch, 0, 2)
                places_mask = None
        explore = self.explore_direction(position, places, heading, places_mask, generator, frontier).double()
        move = explore * c.max_step
        mode = torch.full((batch,), EXPLORE, dtype=torch.int64, device=device)
        turning = self._turned(heading) * c.nudge  # a step of turning in place
        if c.explore_scan_every:  # look around: a full turn in place every explore_scan_every steps
            clock = _steps(now, "now", (batch, 1), p)[:, 0]
            look = torch.remainder(clock, c.explore_scan_every) < math.ceil(2 * math.pi / c.scan_turn)
            move = torch.where(look[:, None], turning, move)
        # a target tree, else (belief too uncertain) a landmark to relocalize at
        landmark = torch.full((batch,), -1, dtype=torch.int64, device=device)
        if tree_xy is not None and tree_xy.shape[1]:  # (no slots: nothing to aim at, as with no trees)
            if sighted is not None:
                sighted = _steps(sighted, "sighted", (batch,), p).to(torch.int64)
                if sight_distance is None:
                    raise ValueError("sighted: needs sight_distance")
                seen_at = _float(sight_distance, "sight_distance", (batch,), allow_inf=True).double()
            rows = torch.arange(batch, device=device)
            aim = tree_xy.gather(1, target.clamp_min(0)[:, None, None].expand(batch, 1, 2))[:, 0]
            apart = (tree_xy - aim[:, None]).norm(dim=-1)  # (B, M) from the target
            near = hazard & (apart <= c.eat_radius + c.hazard_margin)
            if near.shape[1]:
                near[rows, target.clamp_min(0)] = False
            crowded = near.any(1)
            stop = torch.where(crowded, c.crowded_stop, c.stop_fraction * c.eat_radius)
            go = target >= 0
            if position_std is not None or closure_std is not None:
                landmark = self.relocalization_landmarks(position, tree_positions, valid, position_std, closure_std,
                                                         health_t)
                landmark = torch.where(go | homing, -1, landmark)
            seek = torch.where(go, target, landmark)
            sought = seek >= 0
            stop = torch.where(go, stop, c.stop_fraction * c.eat_radius)
            sight_stop = torch.where(go & crowded, c.crowded_stop, c.sight_stop)
            step, scan = self._approach(p, tree_xy, seek, stop, heading, sighted, None if sighted is None else seen_at,
                                        sight_stop)
            move = torch.where(sought[:, None], step, move)
            mode = torch.where(go, FORAGE, torch.where(sought, RELOCALIZE, mode))
            move = torch.where((sought & scan)[:, None], turning, move)
            mode = torch.where(sought & scan, SCAN, mode)
        # homing
        if bool(homing.any()):
            towards, dist = _unit(goal - p)
            home = towards * dist.clamp(max=c.max_step)[:, None]
            if goal_sighted is not None:  # the goal tree in sight: straight at it along the heading
                at = _float(sight_distance, "sight_distance", (batch,), allow_inf=True).double()
                seen_goal = _bool(goal_sighted, "goal_sighted", (batch,)) & torch.isfinite(at)
                home = torch.where(seen_goal[:, None], _ahead(heading, at, c.sight_stop, c.max_step), home)
                # at the remembered place with the goal tree not in sight: turn in place to find it
                home = torch.where((~seen_goal & (dist <= c.max_step / 2))[:, None], turning, home)
            move = torch.where(homing[:, None], home, move)
            mode = torch.where(homing, HOMING, mode)
        # eating
        if sight_valence_mean is not None:
            hazard_distance = None
            if tree_xy is not None and tree_xy.shape[1]:
                if sighted is not None:  # the tree in sight is not its own hazard
                    hazard[torch.arange(batch, device=device), sighted.clamp_min(0)] &= sighted < 0
                mine = (tree_xy - p[:, None]).norm(dim=-1)
                hazard_distance = torch.where(hazard, mine, math.inf).min(1).values
            eat = self.eat_decision(sight_valence_mean, sight_valence_std, sight_distance, fruit_in_sight, health_t,
                                    hazard_distance)
        else:
            eat = torch.zeros(batch, dtype=torch.bool, device=device)
        move = torch.where(eat[:, None], 0.0, move)  # a bite: stand still, the tree stays in the cone
        moved = move.norm(dim=-1, keepdim=True)
        new_heading = torch.where(moved > 0, move / moved.clamp_min(_EPS), heading.double())
        action = torch.cat([(move / c.max_step).clamp(-1, 1),
                            torch.where(eat, 1.0, -1.0)[:, None].to(move)], dim=-1)
        return Plan(action.float(), target, new_heading.to(position.dtype), mode, landmark)


def expected_fruit(fruit_estimate: torch.Tensor, last_seen: Any, now: Any, regrow_every: int = 100,
                   max_fruit: int = 5) -> torch.Tensor:
    """(B, M) float64 fruit expected now: ``min(max_fruit, fruit_estimate + floor(now / R) -
    floor(last_seen / R))`` (the world's regrowth ticks on every multiple of ``R`` steps)."""
    checks.float_tensor(fruit_estimate, "fruit_estimate")
    if fruit_estimate.ndim != 2:
        raise ValueError(f"fruit_estimate: expected shape (B, M), got {tuple(fruit_estimate.shape)}")
    checks.finite_tensor(fruit_estimate, "fruit_estimate")
    if bool((fruit_estimate < 0).any()):
        raise ValueError("fruit_estimate: expected values >= 0")
    shape = tuple(fruit_estimate.shape)
    regrow_every = checks.integer(regrow_every, "regrow_every", low=1)
    max_fruit = checks.integer(max_fruit, "max_fruit", low=0)
    seen = _steps(last_seen, "last_seen", shape, fruit_estimate)
    now_t = _steps(now, "now", shape, fruit_estimate)
    if bool((seen > now_t).any()):
        raise ValueError("last_seen: expected steps <= now")
    ticks = torch.floor(now_t / regrow_every) - torch.floor(seen / regrow_every)
    return (fruit_estimate.double() + ticks).clamp(max=float(max_fruit))
