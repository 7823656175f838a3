"""Evaluate agents on the navigation protocols and write one report (JSON, Markdown, PNG plots).

Examples:
    python scripts/evaluate.py --agents random,forager,tem --tasks forage,noisy,homing --out out/eval
    python scripts/evaluate.py --agents tem:out/tem.pt --tasks noisy --seeds 64
    python scripts/evaluate.py --quick --out out/eval_quick        # a small smoke run

Seeds: every protocol runs on the held-out world seeds --seed .. --seed + --seeds - 1 (from 10,000;
training and tuning use seeds below, and a range reaching below is refused). One vector env per
agent and task, one episode per world.

Protocols (treeworld.agents.evaluation):
- foraging, on the tasks forage and noisy: survival at --steps, steps survived, fruit and poison
  per 1,000 steps, return (mean with 95% CI over worlds);
- homing, on the task homing: success rate and SPL (per world, then over worlds), SPL against the
  straight-line distance to the goal;
- map quality, for agents with a map (the TEM agent), after a walk of --steps on the noisy senses
  (costs off): the topographic layer's quantization and topographic errors, and the remembered
  trees' and map units' distance to the true trees after a rigid alignment;
- path integration, for agents that report a belief (position(): the TEM agent): belief error and
  dead-reckoning error along the agent's own walk of --belief-steps steps on the noisy task's
  senses at each --noise level of motion noise (health costs off so walks last).
Writes report.json, report.md (a table per protocol, agents as rows) and foraging.png,
homing_spl.png, path_integration.png in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny per-step products: a second BLAS thread only spins

import treeworld  # noqa: E402,F401  (first: its OpenMP spin setting must precede torch and numba)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from treeworld.agents import evaluation, registry  # noqa: E402
from treeworld.config import WorldConfig  # noqa: E402
from treeworld.envs import TASKS  # noqa: E402

TASK_IDS = {"forage": "treeworld/TreeWorld-v0", "noisy": "treeworld/TreeWorldNoisy-v0",
            "homing": "treeworld/TreeWorldHoming-v0"}
FORAGING_KEYS = ("survival", "steps", "fruit_per_1000_steps", "poison_per_1000_steps", "return")
CHECKPOINTS = (100, 1000, 2000, 5000, 10_000)


def names(parser: argparse.ArgumentParser, option: str, text: str, check) -> list[str]:
    """Comma-separated names, each passed to ``check`` (a parser error naming ``--option`` if it raises)."""
    chosen = [name for name in text.split(",") if name]
    if not chosen:
        parser.error(f"--{option}: expected at least one name")
    for name in chosen:
        try:
            check(name)
        except (TypeError, ValueError) as e:
            parser.error(f"--{option}: {e}")
    return chosen


def check_task(name: str) -> None:
    if name not in TASK_IDS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASK_IDS)}")


def has_belief(spec: str, worlds: int) -> bool:
    """Whether the agent ``spec`` (for ``worlds`` envs) reports a believed position (``position()``)."""
    import gymnasium as gym

    actions = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    return callable(getattr(registry.make_batch_agent(spec, WorldConfig(), worlds, actions), "position", None))


def path_integration(spec: str, noise: float, worlds: int, steps: int, seed: int, progress) -> dict:
    """Belief and dead-reckoning error summaries at the checkpoints, motion noise ``noise``."""
    config = WorldConfig(**{**TASKS["noisy"], "motion_noise": noise, "living_cost": 0.0, "move_cost": 0.0})
    errors = evaluation.run(TASK_IDS["forage"], spec, evaluation.belief_errors, worlds, steps, seed, progress,
                            config=config, max_episode_steps=None)
    at = sorted({n for n in CHECKPOINTS if n <= steps} | {steps})
    return {"checkpoints": {str(n): {name: evaluation.error_summary(e[n - 1]) for name, e in errors.items()}
                            for n in at},
            "median_curve": {name: np.nanmedian(e, axis=1).tolist() for name, e in errors.items()}}


def markdown(report: dict) -> str:
    """report.md: one table per protocol, agents as rows."""
    def ci(figure, digits):
        if figure["mean"] is None:
            return "–"
        half = "" if figure["ci95"] is None else f" ± {figure['ci95']:.{digits}f}"
        return f"{figure['mean']:.{digits}f}{half}"

    lines = ["# Evaluation report", "",
             f"Worlds: {report['worlds']} held-out seeds {report['seeds'][0]}-{report['seeds'][1]}; "
             f"wall time {report['wall_time_s']:.0f} s.", ""]
    for task, agents in report.get("foraging", {}).items():
        lines += [f"## Foraging: {task} ({report['steps']} steps)", "",
                  "| agent | survival | steps | fruit / 1,000 | poison / 1,000 | return |", "|---|---|---|---|---|---|"]
        lines += [f"| {agent} | " + " | ".join(ci(m[k], d) for k, d in zip(FORAGING_KEYS, (2, 0, 1, 2, 1))) + " |"
                  for agent, m in agents.items()]
        lines.append("")
    if "homing" in report:
        lines += ["## Homing", "", "| agent | success | SPL | goals |", "|---|---|---|---|"]
        lines += [f"| {agent} | {ci(m['success'], 2)} | {ci(m['spl'], 2)} | {m['goals']} |"
                  for agent, m in report["homing"].items()]
        lines.append("")
    if "map" in report:
        lines += [f"## Map quality (after {report['steps']} steps, noisy senses)", "",
                  "| agent | quantization error | topographic error | remembered trees to true (aligned) "
                  "| map units to true (aligned) |", "|---|---|---|---|---|"]
        lines += [f"| {agent} | {ci(m['qe'], 2)} | {ci(m['te'], 3)} | {ci(m['trees_error'], 1)} | "
                  f"{ci(m['units_error'], 1)} |" for agent, m in report["map"].items()]
        lines.append("")
    for noise, agents in report.get("path_integration", {}).items():
        for agent, m in agents.items():
            steps = list(m["checkpoints"])
            lines += [f"## Path integration: {agent}, motion noise {noise} (median (p90), world units)", "",
                      "| | " + " | ".join(steps) + " |", "|---" * (len(steps) + 1) + "|"]
            for name in ("dead_reckoning", "agent"):
                cells = [m["checkpoints"][n][name] for n in steps]
                lines.append(f"| {agent if name == 'agent' else 'dead reckoning'} | "
                             + " | ".join(f"{c['median']:.1f} ({c['p90']:.1f})" for c in cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plots(report: dict, out: pathlib.Path) -> list[str]:
    """foraging.png (survival with CIs), homing_spl.png (SPL against distance), path_integration.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if report.get("foraging"):
        figure, axes = plt.subplots(figsize=(6, 4))
        tasks = list(report["foraging"])
        agents = list(report["foraging"][tasks[0]])
        width = 0.8 / len(agents)
        for k, agent in enumerate(agents):
            means = [report["foraging"][t][agent]["survival"]["mean"] for t in tasks]
            halves = [report["foraging"][t][agent]["survival"]["ci95"] or 0.0 for t in tasks]
            axes.bar(np.arange(len(tasks)) + k * width, means, width, yerr=halves, capsize=3, label=agent)
        axes.set(xticks=np.arange(len(tasks)) + 0.4 - width / 2, xticklabels=tasks, ylabel="survival at the limit",
                 ylim=(0, 1.05), title="Foraging survival (95% CI)")
        axes.legend()
        written.append(_save(figure, out / "foraging.png"))
    if report.get("homing"):
        figure, axes = plt.subplots(figsize=(6, 4))
        for agent, m in report["homing"].items():
            distance, spl = np.array(m["per_goal"]["distance"]), np.array(m["per_goal"]["spl"])
            if len(distance):
                edges = np.linspace(0, max(distance.max(), 1.0), 8)
                which = np.clip(np.digitize(distance, edges) - 1, 0, len(edges) - 2)
                centres = [(edges[b] + edges[b + 1]) / 2 for b in range(len(edges) - 1) if (which == b).any()]
                means = [spl[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
                axes.plot(centres, means, marker="o", label=agent)
        axes.set(xlabel="straight-line distance to the goal at its start", ylabel="mean SPL", ylim=(0, 1.05),
                 title="Homing: SPL against distance")
        axes.legend()
        written.append(_save(figure, out / "homing_spl.png"))
    if report.get("path_integration"):
        figure, axes = plt.subplots(figsize=(6, 4))
        pairs = [(noise, agent, m) for noise, agents in report["path_integration"].items() for agent, m in agents.items()]
        for k, (noise, agent, m) in enumerate(pairs):  # one colour per noise level and agent
            for name, style in (("agent", "-"), ("dead_reckoning", "--")):
                curve = m["median_curve"][name]
                label = f"{agent if name == 'agent' else 'dead reckoning'}, noise {noise}"
                axes.plot(np.arange(1, len(curve) + 1), curve, style, color=f"C{k}", label=label)
        axes.set(xscale="log", xlabel="steps", ylabel="median position error (world units)",
                 title="Path integration")
        axes.legend(fontsize=7)
        written.append(_save(figure, out / "path_integration.png"))
    return written


def _save(figure, path: pathlib.Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(figure)
    return path.name


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="random,forager,tem",
                        help=f"comma-separated agents, each one of {', '.join(registry.kinds())} "
                             "(default: random,forager,tem)")
    parser.add_argument("--tasks", default="forage,noisy,homing",
                        help=f"comma-separated subset of {', '.join(TASK_IDS)} (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/eval"), help="report folder")
    parser.add_argument("--seeds", type=int, default=32, help="worlds (held-out seeds) per figure (default 32)")
    parser.add_argument("--seed", type=int, default=evaluation.EVAL_SEED,
                        help=f"first world seed (default and minimum {evaluation.EVAL_SEED})")
    parser.add_argument("--steps", type=int, default=2000, help="episode limit of foraging and homing (default 2000)")
    parser.add_argument("--belief-steps", type=int, default=10_000, help="steps of the path-integration walks")
    parser.add_argument("--noise", default="0.25,0.5,1.0", help="motion-noise levels of the path-integration walks")
    parser.add_argument("--quick", action="store_true",
                        help="2 worlds, 100 steps (homing goals from step 20), 100-step walks at noise 0.5")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; options given on the command line stay
        for option, value in (("seeds", 2), ("steps", 100), ("belief_steps", 100), ("noise", "0.5")):
            if getattr(args, option) == parser.get_default(option):
                setattr(args, option, value)
    agents = names(parser, "agents", args.agents, registry.parse)
    tasks = names(parser, "tasks", args.tasks, check_task)
    for option in ("seeds", "steps", "belief_steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}: expected an int >= 1, got {getattr(args, option)}")
    try:
        evaluation.check_held_out(args.seed, args.seeds, "--seed")
        noises = [float(x) for x in args.noise.split(",") if x]
    except ValueError as e:
        parser.error(f"{e}" if str(e).startswith("--") else f"--noise: expected comma-separated numbers ({e})")
    if not noises or min(noises) < 0:
        parser.error(f"--noise: expected comma-separated numbers >= 0, got {args.noise!r}")

    quick_homing = {"explore_steps": 20} if args.quick else {}  # goals within the short episodes
    torch.set_num_threads(1)
    started = time.perf_counter()
    report: dict = {"agents": agents, "tasks": tasks, "worlds": args.seeds,
                    "seeds": [args.seed, args.seed + args.seeds - 1], "steps": args.steps}
    try:
        believers = [a for a in agents if has_belief(a, args.seeds)]
    except (TypeError, ValueError) as e:
        parser.error(f"--agents: {e}")
    total = len(tasks) * len(agents) * args.steps + len(believers) * (args.steps + len(noises) * args.belief_steps)
    with tqdm(total=total, desc="evaluate", unit="step", file=sys.stderr) as progress:
        def stage(label, run):
            progress.set_postfix_str(label)
            before = progress.n
            result = run()
            return result, before

        for task in tasks:
            protocol = evaluation.homing if task == "homing" else evaluation.foraging
            for agent in agents:
                result, before = stage(f"{task}/{agent}", lambda: evaluation.run(
                    TASK_IDS[task], agent, protocol, args.seeds, args.steps, args.seed, progress.update,
                    **(quick_homing if task == "homing" else {})))
                progress.update(args.steps - (progress.n - before))  # the steps an early finish skipped
                section = report.setdefault("homing", {}) if task == "homing" \
                    else report.setdefault("foraging", {}).setdefault(task, {})
                section[agent] = result
        for agent in believers:  # the map: after a walk of --steps on the noisy senses, costs off
            result, _ = stage(f"map/{agent}", lambda: evaluation.run(
                TASK_IDS["forage"], agent, evaluation.map_quality, args.seeds, args.steps, args.seed,
                progress.update, config=WorldConfig(**{**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0}),
                max_episode_steps=None))
            report.setdefault("map", {})[agent] = result
        for noise in noises:
            for agent in believers:
                result, _ = stage(f"path integration {noise}/{agent}", lambda: path_integration(
                    agent, noise, args.seeds, args.belief_steps, args.seed, progress.update))
                report.setdefault("path_integration", {}).setdefault(str(noise), {})[agent] = result
    report["wall_time_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (args.out / "report.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and {', '.join(report['plots'])}")
    return report


if __name__ == "__main__":
    main()
