"""Train agents: the TEM agent's learned parts by self-supervision (--algo tem, the TEM VAE
objective, on one process or many), or a policy by reinforcement learning (--algo ppo, sac or
recurrent_ppo: stable-baselines3 / sb3-contrib, optionally reading the TEM memory's features).

Examples:
    python scripts/train.py --updates 300 --out out/train                 # TEM VAE: CPU, progress bar, TensorBoard
    python scripts/train.py --updates 600 --out out/train --resume        # continue the same run exactly
    torchrun --nproc_per_node=2 scripts/train.py --walks 16 --out out/ddp  # data-parallel (gloo on CPU)
    python scripts/train.py --algo ppo --task noisy --timesteps 1000000 --out out/ppo
    python scripts/train.py --algo ppo --tem-features --tem-checkpoint out/train/checkpoint.pt --out out/ppo_tem
    python scripts/train.py --algo recurrent_ppo --task homing --out out/lstm
    tensorboard --logdir out                                               # the curves

Reinforcement learning (treeworld.agents.rl): --envs worlds on the batched SB3 adapter with the
task's rules (health costs on), episodes of --max-episode-steps, layouts drawn from the training
split of world seeds (0 .. 8,999). With --tem-features a TEM agent (untrained, or the trained parts
of --tem-checkpoint) runs inside the env wrapper and its memory readouts join the observations.
Every --eval-steps environment steps the deterministic policy runs one episode on each of
--eval-envs validation worlds (seeds 9,000 and up): eval/ figures in TensorBoard and metrics.jsonl.
Writes in --out: policy.zip (+ policy.memory.pt with TEM features; every --checkpoint-steps and at
the end; --resume continues from them), metrics.jsonl, TensorBoard events, learning.png. Run the
policy with scripts/run.py --agent sb3:OUT/policy.zip, evaluate it with scripts/evaluate.py
--agents sb3:OUT/policy.zip.

Self-supervised training (--algo tem):
What it does (treeworld.agents.training): each update rolls the behaviour policy through --walks
worlds for --steps steps (layouts fixed per walk by a world seed drawn from the training split,
0 .. 8,999) and takes a gradient step on minus the mean ELBO per step plus the displacement-variance
loss; each collected batch serves --reuse updates. Every --eval-every updates it evaluates on
--eval-walks validation worlds (seeds 9,000 .. 9,999: neither trained on nor the evaluation seeds
from 10,000, which training never touches): ELBO terms, belief error, the share of sightings of a
remembered place whose recalled look is right, and the ROC AUC of E telling the same tree (another
fruit count) from different trees. Data, noise and updates are functions of (--seed, update), so --resume
continues with the same losses as an uninterrupted run, and N processes under torchrun (each a
1/N shard of the walks, gradients averaged by DistributedDataParallel) match one process.

Writes in --out: checkpoint.pt (every --checkpoint-every updates and at the end), metrics.jsonl
(one line per update), events for TensorBoard, training.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import treeworld  # noqa: E402,F401  (first: its OpenMP spin setting must precede torch and numba)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from treeworld.agents import evaluation, registry, rl  # noqa: E402
from treeworld.agents.training import CHECKPOINT_FORMAT, TEMModel, collect, read_checkpoint, separation_auc  # noqa: E402
from treeworld.config import WorldConfig, parse_overrides  # noqa: E402
from treeworld.envs import TASKS  # noqa: E402

ALGORITHMS = ("tem",) + rl.ALGORITHMS
SENSES = ("forage", "noisy")  # the tasks --algo tem trains on; RL takes every task
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Every field is a command-line option (``--name value``)."""

    algo: str = field(default="tem", metadata={"doc": f"training algorithm, one of {', '.join(ALGORITHMS)} "
                                                      "(tem: self-supervised TEM VAE; the others RL)"})
    task: str = field(default="noisy", metadata={"doc": f"task, one of {', '.join(TASKS)} (tem: forage or noisy, "
                                                        "with health costs off so walks last)"})
    world: str = field(default="", metadata={"doc": "comma-separated world overrides key=value, e.g. "
                                                     "motion_gain=1.25,motion_rotation=0.1"})
    behaviour: str = field(default="forager", metadata={"doc": "behaviour policy (an agent name: random, forager, "
                                                                "tem); random to calibrate a biased odometry (the "
                                                                "Forager's one-way cone sweep biases the rotation); "
                                                                "under torchrun each process runs tem's planner "
                                                                "noise for its own shard, so N processes match one "
                                                                "only with random and forager"})
    updates: int = field(default=300, metadata={"doc": "gradient updates in all (a resumed run continues to this)"})
    walks: int = field(default=16, metadata={"doc": "walks (worlds) per update, over all processes"})
    steps: int = field(default=100, metadata={"doc": "steps per walk"})
    reuse: int = field(default=2, metadata={"doc": "updates per collected batch of walks"})
    lr: float = field(default=3e-3, metadata={"doc": "Adam learning rate of E and the scales"})
    integrator_lr: float = field(default=1e-4, metadata={"doc": "Adam learning rate of the path integration"})
    lr_schedule: str = field(default="constant", metadata={
        "doc": f"learning rates over the updates, one of {', '.join(LR_SCHEDULES)} (cosine: both rates fall "
               "as (1 + cos(pi * update / updates)) / 2, so noisy estimates settle; a function of the update, "
               "so --resume continues it)"})
    consistency_weight: float = field(default=1.0, metadata={"doc": "weight of the displacement-variance loss"})
    alignment_weight: float = field(default=0.0, metadata={
        "doc": "weight of the privileged alignment loss (the integrator's readings against the true step; "
               "an auxiliary after spacelearn, off by default, logged on its own as train/alignment)"})
    fixed_step_scale: bool = field(default=False, metadata={
        "doc": "hold the prior's step noise at the world's motion noise instead of learning it (the ELBO does "
               "not calibrate it: learned, it grew to 0.85 against the world's 0.5 in a 500-update run)"})
    recall_scale: float = field(default=0.0, metadata={
        "doc": "hold the likelihood's recall kernel at this width (world units) instead of learning it (0: "
               "learned, from 5); a kernel wider than the belief's errors flattens the ELBO in the integrator's "
               "rotation (README, calibration)"})
    truncate_backprop: int = field(default=0, metadata={
        "doc": "cut the ELBO's gradient through the carried belief every this many steps (0: full backprop "
               "through each walk; 1: every step, which cannot calibrate a gain: see agents/training.py)"})
    metric_rank: int = field(default=32, metadata={"doc": "rank of the learned percept pseudometric E"})
    memory_size: int = field(default=128, metadata={"doc": "newest sightings the model's memory keeps per walk"})
    timesteps: int = field(default=1_000_000, metadata={"doc": "RL: environment steps in all (a resumed run "
                                                                "continues to this)"})
    envs: int = field(default=16, metadata={"doc": "RL: worlds stepped together"})
    max_episode_steps: int = field(default=1000, metadata={"doc": "RL: episode time limit"})
    tem_features: bool = field(default=False, metadata={"doc": "RL: add the TEM memory's features to the "
                                                                "observations"})
    tem_checkpoint: str = field(default="", metadata={"doc": "RL: the trained TEM parts for --tem-features "
                                                             "(a --algo tem checkpoint.pt; default untrained)"})
    eval_steps: int = field(default=100_000, metadata={"doc": "RL: environment steps between held-out evaluations"})
    eval_envs: int = field(default=8, metadata={"doc": "RL: validation worlds per evaluation (one episode each)"})
    checkpoint_steps: int = field(default=100_000, metadata={"doc": "RL: environment steps between checkpoints"})
    seed: int = field(default=0, metadata={"doc": "seed of data, noise and initialisation"})
    device: str = field(default="cpu", metadata={"doc": "torch device: cpu or cuda (NCCL under torchrun)"})
    eval_every: int = field(default=50, metadata={"doc": "updates between validation figures (0: never)"})
    eval_walks: int = field(default=8, metadata={"doc": "validation walks"})
    checkpoint_every: int = field(default=50, metadata={"doc": "updates between checkpoints"})
    out: str = field(default="out/train", metadata={"doc": "output folder"})
    resume: bool = field(default=False, metadata={"doc": "continue from --out/checkpoint.pt"})


def parse(argv: list[str] | None = None) -> TrainConfig:
    """The CLI, one option per ``TrainConfig`` field; argparse names an unknown option."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(name, action="store_true", help=f.metadata["doc"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(name, type=kind, default=f.default, help=f"{f.metadata['doc']} (default {f.default})")
    args = parser.parse_args(argv)
    config = TrainConfig(**vars(args))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    problems = []
    if config.algo not in ALGORITHMS:
        problems.append(f"--algo: unknown algorithm {config.algo!r}; expected one of {', '.join(ALGORITHMS)}")
    tasks = SENSES if config.algo == "tem" else tuple(TASKS)
    if config.task not in tasks:
        problems.append(f"--task: expected one of {', '.join(tasks)}{' for --algo tem' * (config.algo == 'tem')}, "
                        f"got {config.task!r}")
    if config.algo == "tem" and (config.tem_features or config.tem_checkpoint):
        problems.append("--tem-features, --tem-checkpoint: RL options; --algo tem trains the TEM parts themselves")
    if config.tem_checkpoint and not config.tem_features:
        problems.append("--tem-checkpoint: given without --tem-features")
    if config.seed < 0:
        problems.append(f"--seed: expected an int >= 0, got {config.seed}")
    for name in ("timesteps", "envs", "max_episode_steps", "eval_steps", "eval_envs", "checkpoint_steps"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(config, name)}")
    try:
        registry.parse(config.behaviour)
    except ValueError as e:
        problems.append(f"--behaviour: {e}")
    try:
        world = world_config(config)
    except (TypeError, ValueError) as e:
        problems.append(f"--world: {e}")
    else:
        if config.tem_features and config.task in tasks:
            from treeworld.agents.memory_features import MemoryReader
            try:
                MemoryReader.for_config(world, 1, config.tem_checkpoint or None)
            except ValueError as e:
                problems.append(f"--tem-checkpoint: {e}")
    for name in ("updates", "walks", "steps", "reuse", "metric_rank", "memory_size", "eval_walks", "checkpoint_every"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(config, name)}")
    if config.truncate_backprop < 0:
        problems.append(f"--truncate-backprop: expected an int >= 0, got {config.truncate_backprop}")
    for name in ("consistency_weight", "alignment_weight"):
        if not getattr(config, name) >= 0:
            problems.append(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(config, name)}")
    for name in ("lr", "integrator_lr"):
        if not getattr(config, name) > 0:
            problems.append(f"--{name.replace('_', '-')}: expected > 0, got {getattr(config, name)}")
    if not config.recall_scale >= 0:
        problems.append(f"--recall-scale: expected >= 0 (0: learned), got {config.recall_scale}")
    if config.lr_schedule not in LR_SCHEDULES:
        problems.append(f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)}, got {config.lr_schedule!r}")
    if config.walks % world_size:
        problems.append(f"--walks: expected a multiple of the {world_size} processes (--nproc_per_node), each "
                        f"takes an equal shard, got {config.walks}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device: {config.device!r} asked but CUDA is not available here")
    if problems:
        parser.error("; ".join(problems))
    return config


def learning_rate_factor(config: TrainConfig, update: int) -> float:
    """The factor on both learning rates at ``update`` (0-based) under ``--lr-schedule``."""
    if config.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * update / config.updates))
    return 1.0


def world_config(config: TrainConfig) -> WorldConfig:
    """The task's world with ``--world`` overrides; for --algo tem with health costs off (walks last)."""
    overrides = parse_overrides([pair for pair in config.world.split(",") if pair.strip()])
    if config.algo == "tem":
        overrides.update(living_cost=0.0, move_cost=0.0)
    return WorldConfig(**{**TASKS.get(config.task, {}), **overrides})


def batch_seeds(config: TrainConfig, batch: int, validation: bool = False) -> tuple[list[int], int]:
    """World seeds (one per walk) and the first episode seed of collected batch ``batch``."""
    if validation:
        rng = np.random.default_rng([config.seed, 1])
        return rng.integers(evaluation.VALIDATION_SEED, evaluation.EVAL_SEED, config.eval_walks).tolist(), 10 ** 6
    rng = np.random.default_rng([config.seed, 0, batch])
    return rng.integers(0, evaluation.VALIDATION_SEED, config.walks).tolist(), (config.seed * 7919 + batch * config.walks) % 2 ** 31


def rollouts(config: TrainConfig, world_seeds: list[int], seed: int, rows: slice):
    """The walks ``rows`` of a batch (this process's shard)."""
    import gymnasium as gym

    world = world_config(config)
    chosen = world_seeds[rows]
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=len(chosen), vectorization_mode="vector_entry_point",
                        config=world, max_episode_steps=None)
    try:
        agent = registry.make_batch_agent(config.behaviour, world, len(chosen), envs.single_action_space)
        return collect(envs, agent, config.steps, seed + rows.start, chosen)
    finally:
        envs.close()


def validation_walks(config: TrainConfig):
    """The validation walks (the same for every check of a run)."""
    world_seeds, seed = batch_seeds(config, 0, validation=True)
    return rollouts(config, world_seeds, seed, slice(0, len(world_seeds)))


def validate(model: TEMModel, config: TrainConfig, walks) -> dict[str, float]:
    """ELBO terms, final belief error and revisit recall accuracy on the validation ``walks``."""
    noise = model.noise(walks, torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        terms = model.elbo(walks.to(config.device), noise)
    counted = terms["counted"].cpu()
    world = world_config(config)
    truth = evaluation.percept_identity(world, walks.sight[counted].numpy())
    guess = evaluation.percept_identity(world, terms["recalled"].cpu()[counted].numpy())
    return {"elbo": terms["elbo"].mean().item(), "kl": terms["kl"].mean().item(),
            "log_likelihood": (terms["log_likelihood"].sum() / counted.sum().clamp_min(1)).item(),
            "belief_error": terms["belief_error"][-1].median().item(),
            "recall_accuracy": float((truth == guess).mean()) if len(truth) else float("nan"),
            "separation_auc": separation_auc(model.percept_metric, world, generator=torch.Generator().manual_seed(0))}


def save(path: pathlib.Path, model: TEMModel, optimizer, config: TrainConfig, update: int) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "model_config": model.config,
                "update": update, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, temporary)
    temporary.replace(path)


#: The settings that decide a --algo tem run's data and optimisation: a resumed run must keep them
#: (--updates may grow; evaluation, checkpoint cadence and the device may change).
RESUMED_SETTINGS = ("task", "world", "behaviour", "walks", "steps", "reuse", "lr", "integrator_lr", "lr_schedule",
                    "consistency_weight", "alignment_weight", "fixed_step_scale", "recall_scale",
                    "truncate_backprop", "seed")


def load(path: pathlib.Path, model: TEMModel, optimizer, config: TrainConfig) -> int:
    """Restore model and optimizer from ``path``; the update it was saved at. ValueError naming
    ``--resume`` for a missing, corrupted or foreign file, one of another model shape or one
    trained with other ``RESUMED_SETTINGS``."""
    state = read_checkpoint(path, "--resume")
    if state["model_config"] != model.config:
        raise ValueError(f"--resume: {str(path)!r} holds a model of {state['model_config']}, this run builds "
                         f"{model.config}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # of settings older files lack
    saved = {name: state.get("config", {}).get(name, defaults[name]) for name in RESUMED_SETTINGS}
    changed = [f"--{name.replace('_', '-')} {saved[name]!r} (now {getattr(config, name)!r})"
               for name in RESUMED_SETTINGS if saved[name] != getattr(config, name)]
    if changed:
        raise ValueError(f"--resume: {str(path)!r} was trained with {', '.join(changed)}; resume with the "
                         "same settings")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(f"--resume: {str(path)!r} does not fit this model ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]})") from None
    return int(state["update"])


def plot(lines: list[dict], path: pathlib.Path, world: WorldConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 5, figsize=(19, 3.5))
    trained = [line for line in lines if "train" in line]
    checked = [line for line in lines if "validation" in line]
    width = max(1, min(10, len(trained) // 5))  # running mean over this many updates
    for axis, (key, label) in zip(axes, (("elbo", "ELBO per step"), ("kl", "KL per step"),
                                         ("belief_error", "final belief error (median)"),
                                         ("separation_auc", "E: same vs different tree (AUC)"))):
        if key in trained[0]["train"] if trained else False:
            values = np.convolve([line["train"][key] for line in trained], np.ones(width) / width, mode="valid")
            axis.plot([line["update"] for line in trained][width - 1:], values,
                      label=f"training batches ({width}-update mean)")
        if checked:
            axis.plot([line["update"] for line in checked], [line["validation"][key] for line in checked],
                      "o-", label="validation worlds")
        axis.set(xlabel="update", title=label)
    read = [line for line in trained if "path_integration" in line]
    axis = axes[-1]
    for key, target, colour in (("gain", 1 / world.motion_gain, "C0"), ("rotation", -world.motion_rotation, "C1")):
        axis.plot([line["update"] for line in read], [line["path_integration"][key] for line in read], colour,
                  label=key)
        axis.axhline(target, color=colour, linestyle="--", linewidth=0.8,
                     label="inverse odometry" if key == "rotation" else None)
    axis.set(xlabel="update", title="path integration")
    axis.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class PolicyCheckpoint(BaseCallback):
    """Every ``every`` environment steps, :func:`save_policy` to ``out``."""

    def __init__(self, out: pathlib.Path, reader, every: int) -> None:
        super().__init__()
        self.out, self.reader, self.every = out, reader, every
        self.next = every

    def _init_callback(self) -> None:
        self.next = (self.model.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            self.next += self.every
            save_policy(self.out, self.model, self.reader)
        return True


def save_policy(out: pathlib.Path, model, reader) -> None:
    """policy.zip (+ policy.memory.pt, + SAC's replay_buffer.pkl), each written then renamed."""
    from treeworld.agents.sb3_agent import reader_path

    temporary = out / "policy.tmp.zip"
    model.save(temporary)
    temporary.replace(out / "policy.zip")
    if reader is not None:
        reader.save(out / "reader.tmp")
        (out / "reader.tmp").replace(reader_path(out / "policy.zip"))
    if hasattr(model, "replay_buffer"):
        model.save_replay_buffer(out / "replay_buffer.tmp.pkl")
        (out / "replay_buffer.tmp.pkl").replace(out / "replay_buffer.pkl")


def plot_rl(lines: list[dict], path: pathlib.Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("return", "fruit", "survived") + (("spl",) if task == "homing" else ())
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))
    for axis, key in zip(axes, keys):
        for group, style in (("train", "-"), ("validation", "o-")):
            points = [(line["timesteps"], line[group][key]) for line in lines if group in line]
            if points:
                axis.plot(*zip(*points), style, label=f"{group} episodes")
        axis.set(xlabel="environment steps", title=key)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train_rl(config: TrainConfig) -> dict:
    """RL with stable-baselines3 (see the module docstring)."""
    from treeworld.agents.memory_features import MemoryReader
    from treeworld.agents.sb3_agent import load_policy, reader_path

    torch.set_num_threads(1)
    world = world_config(config)
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    reader = validation_reader = None
    if config.tem_features:
        reader = MemoryReader.for_config(world, config.envs, config.tem_checkpoint or None)
        validation_reader = MemoryReader.for_config(world, config.eval_envs, config.tem_checkpoint or None)
    env = rl.make_env(world, config.envs, config.seed, reader=reader, max_episode_steps=config.max_episode_steps)
    validation_env = rl.make_env(world, config.eval_envs, 0, validation=True, reader=validation_reader,
                                 max_episode_steps=config.max_episode_steps)
    metrics_path = out / "metrics.jsonl"
    lines: list[dict] = []
    if config.resume:
        try:
            policy = load_policy(out / "policy.zip", env.unwrapped.observation_space, env.action_space, config.envs)
            if (policy.reader is None) != (reader is None):
                raise ValueError(f"{out / 'policy.zip'} was trained {'with' if policy.reader else 'without'} "
                                 f"--tem-features; resume it {'with' if policy.reader else 'without'} them")
        except ValueError as e:
            print(f"train.py: error: --resume: {e}", file=sys.stderr)
            raise SystemExit(2)
        model = type(policy.model).load(out / "policy.zip", env=env, device="cpu", tensorboard_log=str(out))
        if reader is not None:
            reader.learn_from(policy.reader)
        if (out / "replay_buffer.pkl").exists() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(out / "replay_buffer.pkl")
        if metrics_path.exists():
            lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
            lines = [line for line in lines if line["timesteps"] <= model.num_timesteps]
    else:
        model = rl.make_model(config.algo, env, config.seed, tensorboard_log=str(out))
    metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = rl.EpisodeStats()
    seen = [0]  # training episodes already summarised

    def sink(timesteps: int, validation: dict) -> None:
        episodes = [figures for _, figures in stats.history[seen[0]:]]
        seen[0] = len(stats.history)
        line = {"timesteps": timesteps, "validation": validation}
        if episodes:
            line["train"] = rl.summary({key: [e[key] for e in episodes] for key in rl.EPISODE_FIGURES})
            line["train"]["episodes"] = len(episodes)
        lines.append(line)
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps(line) + "\n")

    prepare = (lambda: validation_reader.learn_from(reader)) if reader is not None else None
    callbacks = [stats, rl.HeldOutEvaluation(validation_env, config.eval_steps, sink, prepare=prepare),
                 PolicyCheckpoint(out, reader, config.checkpoint_steps)]
    remaining = config.timesteps - model.num_timesteps
    started = time.perf_counter()
    if remaining > 0:
        model.learn(remaining, callback=callbacks, progress_bar=True, reset_num_timesteps=not config.resume,
                    tb_log_name=config.algo)
    seconds = time.perf_counter() - started
    save_policy(out, model, reader)
    if lines:
        plot_rl(lines, out / "learning.png", config.task)
    result = {"timesteps": int(model.num_timesteps), "seconds": seconds,
              "steps_per_second": remaining / seconds if remaining > 0 else None,
              "final": lines[-1] if lines else None, "policy": str(out / "policy.zip"),
              "reader": str(reader_path(out / "policy.zip")) if reader is not None else None}
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict:
    config = parse(argv)
    if config.algo != "tem":
        return train_rl(config)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if config.device == "cuda" and distributed
                          else config.device)
    torch.set_num_threads(1)
    world = world_config(config)
    model = TEMModel(world.percept_dim, config.metric_rank, world.motion_noise, world.sight_cos, config.memory_size,
                     generator=torch.Generator().manual_seed(config.seed)).to(device)
    model.log_step_scale.requires_grad_(not config.fixed_step_scale)
    if config.recall_scale:
        with torch.no_grad():
            model.log_recall_scale.fill_(math.log(config.recall_scale))
        model.log_recall_scale.requires_grad_(False)
    integrator = list(model.integrator.parameters())
    others = [p for p in model.parameters() if all(p is not q for q in integrator)]
    optimizer = torch.optim.Adam([{"params": others, "lr": config.lr},
                                  {"params": integrator, "lr": config.integrator_lr}])
    out = pathlib.Path(config.out)
    checkpoint = out / "checkpoint.pt"
    start = 0
    if config.resume:
        try:
            start = load(checkpoint, model, optimizer, config)
        except ValueError as e:
            print(f"train.py: error: {e}", file=sys.stderr)
            raise SystemExit(2)
    # every parameter is used on every step but a walk without a revisit leaves the closure scales idle
    trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if distributed else model
    shard = config.walks // world_size
    rows = slice(rank * shard, (rank + 1) * shard)
    writer = progress = None
    lines: list[dict] = []
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        out.mkdir(parents=True, exist_ok=True)
        metrics_path = out / "metrics.jsonl"
        if config.resume and metrics_path.exists():
            lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
            lines = [line for line in lines if line["update"] <= start]
        metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        writer = SummaryWriter(str(out))
        progress = tqdm(total=config.updates, initial=start, desc="train", unit="update", file=sys.stderr)
    started, walks = time.perf_counter(), None
    held_out = validation_walks(config) if rank == 0 and config.eval_every else None
    if rank == 0 and config.eval_every and start == 0:  # the untrained parts, for comparison
        lines.append({"update": 0, "validation": validate(model, config, held_out)})
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(lines[-1]) + "\n")
    for update in range(start, config.updates):
        batch = update // config.reuse
        if walks is None or update % config.reuse == 0 or update == start:
            world_seeds, seed = batch_seeds(config, batch)
            walks = rollouts(config, world_seeds, seed, rows).to(device)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + update)
        noise = torch.randn((config.steps, config.walks, 2), generator=generator, dtype=model.metric.alphas.dtype)
        loss, stats = trained(walks, noise[:, rows].to(device), config.consistency_weight, config.alignment_weight,
                              config.truncate_backprop)
        optimizer.zero_grad()
        loss.backward()
        for group, base in zip(optimizer.param_groups, (config.lr, config.integrator_lr)):
            group["lr"] = base * learning_rate_factor(config, update)
        optimizer.step()
        if distributed:  # the ranks' figures averaged (per-shard ratios and medians: near, not equal, the batch's)
            values = torch.tensor(list(stats.values()), dtype=torch.float64)
            dist.all_reduce(values)
            stats = dict(zip(stats, (values / world_size).tolist()))
        if rank == 0:
            line = {"update": update + 1, "train": stats, "scales": model.scales(),
                    "path_integration": model.integrator.odometry_map(), "seconds": time.perf_counter() - started}
            if config.eval_every and ((update + 1) % config.eval_every == 0 or update + 1 == config.updates):
                line["validation"] = validate(model, config, held_out)
            lines.append(line)
            with open(out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(line) + "\n")
            for group in ("train", "scales", "path_integration", "validation"):
                for key, value in line.get(group, {}).items():
                    writer.add_scalar(f"{group}/{key}", value, update + 1)
            progress.set_postfix(elbo=f"{stats['elbo']:.2f}", belief=f"{stats['belief_error']:.1f}")
            progress.update(1)
            if (update + 1) % config.checkpoint_every == 0 or update + 1 == config.updates:
                save(checkpoint, model, optimizer, config, update + 1)
    result = {"updates": config.updates, "seconds": time.perf_counter() - started}
    if rank == 0:
        progress.close()
        writer.close()
        if lines:
            plot(lines, out / "training.png", world)
        done = config.updates - start
        result["updates_per_second"] = done / result["seconds"] if done else None
        print(json.dumps({"final": lines[-1] if lines else None, **result}))
    if distributed:
        dist.barrier()  # every process ends together (a peer that leaves early resets gloo's sockets)
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
