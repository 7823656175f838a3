"""Measure the TEM agent: its belief error against dead reckoning, and its foraging against the baselines.

Examples:
    python scripts/measure_tem.py --out out/tem.json --plot out/tem_belief.png
    python scripts/measure_tem.py --parts foraging --agents forager,tem
    python scripts/measure_tem.py --worlds 2 --steps 30 --foraging-steps 30   # a smoke run

Seeds: training and tuning use world seeds below 10,000; evaluation uses held-out seeds from 10,000
(--seed): env i of the one vector env, and row i of the agent, get --seed + i.

Writes JSON with
- belief: the TEM agent walks --worlds worlds of the noisy task (motion noise 0.5, percept noise
  0.02) for --steps steps (default 10,000) with health costs OFF (living_cost = move_cost = 0, so
  the walks last; poison can still kill: such a world leaves the figures from then on, see
  ``worlds``) and no time limit. At every step: the belief error |position() - true displacement
  from the start| (the agent's frame is the world's translated to the start) and the dead-reckoning
  error |sum of observed motion - true displacement| of the same walk. At checkpoints: median and
  90th percentile over worlds of both; at the last step their ratio (dead reckoning / TEM) and the
  goals (median <= 5 units at 10,000 steps, and >= 5x below dead reckoning) as booleans;
- foraging: per task (clean treeworld/TreeWorld-v0, noisy treeworld/TreeWorldNoisy-v0) and agent
  (random, forager, tem), the first episode of each world (up to --foraging-steps steps, the
  registered limit of 2,000 by default): survival (the episode reached the limit), steps, fruit and
  poison per 1,000 steps, return; means with 95% confidence intervals (normal approximation) over
  worlds; and the goals (TEM survival >= 95% clean and >= 90% noisy, TEM fruit per 1,000 steps on
  the noisy task >= the Forager's) as booleans (null when an agent needed was not run);
- homing: per agent on treeworld/TreeWorldHoming-v0 (same worlds and episode limit), success rate
  and SPL of the goals that ended, averaged per world and then over worlds (95% CIs), the goal
  count, and per goal the straight-line distance and SPL.
Privileged state (info) is read only to measure, never by the agents.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny per-step products: a second BLAS thread only spins

import treeworld  # noqa: E402,F401  (first: its OpenMP spin setting must precede torch and numba)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from treeworld.agents import evaluation, registry  # noqa: E402
from treeworld.agents.tem import TEMAgent  # noqa: E402
from treeworld.config import WorldConfig  # noqa: E402
from treeworld.envs import MAX_EPISODE_STEPS, TASKS  # noqa: E402

from reporting import emit_json  # noqa: E402

PARTS = ("belief", "foraging", "homing")
AGENTS = ("random", "forager", "tem")  # the default comparison (any registered agent spec may be given)
FORAGING_TASKS = {"clean": "treeworld/TreeWorld-v0", "noisy": "treeworld/TreeWorldNoisy-v0"}
HOMING_TASK = {"homing": "treeworld/TreeWorldHoming-v0"}
CHECKPOINTS = (100, 250, 500, 1000, 2000, 5000, 10_000)
BELIEF_GOAL_STEPS, BELIEF_GOAL_MEDIAN, BELIEF_GOAL_RATIO = 10_000, 5.0, 5.0
SURVIVAL_GOALS = {"clean": 0.95, "noisy": 0.90}
BELIEF_OVERRIDES = {**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0}  # the noisy senses; walks that last


def belief_errors(worlds: int, steps: int, seed: int, progress=None) -> dict[str, np.ndarray]:
    """(steps, worlds) errors after each step of the TEM agent's walk on the noisy senses with
    costs off: ``tem`` (belief) and ``dead_reckoning`` (``evaluation.belief_errors``)."""
    config = WorldConfig(**BELIEF_OVERRIDES)
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=worlds, vectorization_mode="vector_entry_point",
                        config=config, max_episode_steps=None)
    errors = evaluation.belief_errors(envs, TEMAgent.for_config(config, worlds), steps, seed,
                                      None if progress is None else progress.update)
    envs.close()
    return {"tem": errors["agent"], "dead_reckoning": errors["dead_reckoning"]}


def checkpoints(steps: int) -> list[int]:
    """The fixed checkpoints, every 500th step and the last step, up to ``steps``."""
    return sorted({n for n in CHECKPOINTS if n <= steps} | set(range(500, steps + 1, 500)) | {steps})


def belief_report(errors: dict[str, np.ndarray]) -> dict:
    """Checkpoint figures, the last step's ratio and the goals from ``belief_errors``' output."""
    steps = len(errors["tem"])
    report = {"checkpoints": {str(n): {name: evaluation.error_summary(e[n - 1]) for name, e in errors.items()}
                              for n in checkpoints(steps)}}
    last = report["checkpoints"][str(steps)]
    tem, reckoning = last["tem"]["median"], last["dead_reckoning"]["median"]
    ratio = reckoning / tem if tem and reckoning is not None else None
    report["last_step"] = {"steps": steps, "tem_median": tem, "dead_reckoning_median": reckoning,
                           "dead_reckoning_over_tem": ratio}
    report["goals"] = {
        "evaluated_at_steps": steps,
        "note": None if steps >= BELIEF_GOAL_STEPS else f"the goals are set at {BELIEF_GOAL_STEPS} steps",
        f"median_at_most_{BELIEF_GOAL_MEDIAN:g}_units": None if tem is None else tem <= BELIEF_GOAL_MEDIAN,
        f"at_least_{BELIEF_GOAL_RATIO:g}x_below_dead_reckoning": None if ratio is None else ratio >= BELIEF_GOAL_RATIO,
    }
    return report


def plot_belief(errors: dict[str, np.ndarray], path: pathlib.Path) -> None:
    """A PNG of the median and 90th percentile over worlds of both errors against steps (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(errors["tem"]) + 1)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (name, e), color in zip(errors.items(), ("tab:blue", "tab:orange")):
        kept = ~np.isnan(e).all(axis=1)
        with np.errstate(all="ignore"):
            median, p90 = np.nanmedian(e[kept], axis=1), np.nanpercentile(e[kept], 90, axis=1)
        axes.plot(steps[kept], median, color=color, label=f"{name} median")
        axes.plot(steps[kept], p90, color=color, linestyle="--", label=f"{name} p90")
    axes.axhline(BELIEF_GOAL_MEDIAN, color="grey", linewidth=0.8, label=f"goal: median {BELIEF_GOAL_MEDIAN:g}")
    axes.set(xscale="log", xlabel="steps", ylabel="position error (world units)",
             title="TEM belief vs dead reckoning (noisy task, costs off)")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def foraging_goals(tasks: dict) -> dict:
    """The issue's foraging goals as booleans; None where an agent or task needed was not measured."""
    def mean(task, agent, key):
        return tasks.get(task, {}).get(agent, {}).get(key, {}).get("mean")

    goals = {}
    for task, level in SURVIVAL_GOALS.items():
        survival = mean(task, "tem", "survival")
        goals[f"tem_survival_{task}_at_least_{level:g}"] = None if survival is None else survival >= level
    tem, forager = mean("noisy", "tem", "fruit_per_1000_steps"), mean("noisy", "forager", "fruit_per_1000_steps")
    goals["tem_noisy_fruit_per_1000_at_least_forager"] = None if None in (tem, forager) else tem >= forager
    return goals


def task_report(tasks: dict[str, str], protocol, agents: list[str], worlds: int, steps: int, seed: int,
                label: str) -> dict:
    """``protocol`` (an ``evaluation`` function) of every agent on every task id, {task: {agent: figures}}."""
    figures = {}
    with tqdm(total=len(tasks) * len(agents) * steps, desc=label, unit="step", file=sys.stderr) as progress:
        for task, env_id in tasks.items():
            for name in agents:
                progress.set_postfix_str(f"{task}/{name}")
                done_before = progress.n
                figures.setdefault(task, {})[name] = evaluation.run(env_id, name, protocol, worlds, steps, seed,
                                                                    progress.update)
                progress.update(steps - (progress.n - done_before))  # the steps an early finish skipped
    return figures


def foraging_report(agents: list[str], worlds: int, steps: int, seed: int) -> dict:
    """Foraging figures of ``agents`` on the clean and noisy tasks, and the goals."""
    tasks = task_report(FORAGING_TASKS, evaluation.foraging, agents, worlds, steps, seed, "foraging")
    return {"env_ids": FORAGING_TASKS, "steps": steps, "tasks": tasks, "goals": foraging_goals(tasks)}


def homing_report(agents: list[str], worlds: int, steps: int, seed: int) -> dict:
    """Homing success and SPL of ``agents`` (per goal: SPL against the straight-line distance)."""
    tasks = task_report(HOMING_TASK, evaluation.homing, agents, worlds, steps, seed, "homing")
    return {"env_ids": HOMING_TASK, "steps": steps, "agents": tasks["homing"]}


def parse_list(parser: argparse.ArgumentParser, option: str, text: str, choices: tuple[str, ...]) -> list[str]:
    """Comma-separated names from ``choices`` (in the order of ``choices``); a parser error otherwise."""
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(choices))
    if unknown or not names:
        parser.error(f"--{option}: expected a comma-separated subset of {choices}, got {text!r}")
    return [name for name in choices if name in names]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS} (default: all)")
    parser.add_argument("--agents", default=",".join(AGENTS),
                        help=f"foraging agents, comma-separated, each one of {', '.join(registry.kinds())} "
                             f"(default: {','.join(AGENTS)})")
    parser.add_argument("--worlds", type=int, default=32, help="worlds (seeds) per figure, one vector env (default 32)")
    parser.add_argument("--seed", type=int, default=evaluation.EVAL_SEED,
                        help=f"first world seed (default {evaluation.EVAL_SEED}: the held-out evaluation seeds)")
    parser.add_argument("--steps", type=int, default=BELIEF_GOAL_STEPS,
                        help=f"steps of the belief walk (default {BELIEF_GOAL_STEPS})")
    parser.add_argument("--foraging-steps", type=int, default=MAX_EPISODE_STEPS,
                        help=f"episode limit of the foraging and homing runs (default {MAX_EPISODE_STEPS}, "
                             "the registered one)")
    parser.add_argument("--plot", type=pathlib.Path, default=None, metavar="PATH.png",
                        help="write a PNG of the belief errors against steps (needs matplotlib)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    parts = parse_list(parser, "parts", args.parts, PARTS)
    agents = [name for name in args.agents.split(",") if name]
    for name in agents:
        try:
            registry.parse(name)
        except (TypeError, ValueError) as e:
            parser.error(f"--agents: {e}")
    if not agents:
        parser.error("--agents: expected at least one agent")
    for name in ("worlds", "steps", "foraging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative int, got {args.seed}")
    if args.plot is not None:
        if "belief" not in parts:
            parser.error("--plot draws the belief part: add belief to --parts")
        if args.plot.suffix.lower() != ".png":
            parser.error(f"--plot: expected a path ending in .png, got {str(args.plot)!r}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib (pip install matplotlib)")

    torch.set_num_threads(1)
    report = {"worlds": args.worlds, "seed_range": [args.seed, args.seed + args.worlds - 1],
              "seed_note": f"held-out evaluation seeds are >= {evaluation.EVAL_SEED}; training and tuning use seeds below"}
    if "belief" in parts:
        with tqdm(total=args.steps, desc="belief walk", unit="step", file=sys.stderr) as progress:
            errors = belief_errors(args.worlds, args.steps, args.seed, progress)
        report["belief"] = {"task": "noisy", "config_overrides": BELIEF_OVERRIDES,
                            "max_episode_steps": None,
                            "note": "health costs off (living_cost = move_cost = 0) so the walks last; a world "
                                    "killed by poison leaves the figures from then on (see worlds)",
                            **belief_report(errors)}
        if args.plot is not None:
            plot_belief(errors, args.plot)
            report["belief"]["plot"] = str(args.plot)
    if "foraging" in parts:
        report["foraging"] = foraging_report(agents, args.worlds, args.foraging_steps, args.seed)
    if "homing" in parts:
        report["homing"] = homing_report(agents, args.worlds, args.foraging_steps, args.seed)
    emit_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
