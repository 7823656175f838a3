"""Learning curves of RL on the tree world: PPO on raw observations, RecurrentPPO (LSTM) and PPO with
the TEM memory's features, on the same tasks, seeds and budget; one figure per task.

Examples:
    python scripts/rl_curves.py --timesteps 200000 --out out/rl          # train what is missing, then plot
    python scripts/rl_curves.py --out out/rl --plot-only                 # re-plot finished runs
    python scripts/rl_curves.py --variants ppo,ppo_tem --tasks homing --seeds 0,1,2,3

Each run is ``scripts/train.py --algo ... --task ... --seed ...`` in OUT/TASK/VARIANT/seedN (a run
whose metrics reach --timesteps is kept). The curves are the validation figures (one deterministic
episode on each of 8 validation worlds per check) against environment steps: mean over seeds with
the 95% interval (Student's t over seeds; thin lines: single seeds). Steps to threshold:
the first check at which a seed's validation fruit per episode reaches each threshold (the
Forager's rate on the noisy task, 84.6 per 1,000 steps in the evaluation report, and lower bars). Writes OUT/curves_TASK.png
and OUT/curves.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

from treeworld.agents.evaluation import mean_ci

VARIANTS = {"ppo": ["--algo", "ppo"], "recurrent_ppo": ["--algo", "recurrent_ppo"],
            "ppo_tem": ["--algo", "ppo", "--tem-features"]}
LABELS = {"ppo": "PPO (raw)", "recurrent_ppo": "RecurrentPPO (LSTM)", "ppo_tem": "PPO + TEM features"}
FIGURES = {"noisy": ("fruit", "survived", "return"), "forage": ("fruit", "survived", "return"),
           "homing": ("success", "spl", "return")}
#: fruit per 1,000-step episode: the Forager's rate on the noisy task (README evaluation), and lower bars
FRUIT_THRESHOLDS = (5.0, 10.0, 20.0, 84.6)


def read_lines(run: pathlib.Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def train(run: pathlib.Path, task: str, variant: str, seed: int, args) -> None:
    lines = read_lines(run)
    if lines and lines[-1]["timesteps"] >= args.timesteps and (run / "policy.zip").exists():
        return
    command = [sys.executable, str(pathlib.Path(__file__).with_name("train.py")), *VARIANTS[variant],
               "--task", task, "--seed", str(seed), "--timesteps", str(args.timesteps), "--eval-steps",
               str(args.eval_steps), "--checkpoint-steps", str(args.eval_steps), "--out", str(run)]
    if variant == "ppo_tem" and args.tem_checkpoint:
        command += ["--tem-checkpoint", args.tem_checkpoint]
    if (run / "policy.zip").exists():
        command.append("--resume")
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def curves(runs: dict[str, list[list[dict]]], key: str) -> dict[str, dict]:
    """Per variant: checks (timesteps) and per-seed validation values of ``key``."""
    result = {}
    for variant, seeds in runs.items():
        steps = sorted(set.intersection(*[{line["timesteps"] for line in lines} for lines in seeds])) if seeds else []
        values = np.array([[next(line["validation"][key] for line in lines if line["timesteps"] == t) for t in steps]
                           for lines in seeds], dtype=float)
        result[variant] = {"timesteps": steps, "values": values}
    return result


def steps_to(lines: list[dict], key: str, threshold: float) -> int | None:
    for line in lines:
        if line["validation"][key] >= threshold:
            return line["timesteps"]
    return None


def plot(task: str, runs: dict[str, list[list[dict]]], path: pathlib.Path, timesteps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = FIGURES[task]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6))
    for axis, key in zip(axes, keys):
        for (variant, data), color in zip(curves(runs, key).items(), ("C0", "C1", "C2")):
            if not data["timesteps"]:
                continue
            x, v = np.array(data["timesteps"]) / 1000, data["values"]
            for row in v:
                axis.plot(x, row, color=color, alpha=0.25, lw=0.8)
            stats = [mean_ci(v[:, i][~np.isnan(v[:, i])]) for i in range(v.shape[1])]
            mean = np.array([s["mean"] if s["mean"] is not None else np.nan for s in stats])
            half = np.array([s["ci95"] or 0.0 for s in stats])
            axis.plot(x, mean, color=color, lw=2, label=f"{LABELS[variant]} ({v.shape[0]} seeds)")
            axis.fill_between(x, mean - half, mean + half, color=color, alpha=0.15)
        axis.set(xlabel="environment steps (thousands)", title=f"{task}: validation {key}")
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{task}: {timesteps:,} steps per run, mean and 95% interval over seeds", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="noisy,homing", help="comma-separated tasks (default noisy,homing)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--timesteps", type=int, default=200_000, help="environment steps per run (default 200000)")
    parser.add_argument("--eval-steps", type=int, default=25_000, help="steps between validation checks (default 25000)")
    parser.add_argument("--tem-checkpoint", default="", help="trained TEM parts for ppo_tem (default untrained)")
    parser.add_argument("--out", default="out/rl", help="output folder (default out/rl)")
    parser.add_argument("--plot-only", action="store_true", help="plot the runs there are; train nothing")
    args = parser.parse_args(argv)
    tasks, variants = args.tasks.split(","), args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: unknown {variant!r}; expected of {', '.join(VARIANTS)}")
    for task in tasks:
        if task not in FIGURES:
            parser.error(f"--tasks: unknown {task!r}; expected of {', '.join(FIGURES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated ints, got {args.seeds!r}")
    for name in ("timesteps", "eval_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"timesteps": args.timesteps, "seeds": seeds, "tasks": {}}
    for task in tasks:
        if not args.plot_only:  # seed by seed, so an interrupted sweep has every variant
            for seed in seeds:
                for variant in variants:
                    train(out / task / variant / f"seed{seed}", task, variant, seed, args)
        runs: dict[str, list[list[dict]]] = {}
        for variant in variants:
            for seed in seeds:
                run = out / task / variant / f"seed{seed}"
                lines = [line for line in read_lines(run) if line["timesteps"] <= args.timesteps]
                if lines:
                    runs.setdefault(variant, []).append(lines)
        plot(task, runs, out / f"curves_{task}.png", args.timesteps)
        table = {}
        for variant, seeded in runs.items():
            final = {key: mean_ci([lines[-1]["validation"][key] for lines in seeded
                                   if not np.isnan(lines[-1]["validation"][key])]) for key in FIGURES[task]}
            entry = {"final": final, "seeds": len(seeded)}
            if task != "homing":
                entry["steps_to_fruit"] = {str(t): [steps_to(lines, "fruit", t) for lines in seeded]
                                           for t in FRUIT_THRESHOLDS}
            table[variant] = entry
        report["tasks"][task] = table
    (out / "curves.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
