"""Characterise the tasks: calibrate the noisy world's levels and rank baselines by their returns.

Examples:
    python scripts/measure_tasks.py --seeds 32 --out out/tasks.json
    python scripts/measure_tasks.py --seeds 2 --steps 200       # a smoke run

Writes JSON with
- calibration (on treeworld/TreeWorldNoisy-v0's levels, and on the clean world for reference):
  dead-reckoning drift of a random walk (observed motion summed from the known start; costs off so
  the walk lasts), the error of the distance to each tree within smell range read from ONE smell
  observation by exact least-squares decoding (the Forager's decoder: coefficient -> kernel ->
  distance; a tree's position error is at least this), and how often the tree in sight is
  recognised as its nearest vocabulary percept (kind and name);
- per task (forage, noisy, homing) and agent (do-nothing, random walker, Forager): return, fruit,
  poison, steps, survival to the time limit, homing goals and SPL; means with 95% confidence
  intervals (Student's t) over episodes seeded --seed, --seed + 1, ...
Privileged state is read only to measure, never by the agents.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny per-step products: a second BLAS thread only spins

import numpy as np  # noqa: E402
from tqdm import tqdm

import gymnasium as gym

from treeworld.agents.baselines import Forager, PerceptDecoder, RandomWalker
from treeworld.config import WorldConfig
from treeworld.envs import NOISY, TASKS
from treeworld.tasks import spl
from treeworld.vocabulary import FRUIT_PHRASES

from treeworld.agents.evaluation import mean_ci

from reporting import emit_json

AGENTS = ("nothing", "random", "forager")
DRIFT_AT = (100, 500, 1000, 2000)


class DoNothing:
    """Stays put and never eats."""

    def reset(self, seed=None):
        pass

    def act(self, observation):
        return np.array([0.0, 0.0, -1.0], np.float32)


def make_agent(name: str, env: gym.Env, seed: int):
    config = env.unwrapped.config
    if name == "nothing":
        return DoNothing()
    if name == "random":
        return RandomWalker(env.action_space, seed=seed, config=config)
    return Forager(config=config, seed=seed)


def episode(task: str, agent_name: str, seed: int, steps: int) -> dict:
    """One episode of ``agent_name`` on ``task``; its metrics."""
    env = gym.make("treeworld/TreeWorld-v0", config=WorldConfig(**TASKS[task]), max_episode_steps=steps)
    agent = make_agent(agent_name, env, seed)
    agent.reset(seed=seed)
    observation, info = env.reset(seed=seed)
    total, goals, done = 0.0, [], False
    while not done:
        observation, reward, terminated, truncated, info = env.step(agent.act(observation))
        total += reward
        done = terminated or truncated
        if info.get("goal_reached") or info.get("goal_failed"):
            goals.append((info["goal_reached"], info["goal_shortest_path"], info["goal_path_length"]))
    result = {"return": total, "fruit": info["fruit_eaten"], "poison": info["poison_eaten"],
              "steps": env.unwrapped.state.steps[0].item(), "survived": float(not terminated)}
    if task == "homing":
        result.update(goals_reached=info["goals_reached"], goals_failed=info["goals_failed"],
                      spl=spl(*zip(*goals)) if goals else math.nan)
    return result


def calibration(config: WorldConfig, seeds: list[int], steps: int) -> dict:
    """Drift, single-smell distance error and sight recognition of a random walk in ``config``."""
    walk = config.replace(living_cost=0.0, move_cost=0.0)  # the walk's geometry, not its survival
    env = gym.make("treeworld/TreeWorld-v0", config=walk, max_episode_steps=steps)
    batch = env.unwrapped._batch
    decoder = PerceptDecoder(batch.vocabulary)
    sight_rows = batch.tables.sight[:-1]  # (K * P * F, D) every seen percept, without the zero row
    log_a = math.log(config.smell_attenuation) / config.smell_distance ** 2
    drift = {n: [] for n in sorted({n for n in DRIFT_AT if n <= steps} | {steps})}
    distance_errors, recognised, sightings = [], 0, 0
    for seed in seeds:
        agent = RandomWalker(env.action_space, seed=seed, config=walk)
        agent.reset(seed=seed)
        observation, info = env.reset(seed=seed)
        estimate = info["position"].astype(np.float64)
        for t in range(1, steps + 1):
            observation, _, _, _, info = env.step(agent.act(observation))
            estimate += observation["motion"]
            if t in drift:
                drift[t].append(float(np.hypot(*(estimate - info["position"]))))
            state = env.unwrapped.state
            if t % 10 == 0:  # one smell observation: decoded strength -> distance of each tree in range
                strength = decoder.smell(observation["smell"])[state.tree_name[0] - batch.vocabulary.name_offset]
                true = state.tree_distance[0]
                ratio = strength / state.tree_smell_weight[0]  # = kernel(d) when noiseless
                read = np.sqrt(np.log(np.clip(ratio, 1e-12, 1.0)) / log_a)
                near = true < config.smell_distance
                distance_errors.extend(np.abs(read - true)[near].tolist())
            seen = int(state.sight_tree[0])
            if seen >= 0:
                nearest = int(np.argmin(((sight_rows - observation["sight"]) ** 2).sum(axis=1)))
                truth = int(state.tree_sight_row[0, seen]) // len(FRUIT_PHRASES)
                recognised += nearest // len(FRUIT_PHRASES) == truth
                sightings += 1
    errors = np.asarray(distance_errors)
    return {
        "drift": {str(n): {"median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
                  for n, v in drift.items()},
        "smell_distance_error": {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90)),
                                 "fraction_within_2_units": float((errors < 2.0).mean()), "trees": len(errors)},
        "sight_recognised": {"fraction": recognised / max(sightings, 1), "sightings": sightings},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=32, help="episodes (world seeds) per task and agent (default 32)")
    parser.add_argument("--seed", type=int, default=1000, help="first episode seed (default 1000)")
    parser.add_argument("--steps", type=int, default=2000, help="episode length and random-walk length (default 2000)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    for name in ("seeds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an int >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative int, got {args.seed}")
    seeds = list(range(args.seed, args.seed + args.seeds))

    report = {"seeds": seeds, "steps": args.steps, "noisy_levels": NOISY, "calibration": {}, "tasks": {}}
    for name, config in (("clean", WorldConfig()), ("noisy", WorldConfig(**NOISY))):
        print(f"[measure] calibration on the {name} world ...", file=sys.stderr)
        report["calibration"][name] = calibration(config, seeds, args.steps)
    runs = [(task, agent) for task in TASKS for agent in AGENTS]
    with tqdm(total=len(runs) * len(seeds), desc="episodes", unit="ep", file=sys.stderr) as progress:
        for task, agent in runs:
            rows = []
            for seed in seeds:
                rows.append(episode(task, agent, seed, args.steps))
                progress.update(1)
            report["tasks"].setdefault(task, {})[agent] = {
                key: mean_ci([row[key] for row in rows if not math.isnan(row[key])]) for key in rows[0]}
    emit_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
