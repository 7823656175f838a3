"""Navigation evaluation protocols: functions that run agents and return plain data.

Seeds. Every protocol takes the first world seed ``seed``; env ``i`` of the one vector env (and
row ``i`` of the agent) gets ``seed + i``. Training and tuning use world seeds below
:data:`EVAL_SEED`; evaluation uses ``EVAL_SEED`` and up (``check_held_out`` says so for a range).

Statistics. :func:`mean_ci` gives a mean with the half-width of its 95% confidence interval by
the normal approximation over independent worlds (one episode per world). Simulated in the tests
at n = 32: it covers the true mean in about 94% of samples of normal data and about 91% of
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
import math
from typing import Any, Callable

import numpy as np
import torch

from treeworld import checks
from treeworld.tasks import spl

#: Held-out evaluation world seeds start here; training and tuning use seeds below it.
EVAL_SEED = 10_000


def check_held_out(seed: int, count: int, name: str = "seed") -> int:
    """``seed`` if the seeds ``seed .. seed + count - 1`` are all evaluation seeds; else ValueError."""
    seed = checks.integer(seed, name, low=0)
    if seed < EVAL_SEED:
        raise ValueError(f"{name}: expected held-out world seeds >= {EVAL_SEED} (below are for training and "
                         f"tuning), got {seed} .. {seed + count - 1}")
    return seed


def mean_ci(values: Any) -> dict:
    """Mean and the half-width of its 95% confidence interval (normal approximation) of a 1-d
    sample: ``{"mean", "ci95", "n"}``; mean None when empty, ci95 None below two values."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = float(1.96 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "ci95": half, "n": len(values)}


def first_episodes(envs: Any, agent: Any, steps: int, seed: int,
                   progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Drive ``agent`` (a BatchAgent, row i seeded ``seed + i``) in the vector env ``envs`` (env i
    seeded ``seed + i``) until the first episode of every env has ended, at most ``steps`` steps.

    Returns per env (arrays of ``num_envs``): ``return``, ``steps``, ``fruit``, ``poison``,
    ``terminated``; and ``goals``: one dict per homing goal that ended in a first episode (``env``,
    ``reached``, ``distance`` straight-line at its start, ``shortest`` l, ``path`` p; empty on
    other tasks). ``progress(n)`` is called after every step with 1.
    """
    steps = checks.count(steps, "steps")
    n = envs.num_envs
    if agent.num_agents != n:
        raise ValueError(f"agent: expected num_agents {n} (envs.num_envs), got {agent.num_agents}")
    agent.reset(None, seed=seed)
    observation, _ = envs.reset(seed=seed)
    result = {"return": np.zeros(n), "steps": np.zeros(n, dtype=np.int64), "fruit": np.zeros(n, dtype=np.int64),
              "poison": np.zeros(n, dtype=np.int64), "terminated": np.zeros(n, dtype=bool)}
    result["goals"] = []
    running = np.ones(n, dtype=bool)
    for _ in range(steps):
        observation, reward, terminated, truncated, info = envs.step(agent.act(observation))
        if "goal_reached" in info:
            ended = running & (np.asarray(info["goal_reached"]) | np.asarray(info["goal_failed"]))
            result["goals"] += [{"env": int(i), "reached": bool(info["goal_reached"][i]),
                                 "distance": float(info["goal_distance"][i]),
                                 "shortest": float(info["goal_shortest_path"][i]),
                                 "path": float(info["goal_path_length"][i])} for i in np.flatnonzero(ended)]
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
    and poison per 1,000 steps, return, from :func:`first_episodes`' output."""
    per_1000 = 1000.0 / np.maximum(episodes["steps"], 1)
    return {"survival": mean_ci(~episodes["terminated"] & (episodes["steps"] == steps)),
            "steps": mean_ci(episodes["steps"]),
            "fruit_per_1000_steps": mean_ci(episodes["fruit"] * per_1000),
            "poison_per_1000_steps": mean_ci(episodes["poison"] * per_1000),
            "return": mean_ci(episodes["return"])}


def foraging(envs: Any, agent: Any, steps: int, seed: int, progress: Callable[[int], Any] | None = None) -> dict:
    """The foraging protocol: :func:`foraging_metrics` of :func:`first_episodes`."""
    return foraging_metrics(first_episodes(envs, agent, steps, seed, progress), steps)


def homing_metrics(episodes: dict[str, Any], num_envs: int) -> dict:
    """Success rate and SPL (``tasks.spl``: S l / max(p, l)) of the goals that ended, each averaged
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


def homing(envs: Any, agent: Any, steps: int, seed: int, progress: Callable[[int], Any] | None = None) -> dict:
    """The homing protocol (on a ``task="homing"`` vector env): :func:`homing_metrics` of the goals
    of :func:`first_episodes`."""
    if envs.config.task != "homing":
        raise ValueError(f"envs: expected a homing-task vector env, got task {envs.config.task!r}")
    return homing_metrics(first_episodes(envs, agent, steps, seed, progress), envs.num_envs)


def belief_errors(envs: Any, agent: Any, steps: int, seed: int,
                  progress: Callable[[int], Any] | None = None) -> dict[str, np.ndarray]:
    """The path-integration protocol: position errors along the agent's own walk.

    ``agent`` is a BatchAgent with ``position()`` (its believed positions ``(B, 2)``, in a frame
    translated to where its episode started; motion observations are in world axes). After every
    step, once the agent has acted on the new observation, its error is
    ``|position() - (true position - start)|``; the dead-reckoning error of the same walk is that
    of the summed observed motion. Returns ``agent`` and ``dead_reckoning`` errors ``(steps, B)``,
    NaN in a world from the step its first episode ended (give ``envs`` no time limit and no
    health costs for walks that last). ``progress(1)`` after every step.
    """
    steps = checks.count(steps, "steps")
    if not callable(getattr(agent, "position", None)):
        raise TypeError(f"agent: expected a BatchAgent with position() (believed positions), got "
                        f"{type(agent).__name__}")
    n = envs.num_envs
    agent.reset(None, seed=seed)
    observation, info = envs.reset(seed=seed)
    start = np.asarray(info["position"], dtype=np.float64)
    reckoned = np.zeros_like(start)
    alive = np.ones(n, dtype=bool)
    errors = {"agent": np.full((steps, n), np.nan), "dead_reckoning": np.full((steps, n), np.nan)}
    action = agent.act(observation)  # integrates the first observation's motion, as the reckoning does
    reckoned += np.asarray(observation["motion"], dtype=np.float64)
    for t in range(steps):
        observation, _, terminated, truncated, info = envs.step(action)
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        action = agent.act(observation)
        reckoned += np.asarray(observation["motion"], dtype=np.float64)
        displacement = np.asarray(info["position"], dtype=np.float64) - start
        believed = np.asarray(agent.position(), dtype=np.float64)
        errors["agent"][t, alive] = np.hypot(*(believed - displacement)[alive].T)
        errors["dead_reckoning"][t, alive] = np.hypot(*(reckoned - displacement)[alive].T)
        if progress is not None:
            progress(1)
    return errors


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


def aligned_error(believed: np.ndarray, true: np.ndarray, rounds: int = 10) -> float:
    """Mean distance of believed places (n, 2) to their nearest true place (m, 2) after a rigid
    alignment (iterative closest point: match each to its nearest, align, ``rounds`` times);
    NaN for fewer than two believed places."""
    believed, true = np.asarray(believed, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(believed) < 2:
        return math.nan
    moved = believed
    for _ in range(rounds):
        match = np.linalg.norm(moved[:, None] - true[None], axis=-1).argmin(1)
        rotation, shift = rigid_alignment(believed, true[match])
        moved = believed @ rotation.T + shift
    return float(np.linalg.norm(moved[:, None] - true[None], axis=-1).min(1).mean())


def map_quality(envs: Any, agent: Any, steps: int, seed: int,
                progress: Callable[[int], Any] | None = None) -> dict:
    """The map-quality protocol for an agent with a ``SpatialMemory`` and a ``LandmarkMap`` (the
    TEM agent): after ``steps`` steps of its first episode in each world, per world the
    topographic layer's quantization and topographic errors over the stored entries
    (``[code, percept]``), and the mean distance, after a rigid (Procrustes) alignment, from the
    remembered trees and from the map units' decoded places to the nearest true tree (in the
    agent's frame: true positions minus the start). Means with 95% CIs over worlds with a map."""
    if not hasattr(agent, "landmarks") or not hasattr(agent, "memory"):
        raise TypeError(f"agent: expected an agent with a memory and landmarks (the TEM agent), got "
                        f"{type(agent).__name__}")
    steps = checks.count(steps, "steps")
    agent.reset(None, seed=seed)
    observation, info = envs.reset(seed=seed)
    start = np.asarray(info["position"], dtype=np.float64)
    alive = np.ones(envs.num_envs, dtype=bool)
    for _ in range(steps):
        observation, _, terminated, truncated, info = envs.step(agent.act(observation))
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        if progress is not None:
            progress(1)
    agent.act(observation)  # the last observation seen, as the walk's final state
    memory, figures = agent.memory, {"qe": [], "te": [], "trees_error": [], "units_error": []}
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
    return {name: mean_ci([v for v in values if not math.isnan(v)]) for name, values in figures.items()}

