"""Evaluate agents on the navigation protocols and write one report (JSON, Markdown, PNG plots).

Examples:
    python scripts/evaluate.py --agents random,forager,tem --tasks forage,noisy,homing --out out/eval
    python scripts/evaluate.py --agents tem:out/tem.pt --tasks noisy --seeds 64
    python scripts/evaluate.py --quick --out out/eval_quick        # a small smoke run

Seeds: every protocol runs on the held-out world seeds --seed .. --seed + --seeds - 1 (from 10,000;
training and tuning use seeds below, and a range reaching below is refused). One vector env per
agent and task; one episode per world, or --episodes of foraging and homing on the same layouts from
other starts (averaged per world: worlds are the units of the confidence intervals).

Protocols (treeworld.agents.evaluation):
- foraging, on the tasks forage and noisy: survival at --steps, steps survived, fruit and poison
  per 1,000 steps, return (mean with 95% CI over worlds);
- homing, on the task homing: success rate and SPL (per world, then over worlds), SPL against the
  straight-line distance to the goal;
- map quality, for agents with a map (the TEM agent), after a walk of --steps on the noisy senses
  (costs off): the topographic layer's quantization and topographic errors, and the remembered
  trees' and map units' distance to the true trees after a rigid alignment;
- revisit prediction, for agents with a spatial memory (recall_here(motion): the TEM agent), along
  its own foraging walk of --steps on the noisy task: at each arrival at a tree, before it sees it,
  is the look its memory holds at its believed place (moved by the step's odometry) the tree's?
  Accuracy by previous visits and zero-shot, with chance and the node-agent ceiling;
- path integration, for agents that report a belief (position(): the TEM agent): belief error,
  its path integrator's error without loop closure and dead reckoning's along the agent's own walk
  of --belief-steps steps on the noisy task's senses at each --noise level of motion noise (health
  costs off so walks last); and on the same walks the Fisher information of the belief about
  position against occupancy (per 25-unit bin, with its correlation).
Writes report.json, report.md (a table per protocol, agents as rows) and foraging.png,
homing_spl.png, revisits.png, path_integration.png, fisher.png and map.png in --out.
"""
from __future__ import annotations

import argparse
import functools
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
from reporting import json_text  # noqa: E402

TASK_IDS = {"forage": "treeworld/TreeWorld-v0", "noisy": "treeworld/TreeWorldNoisy-v0",
            "homing": "treeworld/TreeWorldHoming-v0"}
FORAGING_KEYS = ("survival", "steps", "fruit_per_1000_steps", "poison_per_1000_steps", "return")
CHECKPOINTS = (100, 1000, 2000, 5000, 10_000)
FISHER_BIN = 25.0  # world units: a quarter of the sight range; ~100 bins over a 10,000-step walk
PI_ROWS = {"dead_reckoning": "dead reckoning", "path_integration": "path integration alone"}


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


def capabilities(spec: str, worlds: int, tasks: list[str]) -> set[str]:
    """Which of ``position`` (a belief) and ``recall_here`` (a spatial memory) the agent ``spec``
    (for ``worlds`` envs) offers; ValueError if it cannot run one of ``tasks`` (e.g. a policy
    trained on another observation space)."""
    import gymnasium as gym

    actions = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    agents = [registry.make_batch_agent(spec, WorldConfig(**TASKS[task]), worlds, actions) for task in tasks]
    return {name for name in ("position", "recall_here") if callable(getattr(agents[0], name, None))}


def path_integration(spec: str, noise: float, worlds: int, steps: int, seed: int, progress) -> dict:
    """Belief, path-integration and dead-reckoning error summaries at the checkpoints, motion noise
    ``noise``, and the Fisher information of the belief against occupancy on the same walks."""
    config = WorldConfig(**{**TASKS["noisy"], "motion_noise": noise, "living_cost": 0.0, "move_cost": 0.0})
    walks = evaluation.run(TASK_IDS["forage"], spec, evaluation.belief_errors, worlds, steps, seed, progress,
                           config=config, max_episode_steps=None)
    true, believed = walks.pop("true"), walks.pop("believed")
    at = sorted({n for n in CHECKPOINTS if n <= steps} | {steps})
    return {"checkpoints": {str(n): {name: evaluation.error_summary(e[n - 1]) for name, e in walks.items()}
                            for n in at},
            "median_curve": {name: np.nanmedian(e, axis=1).tolist() for name, e in walks.items()},
            "fisher": evaluation.fisher_information(true, believed, bin_size=FISHER_BIN)}


def goals(report: dict) -> dict:
    """The TEM issues' goals, for the TEM agents (``tem``, ``tem:PATH``) the report has the figures
    of: per agent, per goal ``{"value", "target", "met"}`` (means over worlds; belief at the last
    step, noise 0.5)."""
    found: dict = {}

    def check(agent, name, value, target, at_least=True):
        if value is not None and registry.parse(agent)[0] == "tem":
            met = value >= target if at_least else value <= target
            found.setdefault(agent, {})[name] = {"value": value, "target": target, "met": bool(met)}

    foraging = report.get("foraging", {})
    for task, target in (("forage", 0.95), ("noisy", 0.90)):
        for agent, m in foraging.get(task, {}).items():
            check(agent, f"{task} survival", m["survival"]["mean"], target)
    forager = foraging.get("noisy", {}).get("forager")
    for agent, m in foraging.get("noisy", {}).items():
        if forager is not None and agent != "forager":
            check(agent, "noisy fruit / 1,000 (target: the Forager's)", m["fruit_per_1000_steps"]["mean"],
                  forager["fruit_per_1000_steps"]["mean"])
    for agent, m in report.get("path_integration", {}).get("0.5", {}).items():
        last = m["checkpoints"][max(m["checkpoints"], key=int)]
        check(agent, "belief median error (noise 0.5, last step)", last["agent"]["median"], 5.0, at_least=False)
        if last["agent"]["median"]:
            check(agent, "dead reckoning / belief median error", last["dead_reckoning"]["median"] / last["agent"]["median"], 5.0)
    for agent, m in report.get("revisits", {}).items():
        check(agent, "revisit accuracy after one visit", m["by_visits"]["1"]["accuracy"]["mean"], 0.95)
        check(agent, "zero-shot revisit accuracy", m["zero_shot"]["accuracy"]["mean"], 0.90)
    for agent, m in report.get("homing", {}).items():
        check(agent, "homing success", m["success"]["mean"], 0.95)
        check(agent, "homing SPL", m["spl"]["mean"], 0.8)
    return found


def markdown(report: dict) -> str:
    """report.md: one table per protocol, agents as rows."""
    def ci(figure, digits):
        if figure["mean"] is None:
            return "–"
        half = "" if figure["ci95"] is None else f" ± {figure['ci95']:.{digits}f}"
        return f"{figure['mean']:.{digits}f}{half}"

    lines = ["# Evaluation report", "",
             f"Worlds: {report['worlds']} held-out seeds {report['seeds'][0]}-{report['seeds'][1]} "
             f"({report.get('episodes', 1)} foraging and homing episode(s) each); "
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
    if "revisits" in report:
        bins = list(next(iter(report["revisits"].values()))["by_visits"])
        lines += [f"## Revisit prediction (noisy task, {report['steps']} steps): accuracy (arrivals) by previous "
                  "visits", "", "| agent | " + " | ".join(bins) + " | after a visit | zero-shot |",
                  "|---" * (len(bins) + 3) + "|"]
        for agent, m in report["revisits"].items():
            cells = [m["by_visits"][b] for b in bins] + [m["after_visit"], m["zero_shot"]]
            lines.append(f"| {agent} | " + " | ".join(f"{ci(c['accuracy'], 2)} ({c['arrivals']})" for c in cells) + " |")
        first = next(iter(report["revisits"].values()))  # the same arrivals' chance and ceiling: the first agent's
        for name, label in (("chance", "chance"), ("node", "node agent (ceiling)")):
            cells = [first["by_visits"][b] for b in bins] + [first["after_visit"], first["zero_shot"]]
            lines.append(f"| {label} | " + " | ".join("–" if c[name] is None else f"{c[name]:.2f}" for c in cells) + " |")
        lines.append("")
    for noise, agents in report.get("path_integration", {}).items():
        for agent, m in agents.items():
            steps = list(m["checkpoints"])
            lines += [f"## Path integration: {agent}, motion noise {noise} (median (p90), world units)", "",
                      "| | " + " | ".join(steps) + " |", "|---" * (len(steps) + 1) + "|"]
            for name in [n for n in PI_ROWS if n in m["median_curve"]] + ["agent"]:
                cells = [m["checkpoints"][n][name] for n in steps]
                lines.append(f"| {PI_ROWS.get(name, agent)} | "
                             + " | ".join(f"{c['median']:.1f} ({c['p90']:.1f})" for c in cells) + " |")
            fisher = m["fisher"]
            if fisher["correlation"] is not None:
                lines += ["", f"Fisher information of the belief about position against occupancy "
                              f"({len(fisher['occupancy'])} bins of {FISHER_BIN:g} units): Pearson r = "
                              f"{fisher['correlation']['pearson']:.2f}, Spearman rho = "
                              f"{fisher['correlation']['spearman']:.2f}."]
            lines.append("")
    if report.get("goals"):
        lines += ["## Goals of the TEM issues", "", "| agent | goal | value | target | met |", "|---|---|---|---|---|"]
        lines += [f"| {agent} | {name} | {g['value']:.2f} | {g['target']:.2f} | {'yes' if g['met'] else 'no'} |"
                  for agent, found in report["goals"].items() for name, g in found.items()]
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
            for name, style in (("agent", "-"), ("dead_reckoning", "--"), ("path_integration", ":")):
                if name in m["median_curve"]:
                    curve = m["median_curve"][name]
                    axes.plot(np.arange(1, len(curve) + 1), curve, style, color=f"C{k}",
                              label=f"{PI_ROWS.get(name, agent)}, noise {noise}")
        axes.set(xscale="log", xlabel="steps", ylabel="median position error (world units)",
                 title="Path integration")
        axes.legend(fontsize=6)
        written.append(_save(figure, out / "path_integration.png"))
    fishers = [(k, noise, agent, m["fisher"]) for k, (noise, agent, m) in enumerate(pairs)
               if m["fisher"]["correlation"] is not None] if report.get("path_integration") else []
    if fishers:
        figure, axes = plt.subplots(figsize=(5, 4))
        for k, noise, agent, fisher in fishers:
            axes.scatter(fisher["occupancy"], fisher["normalised"], s=10, color=f"C{k}",
                         label=f"{agent}, noise {noise} (r = {fisher['correlation']['pearson']:.2f})")
        axes.set(xscale="log", yscale="log", xlabel="occupancy (fraction of steps in the bin)",
                 ylabel="normalised sqrt det Fisher information", title="Belief information against occupancy")
        axes.legend(fontsize=7)
        written.append(_save(figure, out / "fisher.png"))
    if report.get("revisits"):
        figure, axes = plt.subplots(figsize=(6, 4))
        for k, (agent, m) in enumerate(report["revisits"].items()):
            bins = [b for b, c in m["by_visits"].items() if c["accuracy"]["mean"] is not None]
            means = [m["by_visits"][b]["accuracy"]["mean"] for b in bins]
            halves = [m["by_visits"][b]["accuracy"]["ci95"] or 0.0 for b in bins]
            axes.errorbar(bins, means, yerr=halves, marker="o", capsize=3, color=f"C{k}", label=agent)
            axes.plot(bins, [m["by_visits"][b]["node"] for b in bins], "--", color="gray", drawstyle="steps-mid",
                      label="node agent (ceiling)" if k == 0 else None)
            axes.plot(bins, [m["by_visits"][b]["chance"] for b in bins], ":", color="black",
                      label="chance" if k == 0 else None)
        axes.set(xlabel="previous visits to the tree", ylabel="recalled look is the tree's", ylim=(-0.02, 1.05),
                 title="Revisit prediction from the belief alone")
        axes.legend()
        written.append(_save(figure, out / "revisits.png"))
    maps = [(agent, m["example"]) for agent, m in report.get("map", {}).items() if m.get("example")]
    if maps:
        figure, grid = plt.subplots(1, len(maps), figsize=(5 * len(maps), 5), squeeze=False)
        for axes, (agent, example) in zip(grid[0], maps):
            for key, style in (("true", dict(marker="o", s=60, facecolors="none", edgecolors="green", label="true trees")),
                               ("trees", dict(marker="x", s=30, color="C0", label="remembered trees")),
                               ("units", dict(marker="s", s=20, color="C3", label="map units"))):
                points = np.array(example[key]).reshape(-1, 2)
                axes.scatter(points[:, 0], points[:, 1], **style)
            axes.set(aspect="equal", xlabel="x (agent frame, aligned)", ylabel="y",
                     title=f"{agent}: map after {report['steps']} steps")
            axes.legend(fontsize=7)
        written.append(_save(figure, out / "map.png"))
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
    parser.add_argument("--episodes", type=int, default=1,
                        help="episodes per world of foraging and homing: the same layouts from other starts, "
                             "averaged per world (default 1)")
    parser.add_argument("--steps", type=int, default=2000, help="episode limit of foraging and homing (default 2000)")
    parser.add_argument("--belief-steps", type=int, default=10_000, help="steps of the path-integration walks")
    parser.add_argument("--noise", default="0.25,0.5,1.0", help="motion-noise levels of the path-integration walks")
    parser.add_argument("--quick", action="store_true",
                        help="2 worlds, 100 steps (homing goals from step 20, timing out after 40), 100-step walks "
                             "at noise 0.5")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; options given on the command line stay
        for option, value in (("seeds", 2), ("steps", 100), ("belief_steps", 100), ("noise", "0.5")):
            if getattr(args, option) == parser.get_default(option):
                setattr(args, option, value)
    agents = names(parser, "agents", args.agents, registry.parse)
    tasks = names(parser, "tasks", args.tasks, check_task)
    for option in ("seeds", "episodes", "steps", "belief_steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}: expected an int >= 1, got {getattr(args, option)}")
    try:
        evaluation.check_held_out(args.seed, args.seeds, "--seed")
        noises = [float(x) for x in args.noise.split(",") if x]
    except ValueError as e:
        parser.error(f"{e}" if str(e).startswith("--") else f"--noise: expected comma-separated numbers ({e})")
    if not noises or min(noises) < 0:
        parser.error(f"--noise: expected comma-separated numbers >= 0, got {args.noise!r}")

    # goals within the short episodes, set early enough to be counted (by step steps - goal_timeout)
    quick_homing = {"explore_steps": 20, "goal_timeout": 40} if args.quick else {}
    torch.set_num_threads(1)
    started = time.perf_counter()
    report: dict = {"agents": agents, "tasks": tasks, "worlds": args.seeds, "episodes": args.episodes,
                    "seeds": [args.seed, args.seed + args.seeds - 1], "steps": args.steps}
    try:
        offers = {agent: capabilities(agent, args.seeds, tasks) for agent in agents}
    except (TypeError, ValueError) as e:
        parser.error(f"--agents: {e}")
    believers = [a for a in agents if "position" in offers[a]]
    rememberers = [a for a in agents if "recall_here" in offers[a]]
    total = len(tasks) * len(agents) * args.steps * args.episodes \
        + len(believers) * (args.steps + len(noises) * args.belief_steps) \
        + len(rememberers) * args.steps
    with tqdm(total=total, desc="evaluate", unit="step", file=sys.stderr) as progress:
        def stage(label, run):
            progress.set_postfix_str(label)
            before = progress.n
            result = run()
            return result, before

        for task in tasks:
            protocol = functools.partial(evaluation.homing if task == "homing" else evaluation.foraging,
                                         episodes=args.episodes)
            for agent in agents:
                result, before = stage(f"{task}/{agent}", lambda: evaluation.run(
                    TASK_IDS[task], agent, protocol, args.seeds, args.steps, args.seed, progress.update,
                    **(quick_homing if task == "homing" else {})))
                progress.update(args.steps * args.episodes - (progress.n - before))  # steps early finishes skipped
                section = report.setdefault("homing", {}) if task == "homing" \
                    else report.setdefault("foraging", {}).setdefault(task, {})
                section[agent] = result
        for agent in believers:  # the map: after a walk of --steps on the noisy senses, costs off
            result, _ = stage(f"map/{agent}", lambda: evaluation.run(
                TASK_IDS["forage"], agent, evaluation.map_quality, args.seeds, args.steps, args.seed,
                progress.update, config=WorldConfig(**{**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0}),
                max_episode_steps=None))
            report.setdefault("map", {})[agent] = result
        for agent in rememberers:  # revisits along the agent's own foraging walk on the noisy task
            result, before = stage(f"revisits/{agent}", lambda: evaluation.run(
                TASK_IDS["noisy"], agent, evaluation.revisits, args.seeds, args.steps, args.seed, progress.update))
            progress.update(args.steps - (progress.n - before))
            result.pop("arrivals")
            report.setdefault("revisits", {})[agent] = result
        for noise in noises:
            for agent in believers:
                result, _ = stage(f"path integration {noise}/{agent}", lambda: path_integration(
                    agent, noise, args.seeds, args.belief_steps, args.seed, progress.update))
                report.setdefault("path_integration", {}).setdefault(str(noise), {})[agent] = result
    report["wall_time_s"] = time.perf_counter() - started
    report["goals"] = goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, args.out)
    (args.out / "report.json").write_text(json_text(report, indent=1) + "\n")
    (args.out / "report.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'} and {', '.join(report['plots'])}")
    return report


if __name__ == "__main__":
    main()
