"""Baseline agents (see :class:`~treeworld.agents.protocol.Agent`): a correlated random walker and a
hand-written forager.

Both baselines read observations only (never the privileged ``info``) and draw their randomness
from their own ``np.random.Generator``, seeded by ``reset(seed)``.

The forager decodes percepts from the vocabulary. Sight is one of finitely many vectors,
``normalize(e_kind + e_name + e_phrase)`` over kinds, the world's pooled names and fruit phrases:
the nearest of them names the seen tree's kind, name and fruit count, exactly on clean input and
still almost always under the noisy world's percept noise. Smell is ``sum_t k(d_t) s_t (e_kind_t +
e_name_t)`` with ``s_t = 1 / |e_kind_t + e_name_t|`` and the diffusion kernel
``k(d) = a^((d / L)^2)`` (``a`` = smell_attenuation, ``L`` = smell_distance). With linearly
independent rows (the 384-d MiniLM table holds 150 words) least squares over the table recovers
every tree name's smell strength ``c_n = s_n k(d_n)`` up to float32 rounding (about 1e-6) plus the
percept noise times the norm of the least-squares row (about 18 for MiniLM: a std of 0.36 at
``percept_noise`` = 0.02, half the strongest smell, so no tree in the noisy world clears the
detection floor of ``SMELL_DETECT`` stds).
Tree names are unique, so ``ln c_n = ln s_n + ln(a) |x_n - p|^2 / L^2`` holds at every position
``p`` the agent has been: it is linear in the unknowns ``(ln s_n + ln(a) |x_n|^2 / L^2, x_n)``, and
a least-squares fit over the path (positions integrated from the observed motion), weighted by the
noise, locates every tree the agent smells clearly. Sight locates the others: a tree seen at
distance ``d`` lies near ``p + d * heading``, within the cone's lateral spread, and a Kalman filter
fuses such sightings (allowing for the odometry's drift between them).
The forager walks to the located trees most likely to bear edible fruit, learns each tree's kind
and fruit count when it sees it, eats edible fruit until the tree is empty, never eats from a tree
it sees is poisonous, and predicts regrowth (one fruit every ``regrow_every`` steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from gymnasium import spaces

from treeworld import checks
from treeworld.config import WorldConfig
from treeworld.vocabulary import Vocabulary


class RandomWalker:
    """A correlated random walk at full speed that eats whenever sight shows a tree within reach.

    Each step keeps the current heading with probability ``persistence`` and otherwise turns to a
    uniformly random one. It does not tell edible from poisonous trees, nor full from empty ones.

    Args:
        action_space: optional ``Box`` of shape (3,); actions are clipped to its bounds.
        persistence: probability in [0, 1] of keeping the heading for one more step.
        seed: seed of the agent's generator at the first ``reset()`` without a seed.
        config: the world's :class:`~treeworld.WorldConfig` (sight range and eat radius).
    """

    def __init__(self, action_space: spaces.Box | None = None, persistence: float = 0.9, seed: int | None = None,
                 config: WorldConfig | None = None):
        if action_space is not None and not (isinstance(action_space, spaces.Box) and action_space.shape == (3,)):
            raise TypeError(f"action_space: expected a gymnasium Box of shape (3,) or None, got {action_space!r}")
        self.persistence = checks.real(persistence, "persistence", low=0.0, high=1.0)
        config = _check_config(config)
        self.action_space = action_space
        self._seed = _check_seed(seed)
        self._reach = 0.9 * config.eat_radius / config.sight_distance  # in units of sight_distance
        self._rng: np.random.Generator | None = None
        self._angle = 0.0

    def reset(self, seed: int | None = None) -> None:
        seed = _check_seed(seed)
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(self._seed if seed is None else seed)
        self._angle = float(self._rng.uniform(0.0, 2 * math.pi))

    def act(self, observation: dict) -> np.ndarray:
        if self._rng is None:
            raise RuntimeError("RandomWalker.act() called before reset()")
        seen = _field(observation, "sight_distance", (1,))[0]
        if self._rng.random() >= self.persistence:
            self._angle = float(self._rng.uniform(0.0, 2 * math.pi))
        eat = 1.0 if 0 < seen <= self._reach else -1.0
        action = np.array([math.cos(self._angle), math.sin(self._angle), eat], dtype=np.float32)
        if self.action_space is not None:
            action = np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)
        return action


@dataclass(frozen=True)
class SeenTree:
    """A decoded sight percept: vocabulary-relative indices of the tree's fruit ``kind`` (0..15),
    its ``name`` (0..127) and its ``fruit`` count (0..5), and whether the kind is ``poisonous``."""

    kind: int
    name: int
    fruit: int
    poisonous: bool


class PerceptDecoder:
    """Sight as the nearest possible percept; smell by least-squares coefficients over the vocabulary's rows.

    Args:
        vocabulary: a :class:`~treeworld.Vocabulary` whose (V, D) table has linearly independent
            rows (so D >= V = 150; the default 384-d MiniLM table qualifies).
        name_pool: trees are named from the first ``name_pool`` names (the world's
            ``config.name_pool``; default: all of them).
    """

    def __init__(self, vocabulary: Vocabulary, name_pool: int | None = None):
        checks.instance(vocabulary, Vocabulary, "vocabulary")
        pool = vocabulary.num_names if name_pool is None else checks.integer(
            name_pool, "name_pool", low=1, high=vocabulary.num_names)
        table = vocabulary.table.astype(np.float64)  # (V, D)
        singular = np.linalg.svd(table, compute_uv=False)
        if table.shape[0] > table.shape[1] or singular[-1] < 1e-6 * singular[0]:
            raise ValueError(f"vocabulary: percepts decode only over linearly independent word vectors; "
                             f"the {table.shape} table has rank < {table.shape[0]} (use D >= {table.shape[0]})")
        self.vocabulary = vocabulary
        self._pinv = np.linalg.pinv(table.T)  # (V, D): coefficients = pinv @ percept
        # The (V,) std of each coefficient per unit of i.i.d. percept noise.
        self.noise_gain = np.linalg.norm(self._pinv, axis=1)
        # Every possible sight percept, as in treeworld.sensors.PerceptTables.sight: (K * P * F, D) float32.
        v = vocabulary.table
        combos = v[:vocabulary.num_kinds, None, None] + v[vocabulary.name_offset:][None, :pool, None] \
            + v[vocabulary.phrase_offset:][None, None, :]  # (K, P, F, D)
        self._sight_shape = combos.shape[:3]
        self._sight_rows = (combos / np.linalg.norm(combos, axis=-1, keepdims=True)).reshape(-1, vocabulary.dim)

    def coefficients(self, percept: np.ndarray) -> np.ndarray:
        """(V,) coefficients c with ``percept ~= c @ table`` for a (D,) ``percept``."""
        return self._pinv @ np.asarray(percept, dtype=np.float64)

    def sight(self, sight: np.ndarray) -> SeenTree | None:
        """The tree whose percept is nearest to a (D,) sight percept, or None for the zero percept (nothing seen)."""
        if not np.any(sight):
            return None
        nearest = int(np.argmax(self._sight_rows @ np.asarray(sight, dtype=np.float32)))  # unit rows: max dot = nearest
        kind, name, fruit = (int(i) for i in np.unravel_index(nearest, self._sight_shape))
        return SeenTree(kind=kind, name=name, fruit=fruit, poisonous=bool(self.vocabulary.poisonous[kind]))

    def smell(self, smell: np.ndarray) -> np.ndarray:
        """(num_names,) smell strength ``s_n k(d_n)`` of each tree name in a (D,) smell percept."""
        v = self.vocabulary
        return self.coefficients(smell)[v.name_offset:v.phrase_offset]


SMELL_NOISE = 2e-6  # std of decoded smell coefficients from float32 rounding of the sensor (added to percept noise)
SMELL_FLOOR = 1e-5  # weaker coefficients are rounding, not trees (about 400 units away by default)
SMELL_DETECT = 4.0  # and so are coefficients below this many noise stds
SIGHT_FLOOR = 0.5  # std of a sighting's position beyond the cone's spread (world units)
LOCATED_STD = 1.0  # a tree counts as located when its position's std is below this (world units)
APPROACH = 1.5  # the forager stops this far from a tree to eat (world units)
SWEEP_TURN = 0.8  # radians the heading turns per sweeping step (the sight cone is about 0.9 wide)
GIVE_UP = 12  # sweeping steps at a located tree without seeing it before the forager gives up on it
GIVE_UP_FOR = 300  # steps a tree is then skipped
HAZARD_MARGIN = 3.0  # no bite while a poisonous or unknown tree is believed within the target's distance + this
SCORE_DISTANCE = 30.0  # added to a tree's distance (world units) when scoring targets
EXPLORE_DISTANCE = 100.0  # while trees are missing from the map, exploring scores as an unknown tree this far away
KEEP_TARGET = 0.8  # keep the current target while its score is at least this fraction of the best
WIGGLE = 0.4  # std of the exploring heading's turn per step (radians)
HOME_RADIUS = 250.0  # exploring beyond this distance from the start steers back (trees cluster there)
HOMING = 0.3  # fraction of the turn towards the start (or the waypoint) made per step
WAYPOINT_REACHED = 50.0  # an exploring waypoint this close (world units) is replaced by a new one
WAYPOINT_CANDIDATES = 8  # random points in the home disc a new waypoint is chosen from
PATH_EVERY = 10  # steps between the remembered points of the path


class Forager:
    """A hand-written forager that maps trees by smell and checks them by sight (observations only).

    Each step it (1) integrates the observed motion into a position relative to its start, (2)
    decodes sight (kind, name, fruit count of the tree ahead), remembers it and fuses the sighting
    into the tree's sighted position, (3) decodes smell into per-name strengths and refits every
    tree's position (see the module docstring), then (4) acts: eat when the seen tree is edible,
    has fruit and is within reach (standing still until its fruit is gone); else walk to the
    located tree with the best expected edible fruit per distance (unknown trees count with the
    world's poison probability and half the fruit; a target in sight is believed at the seen
    distance inside the sight cone; at the believed spot without seeing it, the forager turns on
    the spot to sweep the cone and gives up on it after a while); else wait at the nearest edible
    tree for regrowth; else explore on a seeded wiggly walk that stays near the start. Where
    smell misses trees near the start (noisy percepts), sight places the trees smell does not
    locate and, while some of the ``config.num_trees`` trees are missing from the map, exploring
    (towards waypoints away from its path) beats poor targets and waiting. It never eats from a
    tree it sees is poisonous.

    Args:
        vocabulary: the world's vocabulary (default: the one ``config`` asks for).
        config: the world's :class:`~treeworld.WorldConfig` (default: ``WorldConfig()``).
        seed: seed of the agent's generator at the first ``reset()`` without a seed.
    """

    def __init__(self, vocabulary: Vocabulary | None = None, config: WorldConfig | None = None,
                 seed: int | None = None):
        self.config = _check_config(config)
        self.decoder = PerceptDecoder(Vocabulary.for_config(self.config) if vocabulary is None else vocabulary,
                                      self.config.name_pool)
        if self.decoder.vocabulary.dim != self.config.percept_dim:
            raise ValueError(f"vocabulary: expected {self.config.percept_dim}-d vectors (config.percept_dim), "
                             f"got {self.decoder.vocabulary.dim}-d")
        self._seed = _check_seed(seed)
        self._rng: np.random.Generator | None = None
        self._poisonous = self.decoder.vocabulary.poisonous  # (K,) bool
        v = self.decoder.vocabulary
        noise = self.config.percept_noise * self.decoder.noise_gain[v.name_offset:v.phrase_offset]
        self._smell_std = np.hypot(noise, SMELL_NOISE)  # (num_names,) std of each decoded smell strength
        self._smell_floor = np.maximum(SMELL_FLOOR, SMELL_DETECT * self._smell_std)
        # A tree in sight lies uniformly in angle within the cone: a sighting's std along the heading
        # and across it, per unit of seen distance.
        half_width = math.acos(self.config.sight_cos)
        self._sight_spread = np.array([(1 - self.config.sight_cos) / math.sqrt(12), half_width / math.sqrt(3)])
        self._drift = self.config.motion_noise ** 2  # variance per axis and step of the dead reckoning's drift
        # Smell misses trees in the explored area when the strongest smell at its edge is below the floor
        # (noisy percepts); then sight places the trees smell does not locate, and exploring may find more.
        kinds, names = v.table[:v.num_kinds], v.table[v.name_offset:v.name_offset + self.config.name_pool]
        strongest = 1 / np.linalg.norm(kinds[:, None] + names[None], axis=-1).min()
        edge = (HOME_RADIUS + self.config.sight_distance) / self.config.smell_distance
        self._smell_misses = bool(np.median(self._smell_floor) > strongest * self.config.smell_attenuation ** edge ** 2)

    def reset(self, seed: int | None = None) -> None:
        seed = _check_seed(seed)
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(self._seed if seed is None else seed)
        n = self.decoder.vocabulary.num_names
        self._position = np.zeros(2)  # (2,) integrated motion: the start is the origin
        self._step = 0
        self._normal = np.zeros((n, 3, 3))  # weighted normal equations of the smell fits
        self._rhs = np.zeros((n, 3))
        self._kind = np.full(n, -1)  # -1: not seen yet
        self._fruit = np.full(n, -1)  # last seen fruit count, -1: unknown
        self._seen_at = np.zeros(n, dtype=np.int64)  # step of that sighting
        self._skip_until = np.zeros(n, dtype=np.int64)
        self._sighted = np.zeros((n, 2))  # Kalman estimate of each tree's position from sightings
        self._sighted_cov = np.zeros((n, 2, 2))  # and its covariance
        self._sighted_at = np.full(n, -1)  # step of the last sighting, -1: never seen
        self._target = -1
        self._lost = 0  # sweeping steps at the target's believed spot without seeing it
        self._angle = float(self._rng.uniform(0.0, 2 * math.pi))
        self._waypoint = np.zeros(2)  # where exploring heads when smell misses trees: replaced on arrival
        self._path: list[np.ndarray] = []  # every PATH_EVERY-th position (2,) when smell misses trees

    def act(self, observation: dict) -> np.ndarray:
        if self._rng is None:
            raise RuntimeError("Forager.act() called before reset()")
        dim = self.decoder.vocabulary.dim
        self._position += _field(observation, "motion", (2,))
        if self._smell_misses and self._step % PATH_EVERY == 0:
            self._path.append(self._position.copy())
        seen = self.decoder.sight(_field(observation, "sight", (dim,)))
        distance = _field(observation, "sight_distance", (1,))[0] * self.config.sight_distance
        self._update_map(self.decoder.smell(_field(observation, "smell", (dim,))))
        heading = _field(observation, "heading", (2,))
        if seen is not None:
            self._kind[seen.name], self._fruit[seen.name], self._seen_at[seen.name] = seen.kind, seen.fruit, self._step
            self._add_sighting(seen.name, distance, heading)
        positions, located = self.tree_map()
        action = self._decide(seen, distance, heading, positions, located)
        self._step += 1
        return action

    def tree_map(self) -> tuple[np.ndarray, np.ndarray]:
        """Believed tree positions relative to the start, (num_names, 2), and which are located (num_names,) bool.

        A tree is located when the smell fit places it to within ``LOCATED_STD`` or, where smell
        misses trees (noisy percepts), once it has been seen: then it is believed where the sightings
        place it."""
        if self._rng is None:
            raise RuntimeError("Forager.tree_map() called before reset()")
        n = len(self._rhs)
        positions, located = np.zeros((n, 2)), np.zeros(n, dtype=bool)
        rows = np.flatnonzero(self._normal[:, 0, 0] > 0)  # names smelled at least once
        size = np.trace(self._normal[rows], axis1=1, axis2=2)[:, None, None]  # (R, 1, 1)
        inverse = np.linalg.inv(self._normal[rows] / size + 1e-12 * np.eye(3)) / size  # (R, 3, 3), scale-free ridge
        solution = np.einsum("rij,rj->ri", inverse, self._rhs[rows])  # (R, 3): (offset, x / L, y / L)
        scale = self.config.smell_distance
        std = scale * SMELL_NOISE * np.sqrt(np.maximum(inverse[:, 1, 1], inverse[:, 2, 2]))  # (R,)
        positions[rows], located[rows] = solution[:, 1:] * scale, std < LOCATED_STD
        sighted = ~located & (self._sighted_at >= 0) & self._smell_misses
        positions[sighted], located[sighted] = self._sighted[sighted], True
        return positions, located

    def _update_map(self, strength: np.ndarray) -> None:
        """Add this position's smell strengths (num_names,) to every smelled tree's fit."""
        smelled = strength > self._smell_floor
        q = self._position / self.config.smell_distance  # (2,)
        log_a = math.log(self.config.smell_attenuation)
        features = np.array([1.0, -2 * log_a * q[0], -2 * log_a * q[1]])  # (3,)
        weight = (strength[smelled] * SMELL_NOISE / self._smell_std[smelled]) ** 2  # SMELL_NOISE^2 / variance of ln(c)
        target = np.log(strength[smelled]) - log_a * (q @ q)
        self._normal[smelled] += weight[:, None, None] * np.outer(features, features)
        self._rhs[smelled] += (weight * target)[:, None] * features

    def _add_sighting(self, name: int, distance: float, heading: np.ndarray) -> None:
        """Fuse a sighting of tree ``name`` at ``distance`` along the unit ``heading`` (2,) into its estimate."""
        across = np.array([-heading[1], heading[0]])
        along_std, across_std = SIGHT_FLOOR + distance * self._sight_spread
        noise = along_std ** 2 * np.outer(heading, heading) + across_std ** 2 * np.outer(across, across)  # (2, 2)
        sighting = self._position + distance * heading
        if self._sighted_at[name] < 0:
            self._sighted[name], self._sighted_cov[name] = sighting, noise
        else:  # a Kalman update, the old estimate blurred by the drift since it was made
            prior = self._sighted_cov[name] + self._drift * (self._step - self._sighted_at[name]) * np.eye(2)
            gain = prior @ np.linalg.inv(prior + noise)
            self._sighted[name] += gain @ (sighting - self._sighted[name])
            self._sighted_cov[name] = prior - gain @ prior
        self._sighted_at[name] = self._step

    def _decide(self, seen: SeenTree | None, distance: float, heading: np.ndarray, positions: np.ndarray,
                located: np.ndarray) -> np.ndarray:
        if seen is not None and not seen.poisonous and seen.fruit > 0 and distance <= 0.9 * self.config.eat_radius:
            hazard = self._hazard_within(distance + HAZARD_MARGIN, seen.name, positions, located)
            if not hazard or distance > APPROACH + HAZARD_MARGIN:  # a hazard as near: step in closer first
                self._target, self._lost = seen.name, 0
                believed = positions[seen.name] - self._position if located[seen.name] else heading
                return self._move(self._onto_sight(believed, distance, heading), distance - APPROACH, eat=not hazard)
            self._skip_until[seen.name] = self._step + GIVE_UP_FOR  # a hazard beside it: not this tree for now
        self._target = self._choose_target(positions, located)
        if self._target >= 0:
            offset = positions[self._target] - self._position
            if seen is not None and seen.name == self._target:
                offset = self._onto_sight(offset, distance, heading)
            elif np.hypot(*offset) < 2 * APPROACH:  # at the believed spot without seeing it: sweep the cone around
                self._lost += 1
                if self._lost > GIVE_UP:
                    self._skip_until[self._target], self._target, self._lost = self._step + GIVE_UP_FOR, -1, 0
                self._angle = math.atan2(heading[1], heading[0]) + SWEEP_TURN
                return self._move(np.array([math.cos(self._angle), math.sin(self._angle)]), 1.0, eat=False)
            return self._move(offset, max(np.hypot(*offset) - APPROACH, 0.5), eat=False)
        edible = located & (self._kind >= 0) & ~self._poisonous[np.maximum(self._kind, 0)]
        if edible.any() and not self._may_find_trees(located):  # all eaten: wait at the nearest edible tree
            offsets = positions[edible] - self._position
            offset = offsets[np.argmin(np.hypot(offsets[:, 0], offsets[:, 1]))]
            return self._move(offset, max(np.hypot(*offset) - APPROACH, 0.0), eat=False)
        return self._explore()

    def _hazard_within(self, reach: float, name: int, positions: np.ndarray, located: np.ndarray) -> bool:
        """Whether a located tree other than ``name``, of a poisonous or not yet known kind, is
        believed within ``reach`` of the agent: the world feeds from the nearest tree with fruit, so
        a bite meant for ``name`` could land there."""
        risky = located & ((self._kind < 0) | self._poisonous[np.maximum(self._kind, 0)])
        risky[name] = False
        offsets = positions[risky] - self._position
        return bool((np.hypot(offsets[:, 0], offsets[:, 1]) < reach).any())

    def _onto_sight(self, offset: np.ndarray, distance: float, heading: np.ndarray) -> np.ndarray:
        """The believed ``offset`` (2,) of the tree in sight, moved into the sight cone at the seen ``distance``."""
        direction = offset / max(float(np.hypot(*offset)), 1e-9)
        if direction @ heading < self.config.sight_cos:
            direction = heading
        return direction * distance

    def _choose_target(self, positions: np.ndarray, located: np.ndarray) -> int:
        """The located tree with the most expected edible fruit per distance, or -1 if none is worth it."""
        c = self.config
        regrown = self._step // c.regrow_every - self._seen_at // c.regrow_every  # (N,) regrowth events since seen
        fruit = np.where(self._fruit >= 0, np.minimum(self._fruit + regrown, c.max_fruit), c.max_fruit / 2)
        edible = np.where(self._kind >= 0, ~self._poisonous[np.maximum(self._kind, 0)], 1 - c.poison_probability)
        offsets = positions - self._position
        score = fruit * edible / (np.hypot(offsets[:, 0], offsets[:, 1]) + SCORE_DISTANCE)  # (N,)
        score[~located | (self._skip_until > self._step)] = 0.0
        if self._may_find_trees(located):  # then exploring is worth an unknown tree EXPLORE_DISTANCE away
            score[score < (1 - c.poison_probability) * c.max_fruit / 2 / (EXPLORE_DISTANCE + SCORE_DISTANCE)] = 0.0
        best = int(np.argmax(score))
        if score[best] <= 0:
            return -1
        if self._target >= 0 and score[self._target] >= KEEP_TARGET * score[best]:
            return self._target  # hysteresis: no dithering between similar targets
        self._lost = 0
        return best

    def _may_find_trees(self, located: np.ndarray) -> bool:
        """Whether exploring may find trees missing from the map (smell would have located those near the start)."""
        return self._smell_misses and located.sum() < self.config.num_trees

    def _explore(self) -> np.ndarray:
        """A seeded wiggly walk (it sweeps the sight cone and makes the smell fits well-posed) that
        steers back to the start beyond ``HOME_RADIUS`` or, where sight must find the trees (smell
        misses them), towards waypoints within ``HOME_RADIUS`` of the start, away from its path."""
        self._angle += float(self._rng.normal(0.0, WIGGLE))
        goal = None
        if self._smell_misses:
            if np.hypot(*(self._waypoint - self._position)) < WAYPOINT_REACHED:
                self._waypoint = self._new_waypoint()
            goal = self._waypoint
        elif np.hypot(*self._position) > HOME_RADIUS:
            goal = np.zeros(2)
        if goal is not None:
            offset = goal - self._position
            self._angle += HOMING * math.remainder(math.atan2(offset[1], offset[0]) - self._angle, 2 * math.pi)
        return self._move(np.array([math.cos(self._angle), math.sin(self._angle)]), self.config.max_step, eat=False)

    def _new_waypoint(self) -> np.ndarray:
        """Of ``WAYPOINT_CANDIDATES`` random points within ``HOME_RADIUS`` of the start, the (2,) one
        farthest from the path."""
        radius = HOME_RADIUS * np.sqrt(self._rng.random(WAYPOINT_CANDIDATES))
        angle = self._rng.uniform(0.0, 2 * math.pi, WAYPOINT_CANDIDATES)
        candidates = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (C, 2)
        path = np.array(self._path + [self._position])  # (P, 2)
        gaps = np.linalg.norm(candidates[:, None] - path[None], axis=-1).min(axis=1)  # (C,) distance to the path
        return candidates[np.argmax(gaps)]

    def _move(self, direction: np.ndarray, length: float, eat: bool) -> np.ndarray:
        """The action moving ``length`` world units (none if <= 0) along ``direction`` (2,), eating or not."""
        action = np.array([0.0, 0.0, 1.0 if eat else -1.0], dtype=np.float32)
        norm = float(np.hypot(*direction))
        if norm > 1e-9 and length > 0:
            action[:2] = direction / norm * min(length / self.config.max_step, 1.0)
        return action


def _check_seed(seed: Any) -> int | None:
    return None if seed is None else checks.integer(seed, "seed", low=0)


def _check_config(config: Any) -> WorldConfig:
    return WorldConfig() if config is None else checks.instance(config, WorldConfig, "config")


def _field(observation: Any, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """``observation[key]`` as a float64 array of ``shape``, or a clear error."""
    if not isinstance(observation, Mapping):
        raise TypeError(f"observation: expected a dict of arrays, got {type(observation).__name__}")
    if key not in observation:
        raise ValueError(f"observation: missing key {key!r}; got keys {sorted(observation)}")
    value = np.asarray(observation[key], dtype=np.float64)
    if value.shape != shape:
        raise ValueError(f"observation[{key!r}]: expected shape {shape}, got {value.shape}")
    return value
