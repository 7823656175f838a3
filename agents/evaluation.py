"""Navigation evaluation protocols: functions that run agents and return plain data.

Seeds. Every protocol takes the first world seed ``seed``; env ``i`` of the one vector env (and
row ``i`` of the agent) gets ``seed + i``. Training and tuning use world seeds below
:data:`EVAL_SEED`; evaluation uses ``EVAL_SEED`` and up (``check_held_out`` says so for a range).

Statistics. :func:`mean_ci` gives a mean with the half-width of its 95% confidence interval by
Student's t over independent units (worlds, or training seeds). Simulated in the tests at n = 32
and n = 3: it covers the true mean of normal data in 95% of samples, and a little less for
exponential (skewed, like steps survived) data.

Protocols (more follow in the evaluation issue):

- :func:`first_episodes` / :func:`foraging`: the first episode of each of ``num_envs`` worlds,
  up to ``steps`` steps (episodes an autoreset starts afterwards are not counted): survival (the
  episode reached ``steps`` alive), steps survived, fruit and poison per 1,000 steps, return.
- :func:`belief_errors` / :func:`error_summary`: the path-integration protocol, the position
  error of an agent's belief and of dead reckoning along the agent's own walk, per step.
- :func:`map_quality`: the TEM agent's map after a walk: the topographic layer's quantization and
  topographic errors, and its remembered trees and map units against the true trees after a rigid
  (Procrustes, :func:`rigid_alignment`) alignment.
- :func:`homing`: on the homing task, success rate and SPL of the goals that ended in those
  episodes, per world then over worlds, and per goal SPL against the straight-line distance.

Library code: nothing here prints or writes files; ``progress`` is an optional callable given the
number of steps done (e.g. a tqdm bar's ``update``).
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable

import numpy as np
import torch

from treeworld import checks
from treeworld.agents.path_integration import Belief
from treeworld.tasks import shortest_path, spl

#: Held-out evaluation world seeds start here; training and tuning use seeds below it.
EVAL_SEED = 10_000
#: Training uses world seeds below this; validation during training (checks, model selection) the
#: seeds from here up to EVAL_SEED.
VALIDATION_SEED = 9_000


def check_held_out(seed: int, count: int, name: str = "seed") -> int:
    """``seed`` if the seeds ``seed .. seed + count - 1`` are all evaluation seeds; else ValueError."""
    seed = checks.integer(seed, name, low=0)
    if seed < EVAL_SEED:
        raise ValueError(f"{name}: expected held-out world seeds >= {EVAL_SEED} (below are for training and "
                         f"tuning), got {seed} .. {seed + count - 1}")
    return seed


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom: ``t`` with
    P(|T| <= t) = level, from the closed-form distribution of integer ``df`` (Abramowitz and Stegun
    26.7.3-4, in theta = atan(t / sqrt(df))) solved by bisection."""
    df = checks.count(df, "df")
    level = checks.real(level, "level", low=0.0, high=1.0)

    def central(theta: float) -> float:  # P(|T| <= sqrt(df) tan(theta)), increasing in theta
        c2, total = math.cos(theta) ** 2, 0.0
        if df % 2:
            term = math.cos(theta)
            for j in range(1, (df - 1) // 2 + 1):
                total += term
                term *= c2 * (2 * j) / (2 * j + 1)
            return 2 / math.pi * (theta + math.sin(theta) * total)
        term = 1.0
        for j in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * j - 1) / (2 * j)
        return math.sin(theta) * total

    low, high = 0.0, math.pi / 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if central(middle) < level else (low, middle)
    return math.sqrt(df) * math.tan((low + high) / 2)


def average_ranks(values: Any) -> np.ndarray:
    """Ranks 0 .. n-1 of a 1-d sample, ties sharing the mean of their ranks (Spearman's)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)
    return ranks


def mean_ci(values: Any) -> dict:
    """Mean and the half-width of its 95% confidence interval (Student's t, n - 1 degrees of
    freedom) of a 1-d sample: ``{"mean", "ci95", "n"}``; mean None when empty, ci95 None below
    two values."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        return {"mean": None, "ci95": None, "n": 0}
    n = len(values)
    half = float(t_quantile(n - 1) * values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(values.mean()), "ci95": half, "n": n}


#: Episode ``e > 0`` of the worlds ``seed ..`` keeps their layouts (reset option ``world_seed``)
#: and draws starts, noise and the agent's randomness from ``seed + e * EPISODE_STRIDE`` (+ row).
EPISODE_STRIDE = 1_000_000


def reset_worlds(envs: Any, agent: Any, seed: int, episode: int = 0) -> tuple[Any, dict]:
    """Reset ``agent`` and ``envs`` for episode ``episode`` of the worlds ``seed .. seed + n - 1``:
    episode 0 seeds env and row ``i`` with ``seed + i``; a later one keeps the layouts and reseeds
    the rest (:data:`EPISODE_STRIDE`). Returns the first observation and info."""
    episode = checks.integer(episode, "episode", low=0)
    if episode == 0:
        agent.reset(None, seed=seed)
        return envs.reset(seed=seed)
    reseed = seed + episode * EPISODE_STRIDE
    agent.reset(None, seed=reseed)
    return envs.reset(seed=reseed, options={"world_seed": [seed + i for i in range(envs.num_envs)]})


def first_episodes(envs: Any, agent: Any, steps: int, seed: int,
                   progress: Callable[[int], Any] | None = None, episode: int = 0) -> dict[str, Any]:
    """Drive ``agent`` (a BatchAgent, row i seeded ``seed + i``) in the vector env ``envs`` (env i
    seeded ``seed + i``) until the first episode of every env has ended, at most ``steps`` steps;
    ``episode`` > 0 replays the same worlds from other starts (:func:`reset_worlds`).

    Returns per env (arrays of ``num_envs``): ``return``, ``steps``, ``fruit``, ``poison``,
    ``terminated``; and ``goals``: one dict per homing goal of a first episode (``env``,
    ``reached``, ``distance`` straight-line at its start, ``shortest`` l, ``path`` p; empty on
    other tasks). Goals are counted by when they were set, never by how they ended: every goal set
    by step ``steps - goal_timeout``, whose outcome the step limit cannot cut off (one still open
    when the agent dies is not reached, SPL 0), and none set later (censored: a goal set near the
    limit has no time to be reached). ``progress(n)`` is called after every step with 1.
    """
    steps = checks.count(steps, "steps")
    n = envs.num_envs
    if agent.num_agents != n:
        raise ValueError(f"agent: expected num_agents {n} (envs.num_envs), got {agent.num_agents}")
    observation, _ = reset_worlds(envs, agent, seed, episode)
    result = {"return": np.zeros(n), "steps": np.zeros(n, dtype=np.int64), "fruit": np.zeros(n, dtype=np.int64),
              "poison": np.zeros(n, dtype=np.int64), "terminated": np.zeros(n, dtype=bool)}
    result["goals"] = []
    running = np.ones(n, dtype=bool)
    homing = envs.config.task == "homing"
    last_set = steps - envs.config.goal_timeout  # goals set after this step may be cut off: not counted
    # each env's open goal: the step it was set, its straight-line distance then, the distance travelled then
    goal, set_at, set_distance, set_travelled = np.full(n, -1), np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)
    for step in range(1, steps + 1):
        observation, reward, terminated, truncated, info = envs.step(agent.act(observation))
        if homing:
            ended = running & (np.asarray(info["goal_reached"]) | np.asarray(info["goal_failed"]))
            result["goals"] += [{"env": int(i), "reached": bool(info["goal_reached"][i]),
                                 "distance": float(info["goal_distance"][i]),
                                 "shortest": float(info["goal_shortest_path"][i]),
                                 "path": float(info["goal_path_length"][i])}
                                for i in np.flatnonzero(ended & (set_at <= last_set))]
            now, travelled = np.asarray(info["goal_tree"]), np.asarray(info["distance_travelled"], dtype=np.float64)
            new = running & (now >= 0) & (ended | (goal < 0))
            place = np.asarray(info["tree_positions"])[np.arange(n), np.maximum(now, 0)]
            set_at = np.where(new, step, set_at)
            set_distance = np.where(new, np.linalg.norm(place - np.asarray(info["position"]), axis=-1), set_distance)
            set_travelled = np.where(new, travelled, set_travelled)
            goal = np.where(running, now, goal)
            died = running & np.asarray(terminated) & (goal >= 0) & (set_at <= last_set)
            shortest = shortest_path(envs.config, set_distance)
            result["goals"] += [{"env": int(i), "reached": False, "distance": float(set_distance[i]),
                                 "shortest": float(shortest[i]), "path": float(travelled[i] - set_travelled[i])}
                                for i in np.flatnonzero(died)]
        result["return"][running] += np.asarray(reward)[running]
        result["steps"][running] += 1
        result["fruit"][running] = np.asarray(info["fruit_eaten"])[running]
        result["poison"][running] = np.asarray(info["poison_eaten"])[running]
        result["terminated"] |= running & np.asarray(terminated)
        running &= ~(np.asarray(terminated) | np.asarray(truncated))
        if progress is not None:
            progress(1)
        if not running.any():
            break
    return result


def foraging_metrics(episodes: dict[str, np.ndarray], steps: int) -> dict:
    """Means with 95% CIs over worlds of survival (alive after ``steps``), steps survived, fruit
    and poison per 1,000 steps, return, from :func:`first_episodes`' output: arrays ``(W,)``, or
    ``(E, W)`` for ``E`` episodes per world (averaged per world first: worlds are the units)."""
    per_1000 = 1000.0 / np.maximum(episodes["steps"], 1)
    figures = {"survival": ~episodes["terminated"] & (episodes["steps"] == steps), "steps": episodes["steps"],
               "fruit_per_1000_steps": episodes["fruit"] * per_1000,
               "poison_per_1000_steps": episodes["poison"] * per_1000, "return": episodes["return"]}
    return {name: mean_ci(np.atleast_2d(values).mean(0)) for name, values in figures.items()}


def foraging(envs: Any, agent: Any, steps: int, seed: int, progress: Callable[[int], Any] | None = None,
             episodes: int = 1) -> dict:
    """The foraging protocol: :func:`foraging_metrics` of :func:`first_episodes`, ``episodes`` per world."""
    runs = [first_episodes(envs, agent, steps, seed, progress, e) for e in range(checks.count(episodes, "episodes"))]
    return foraging_metrics({key: np.stack([run[key] for run in runs]) for key in runs[0] if key != "goals"}, steps)


def homing_metrics(episodes: dict[str, Any], num_envs: int) -> dict:
    """Success rate and SPL (``tasks.spl``: S l / max(p, l)) of the counted goals (those set by
    step ``steps - goal_timeout``, see :func:`first_episodes`), each averaged
    per world first and then over the worlds with goals (mean with 95% CI: worlds are the
    independent units), the goal count, and per goal ``distance`` and ``spl`` lists (for SPL
    against distance)."""
    goals = episodes["goals"]
    per_goal = [spl([g["reached"]], [g["shortest"]], [g["path"]]) for g in goals]
    worlds = [[k for k, g in enumerate(goals) if g["env"] == env] for env in range(num_envs)]
    worlds = [ks for ks in worlds if ks]
    return {"success": mean_ci([np.mean([goals[k]["reached"] for k in ks]) for ks in worlds]),
            "spl": mean_ci([np.mean([per_goal[k] for k in ks]) for ks in worlds]),
            "goals": len(goals),
            "per_goal": {"distance": [g["distance"] for g in goals], "spl": per_goal}}


def homing(envs: Any, agent: Any, steps: int, seed: int, progress: Callable[[int], Any] | None = None,
           episodes: int = 1) -> dict:
    """The homing protocol (on a ``task="homing"`` vector env): :func:`homing_metrics` of the goals
    of :func:`first_episodes`, ``episodes`` per world."""
    if envs.config.task != "homing":
        raise ValueError(f"envs: expected a homing-task vector env, got task {envs.config.task!r}")
    goals = [goal for e in range(checks.count(episodes, "episodes"))
             for goal in first_episodes(envs, agent, steps, seed, progress, e)["goals"]]
    return homing_metrics({"goals": goals}, envs.num_envs)


def belief_errors(envs: Any, agent: Any, steps: int, seed: int,
                  progress: Callable[[int], Any] | None = None) -> dict[str, np.ndarray]:
    """The path-integration protocol: position errors along the agent's own walk.

    ``agent`` is a BatchAgent with ``position()`` (its believed positions ``(B, 2)``, in a frame
    translated to where its episode started; motion observations are in world axes). After every
    step, once the agent has acted on the new observation, its error is
    ``|position() - (true position - start)|``; the dead-reckoning error of the same walk is that
    of the summed observed motion. An agent with a path integrator (``agent.belief.integrator``, a
    ``PathIntegrator``: the TEM agent's exact or learned one) also gets ``path_integration``: the
    error of that integrator alone on the same motions, without loop closure. Returns those errors
    ``(steps, B)`` and the walk itself, ``true`` and ``believed`` positions ``(steps, B, 2)`` in the agent's
    frame; NaN in a world from the step its first episode ended (give ``envs`` no time limit and
    no health costs for walks that last). ``progress(1)`` after every step.
    """
    steps = checks.count(steps, "steps")
    if not callable(getattr(agent, "position", None)):
        raise TypeError(f"agent: expected a BatchAgent with position() (believed positions), got "
                        f"{type(agent).__name__}")
    n = envs.num_envs
    observation, info = reset_worlds(envs, agent, seed)
    start = np.asarray(info["position"], dtype=np.float64)
    reckoned = np.zeros_like(start)
    alive = np.ones(n, dtype=bool)
    walk = {"true": np.full((steps, n, 2), np.nan), "believed": np.full((steps, n, 2), np.nan)}
    integrator = getattr(getattr(agent, "belief", None), "integrator", None)
    alone = None if integrator is None else Belief(integrator, n)
    errors = {name: np.full((steps, n), np.nan)
              for name in ("agent", "dead_reckoning") + (() if alone is None else ("path_integration",))}

    def integrate(motion):
        nonlocal reckoned
        reckoned = reckoned + np.asarray(motion, dtype=np.float64)
        if alone is not None:
            with torch.no_grad():
                alone.step(torch.as_tensor(np.asarray(motion, dtype=np.float32)))

    action = agent.act(observation)  # integrates the first observation's motion, as the reckoning does
    integrate(observation["motion"])
    for t in range(steps):
        observation, _, terminated, truncated, info = envs.step(action)
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        action = agent.act(observation)
        integrate(observation["motion"])
        true = walk["true"][t] = np.asarray(info["position"], dtype=np.float64) - start
        walk["believed"][t] = np.asarray(agent.position(), dtype=np.float64)
        positions = {"agent": walk["believed"][t], "dead_reckoning": reckoned}
        if alone is not None:
            positions["path_integration"] = alone.position().double().numpy()
        for name, position in positions.items():
            errors[name][t, alive] = np.hypot(*(position - true)[alive].T)
        for key in walk:
            walk[key][t, ~alive] = np.nan
        if progress is not None:
            progress(1)
    return {**errors, **walk}


def error_summary(errors: np.ndarray) -> dict:
    """Median and 90th percentile over the worlds still walking (one row of ``belief_errors``)."""
    live = np.asarray(errors, dtype=np.float64)
    live = live[~np.isnan(live)]
    if live.size == 0:
        return {"median": None, "p90": None, "worlds": 0}
    return {"median": float(np.median(live)), "p90": float(np.percentile(live, 90)), "worlds": int(live.size)}


def run(env_id: str, spec: str, protocol: Callable, worlds: int, steps: int, seed: int,
        progress: Callable[[int], Any] | None = None, **env_kwargs) -> Any:
    """``protocol(envs, agent, steps, seed, progress)`` for the registered agent ``spec`` on one
    vector env of ``worlds`` worlds of ``env_id`` (episode limit ``steps``; ``env_kwargs`` go to
    ``gym.make_vec``, e.g. ``config``)."""
    import gymnasium as gym

    from treeworld.agents import registry

    env_kwargs.setdefault("max_episode_steps", steps)
    envs = gym.make_vec(env_id, num_envs=worlds, vectorization_mode="vector_entry_point", **env_kwargs)
    try:
        agent = registry.make_batch_agent(spec, envs.config, worlds, envs.single_action_space, seed)
        return protocol(envs, agent, steps, seed, progress)
    finally:
        envs.close()


def rigid_alignment(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation ``R`` (2, 2) and translation ``t`` (2,) minimising ``sum |R s + t - y|^2`` over
    paired points (Kabsch / orthogonal Procrustes, no scaling or reflection).  (n, 2), (n, 2)"""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"source, target: expected two (n >= 2, 2) arrays of paired points, got "
                         f"{source.shape} and {target.shape}")
    mu_s, mu_t = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - mu_s).T @ (target - mu_t))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, d]) @ u.T
    return rotation, mu_t - rotation @ mu_s


def align(believed: np.ndarray, true: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Believed places (n, 2) moved rigidly onto true places (m, 2) by iterative closest point
    (match each to its nearest, align, ``rounds`` times); unchanged for fewer than two."""
    believed, true = np.asarray(believed, dtype=np.float64), np.asarray(true, dtype=np.float64)
    moved = believed
    for _ in range(rounds if len(believed) >= 2 else 0):
        match = np.linalg.norm(moved[:, None] - true[None], axis=-1).argmin(1)
        rotation, shift = rigid_alignment(believed, true[match])
        moved = believed @ rotation.T + shift
    return moved


def aligned_error(believed: np.ndarray, true: np.ndarray, rounds: int = 10) -> float:
    """Mean distance of believed places (n, 2) to their nearest true place (m, 2) after
    :func:`align`; NaN for fewer than two believed places."""
    if len(believed) < 2:
        return math.nan
    moved = align(believed, true, rounds)
    return float(np.linalg.norm(moved[:, None] - np.asarray(true, dtype=np.float64)[None], axis=-1).min(1).mean())


def map_quality(envs: Any, agent: Any, steps: int, seed: int,
                progress: Callable[[int], Any] | None = None) -> dict:
    """The map-quality protocol for an agent with a ``SpatialMemory`` and a ``LandmarkMap`` (the
    TEM agent): after ``steps`` steps of its first episode in each world, per world the
    topographic layer's quantization and topographic errors over the stored entries
    (``[code, percept]``), and the mean distance, after a rigid (Procrustes) alignment, from the
    remembered trees and from the map units' decoded places to the nearest true tree (in the
    agent's frame: true positions minus the start). Means with 95% CIs over worlds with a map, and
    ``example``: the first such world's ``true`` trees, and its ``trees`` and ``units`` aligned
    (lists of [x, y]), for a map overlay."""
    if not hasattr(agent, "landmarks") or not hasattr(agent, "memory"):
        raise TypeError(f"agent: expected an agent with a memory and landmarks (the TEM agent), got "
                        f"{type(agent).__name__}")
    steps = checks.count(steps, "steps")
    observation, info = reset_worlds(envs, agent, seed)
    start = np.asarray(info["position"], dtype=np.float64)
    alive = np.ones(envs.num_envs, dtype=bool)
    for _ in range(steps):
        observation, _, terminated, truncated, info = envs.step(agent.act(observation))
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        if progress is not None:
            progress(1)
    agent.act(observation)  # the last observation seen, as the walk's final state
    memory, figures, example = agent.memory, {"qe": [], "te": [], "trees_error": [], "units_error": []}, None
    topography = None if memory.topography is None else copy.deepcopy(memory.topography)
    for row in np.flatnonzero(alive):
        true = np.asarray(info["tree_positions"][row], dtype=np.float64) - start[row]
        trees = agent.landmarks.landmarks(int(row))["position"].double().numpy()
        figures["trees_error"].append(aligned_error(trees, true))
        if topography is None or not bool(memory.map_ready[row]):
            continue
        codes, percepts = memory.entries(int(row))
        data = torch.cat([codes, memory.percept_weight * percepts], dim=-1)
        with torch.no_grad():
            topography.weight.copy_(memory.map_weights[row])
        figures["qe"].append(topography.quantization_error(data))
        figures["te"].append(topography.topographic_error(data))
        units = memory.location_metric.decode(memory.map_units(int(row)).codes)[1].double().numpy()
        figures["units_error"].append(aligned_error(units, true))
        if example is None:
            example = {"true": true.tolist(), "trees": align(trees, true).tolist(), "units": align(units, true).tolist()}
    return {**{name: mean_ci([v for v in values if not math.isnan(v)]) for name, values in figures.items()},
            "example": example}



#: Arrival bearings are binned into this many sectors; an arrival from a sector never used before
#: at that tree, after at least one visit, is a zero-shot arrival.
BEARING_SECTORS = 8
#: Revisit accuracy is reported for 0, 1, ..., VISIT_BINS - 1 and VISIT_BINS or more previous visits.
VISIT_BINS = 5


@functools.lru_cache(maxsize=8)
def sight_looks(config: Any) -> np.ndarray:
    """(pairs, F, D) float64, read-only: the noise-free sight percept of every (kind, name) pair of
    the world's vocabulary (``info["tree_identity"]`` indexes the first axis) at each of the ``F``
    fruit counts; computed once per config."""
    from treeworld.sensors import PerceptTables
    from treeworld.vocabulary import FRUIT_PHRASES, Vocabulary

    sight = np.asarray(PerceptTables.build(config, Vocabulary.for_config(config)).sight[:-1], dtype=np.float64)
    looks = sight.reshape(-1, len(FRUIT_PHRASES), sight.shape[-1])
    looks.flags.writeable = False
    return looks


def percept_identity(config: Any, percepts: np.ndarray) -> np.ndarray:
    """(N, D) percepts -> (N,) int64 index of the (kind, name) pair of the nearest noise-free sight
    percept (any fruit count, :func:`sight_looks`); -1 for a zero percept (nothing recalled). The
    evaluator's labelling: agents never use it."""
    looks = sight_looks(config)
    rows = looks.reshape(-1, looks.shape[-1])
    percepts = np.asarray(percepts, dtype=np.float64).reshape(-1, rows.shape[1])
    distance = (percepts ** 2).sum(1, keepdims=True) - 2 * percepts @ rows.T + (rows ** 2).sum(1)
    identity = distance.argmin(1) // looks.shape[1]
    return np.where(np.abs(percepts).max(1) > 0, identity, -1)


def revisits(envs: Any, agent: Any, steps: int, seed: int, progress: Callable[[int], Any] | None = None) -> dict:
    """The revisit-prediction protocol (the TEM papers' measure) along the agent's own walk.

    The tree at a place is the nearest tree within ``eat_radius`` of it (none if none is in
    reach). An arrival at a tree is a step on which it becomes the tree at the agent's place (from
    none or another tree; a start in reach is not an arrival): where two trees' reaches overlap,
    the place belongs to the nearer, as it does for any memory of places. At every arrival, before
    the agent sees that step's observation, ``agent.recall_here(motion)`` gives the percept its
    memory holds at its believed place, the belief path-integrated by the step's odometry
    (``motion``, the observation's: known to the agent, unlike the percept; TEM's prediction of
    ``x_t`` from the prior code ``g_t``); the prediction is right when that percept's nearest vocabulary
    look (:func:`percept_identity`) is the tree's (kind, name) pair. Arrivals are counted per tree
    (previous visits 0, 1, ...); an arrival after at least one visit whose bearing from the tree
    falls in a sector (of :data:`BEARING_SECTORS`) not used by an earlier arrival there is
    zero-shot. Chance is one in the world's trees (each has its own look); the node agent, correct
    exactly when the place was visited before, scores 1 after a visit and chance before.

    Returns ``by_visits`` (keys "0" .. "4+"), ``zero_shot`` and ``after_visit`` (all arrivals after
    at least one visit), each with ``accuracy`` (per world, then mean with 95% CI over worlds),
    ``arrivals``, ``chance`` and ``node`` (the ceiling); and ``arrivals``, the list of records
    (``env``, ``visits``, ``zero_shot``, ``correct``, ``predicted`` look, recall ``confidence``,
    ``chance``).
    """
    if not callable(getattr(agent, "recall_here", None)):
        raise TypeError(f"agent: expected a BatchAgent with recall_here(motion) (a spatial memory), got "
                        f"{type(agent).__name__}")
    steps = checks.count(steps, "steps")
    config, n = envs.config, envs.num_envs
    observation, info = reset_worlds(envs, agent, seed)

    def tree_here(info):
        """Offsets (n, T, 2) from the trees to the agents, and the tree at each agent's place (n,), -1: none."""
        offset = np.asarray(info["position"], dtype=np.float64)[:, None] - np.asarray(info["tree_positions"])
        distance = np.hypot(offset[..., 0], offset[..., 1])
        nearest = distance.argmin(1)
        return offset, np.where(distance[np.arange(n), nearest] < config.eat_radius, nearest, -1)

    _, here = tree_here(info)
    visits = np.zeros(np.asarray(info["tree_identity"]).shape, dtype=np.int64)
    sectors = np.zeros(visits.shape + (BEARING_SECTORS,), dtype=bool)
    alive = np.ones(n, dtype=bool)
    records = []
    action = agent.act(observation)
    for _ in range(steps):
        observation, _, terminated, truncated, info = envs.step(action)
        offset, now = tree_here(info)  # on an episode's last step, still its world
        arrived = np.nonzero((now >= 0) & (now != here) & alive)[0]  # (envs,) each at its tree now[env]
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        here = now
        if arrived.size:
            percepts, confidence = agent.recall_here(observation["motion"])  # before it sees this step
            predicted, confidence = percept_identity(config, np.asarray(percepts)), np.asarray(confidence)
            identity = np.asarray(info["tree_identity"])
            for env, tree in zip(arrived, now[arrived]):
                bearing = math.atan2(offset[env, tree, 1], offset[env, tree, 0])
                sector = int((bearing + math.pi) / (2 * math.pi) * BEARING_SECTORS) % BEARING_SECTORS
                before = int(visits[env, tree])
                records.append({"env": int(env), "visits": before,
                                "zero_shot": before > 0 and not sectors[env, tree, sector],
                                "correct": bool(predicted[env] == identity[env, tree]),
                                "predicted": int(predicted[env]), "confidence": float(confidence[env]),
                                "chance": 1.0 / identity.shape[1]})
                visits[env, tree] += 1
                sectors[env, tree, sector] = True
        action = agent.act(observation)
        if progress is not None:
            progress(1)
        if not alive.any():
            break

    def summary(chosen: list[dict]) -> dict:
        worlds = sorted({r["env"] for r in chosen})
        per_world = [np.mean([r["correct"] for r in chosen if r["env"] == env]) for env in worlds]
        return {"accuracy": mean_ci(per_world), "arrivals": len(chosen),
                "chance": float(np.mean([r["chance"] for r in chosen])) if chosen else None,
                "node": float(np.mean([1.0 if r["visits"] else r["chance"] for r in chosen])) if chosen else None}

    bins = {f"{k}" if k < VISIT_BINS - 1 else f"{k}+": [r for r in records if min(r["visits"], VISIT_BINS - 1) == k]
            for k in range(VISIT_BINS)}
    return {"by_visits": {k: summary(chosen) for k, chosen in bins.items()},
            "after_visit": summary([r for r in records if r["visits"] > 0]),
            "zero_shot": summary([r for r in records if r["zero_shot"]]),
            "arrivals": records}


def fisher_information(true: np.ndarray, believed: np.ndarray, bin_size: float, min_samples: int = 50) -> dict:
    """The Fisher information of a location code about position, against occupancy, per spatial bin.

    ``true`` and ``believed`` (N, 2) positions, rows with NaN ignored. The code is summarised by
    its decoded position: the decoder is one-to-one over the arena, and Fisher information does not
    change under a one-to-one map of the observation. Per square bin of side ``bin_size`` holding
    at least ``min_samples`` samples, the believed position is fitted as ``a + A x`` by least
    squares over the bin and its eight neighbours (``A`` (2, 2): the mean code's derivative) and
    ``S`` is the covariance of the fit's residuals within the bin (the code's noise there);
    the information is ``J = A^T S^-1 A`` (the mean term, as in the seed notebook), summarised by
    ``sqrt(det J)`` (the 2-d counterpart of sqrt(J) in 1-d, which an efficient code makes
    proportional to the stimulus density: 1 / sigma^2 for an unbiased estimate with isotropic std
    sigma).

    Returns ``centres`` (n, 2), ``occupancy`` (n,) fraction of all samples in the bin,
    ``information`` (n,) sqrt(det J), ``normalised`` (n,) information / its sum, and the Pearson
    and Spearman ``correlation`` of normalised information with occupancy (None under 3 bins).
    """
    true, believed = (np.asarray(a, dtype=np.float64).reshape(-1, 2) for a in (true, believed))
    if true.shape != believed.shape:
        raise ValueError(f"true, believed: expected the same (N, 2) shape, got {true.shape} and {believed.shape}")
    bin_size = checks.positive(bin_size, "bin_size")
    min_samples = checks.integer(min_samples, "min_samples", low=3)
    keep = np.isfinite(true).all(1) & np.isfinite(believed).all(1)
    true, believed = true[keep], believed[keep]
    cells = np.floor(true / bin_size).astype(np.int64)
    keys, index, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    index = index.reshape(-1)
    lookup = {tuple(key): k for k, key in enumerate(keys)}
    centres, occupancy, information = [], [], []
    for k, key in enumerate(keys):
        if counts[k] < min_samples:
            continue
        near = [lookup[(key[0] + i, key[1] + j)] for i in (-1, 0, 1) for j in (-1, 0, 1)
                if (key[0] + i, key[1] + j) in lookup]
        rows = np.isin(index, near)
        design = np.column_stack([np.ones(rows.sum()), true[rows]])
        coefficients, *_ = np.linalg.lstsq(design, believed[rows], rcond=None)  # (3, 2)
        derivative = coefficients[1:].T  # (2, 2): d mean / d x
        own = index == k
        residuals = believed[own] - np.column_stack([np.ones(own.sum()), true[own]]) @ coefficients
        noise = np.cov(residuals.T)
        if np.linalg.matrix_rank(design) < 3 or np.linalg.det(noise) <= 0:
            continue
        J = derivative.T @ np.linalg.solve(noise, derivative)
        centres.append((key + 0.5) * bin_size)
        occupancy.append(counts[k] / len(true))
        information.append(math.sqrt(max(np.linalg.det(J), 0.0)))
    occupancy, information = np.array(occupancy), np.array(information)
    normalised = information / information.sum() if len(information) else information
    correlation = None
    if len(information) >= 3:
        correlation = {"pearson": float(np.corrcoef(normalised, occupancy)[0, 1]),
                       "spearman": float(np.corrcoef(average_ranks(normalised), average_ranks(occupancy))[0, 1])}
    return {"centres": np.array(centres).reshape(-1, 2).tolist(), "occupancy": occupancy.tolist(),
            "information": information.tolist(), "normalised": normalised.tolist(), "correlation": correlation}
