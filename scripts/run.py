"""Run tree-world episodes with an agent; optionally watch, record a GIF/MP4 (or a PNG frame) and save metrics.

Examples:
    python scripts/run.py --agent forager --episodes 3 --seed 1
    python scripts/run.py --agent forager --episodes 1 --max-steps 800 --record out/demo.gif
    python scripts/run.py --agent random --render human --set num_trees=40 --set name_pool=64
    python scripts/run.py --agent forager --world-seed 7 --episodes 5 --json out/metrics.json
    python scripts/run.py --agent forager --task noisy --episodes 4
    python scripts/run.py --agent tem --task noisy --max-steps 500 --record out/tem.gif   # draws its beliefs
    python scripts/run.py --agent tem --max-steps 1200 --record out/tem.png    # just the last frame
    python scripts/run.py --agent tem:out/tem.pt                  # a saved TEMAgent (TEMAgent.save)

Episode i is seeded with --seed + i (the env and the agent); --world-seed keeps one tree layout
across episodes. At the end a per-episode metrics table and its mean row are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the agents' per-step products are tiny: a second thread only spins

import numpy as np  # noqa: E402

from treeworld.agents import registry  # noqa: E402
from treeworld.config import WorldConfig, parse_overrides  # noqa: E402
from treeworld.envs import TASKS  # noqa: E402
from treeworld.overlay import translated  # noqa: E402

RENDER_MODES = ("human", "rgb_array", "none")
MAX_RECORDED_FRAMES = 300  # the default --frame-every keeps recordings about this long
COLUMNS = (  # (metrics key, table header, row format, mean format)
    ("episode", "episode", "{}", None),
    ("steps", "steps", "{}", "{:.1f}"),
    ("return", "return", "{:.1f}", "{:.2f}"),
    ("fruit_eaten", "fruit", "{}", "{:.1f}"),
    ("poison_eaten", "poison", "{}", "{:.1f}"),
    ("distance_travelled", "distance", "{:.1f}", "{:.1f}"),
    ("final_health", "health", "{:.1f}", "{:.1f}"),
    ("terminated", "terminated", "{}", "{:.2f}"),
    ("truncated", "truncated", "{}", "{:.2f}"),
)
METRICS = tuple(key for key, _, _, mean in COLUMNS if mean is not None)


def run_episode(env: Any, agent: Any, seed: int, world_seed: int | None, frames: list | None, frame_every: int,
                progress: Any = None) -> dict[str, Any]:
    """One episode of ``agent`` in ``env``; appends every ``frame_every``-th frame (and the last) to
    ``frames`` unless it is None. The agent's ``overlays``, if any, are drawn. Returns the metrics."""
    agent.reset(seed=seed)
    observation, info = env.reset(seed=seed, options=None if world_seed is None else {"world_seed": world_seed})
    start = np.array(info["position"], dtype=np.float64)  # the agent's frame's origin in the world
    steps, total, terminated, truncated = 0, 0.0, False, False
    while not (terminated or truncated):
        action = agent.act(observation)
        # what it believes of this observation, copied before step() (which draws the window in "human")
        _copy_overlays(env, agent, start)
        if frames is not None and steps % frame_every == 0:
            frames.append(env.render())
        observation, reward, terminated, truncated, info = env.step(action)
        steps += 1
        total += reward
        if progress is not None:
            progress.update(1)
    if frames is not None:
        frames.append(env.render())
    return {
        "steps": steps,
        "return": total,
        "fruit_eaten": int(info["fruit_eaten"]),
        "poison_eaten": int(info["poison_eaten"]),
        "distance_travelled": float(info["distance_travelled"]),
        "final_health": float(info["health"]),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
    }


def _copy_overlays(env: Any, agent: Any, start: np.ndarray) -> None:
    """The agent's overlays (in its own frame, origin at its start) onto the world's."""
    if env.render_mode is None:  # nothing draws them (and an agent may build them at a cost)
        return
    overlays = getattr(agent, "overlays", None)
    if overlays is not None:
        env.unwrapped.overlays = translated(list(overlays), start)


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each metric over episodes (booleans give the fraction of episodes)."""
    return {key: sum(float(row[key]) for row in rows) / len(rows) for key in METRICS}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The metrics of each episode and their mean as an aligned text table."""
    mean = mean_metrics(rows)
    lines = [[header for _, header, _, _ in COLUMNS]]
    lines += [[fmt.format(row[key]) for key, _, fmt, _ in COLUMNS] for row in rows]
    lines.append(["mean"] + [fmt.format(mean[key]) for key, _, _, fmt in COLUMNS[1:]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)


def build_parser() -> argparse.ArgumentParser:
    defaults, docs = dataclasses.asdict(WorldConfig()), WorldConfig.field_docs()
    config_help = "\n".join(f"  {name} (default {defaults[name]!r}): {doc}" for name, doc in docs.items())
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=f"config keys for --set (value none for an optional field):\n{config_help}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default="forager", metavar="AGENT",
                        help=f"one of {', '.join(registry.kinds())}. random: correlated random walk; forager: "
                             "maps trees by smell, eats edible fruit; tem: the TEM agent, its beliefs drawn; "
                             "tem:PATH a saved one (TEMAgent.save) (default: forager)")
    parser.add_argument("--task", choices=tuple(TASKS), default="forage",
                        help="forage: the default world; noisy: motion and percept noise; homing: reach goal trees "
                             "seen before (default: forage)")
    parser.add_argument("--episodes", type=int, default=1, help="number of episodes (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed S + i for env and agent (default: 0)")
    parser.add_argument("--world-seed", type=int, default=None,
                        help="fixed tree layout across episodes (default: a new layout per episode seed)")
    parser.add_argument("--max-steps", type=int, default=2000, help="truncate episodes after this many steps (default: 2000)")
    parser.add_argument("--render", choices=RENDER_MODES, default=None,
                        help="human: a pygame window; rgb_array: offscreen frames (what --record stores, implied by it); "
                             "none: no drawing (default: none, or rgb_array with --record)")
    parser.add_argument("--record", type=pathlib.Path, default=None, metavar="OUT.gif|OUT.mp4|OUT.png",
                        help="write all episodes' frames as an animated GIF or an MP4 video, or the last frame "
                             "as a PNG")
    parser.add_argument("--fps", type=int, default=30, help="frames per second of the recording (default: 30)")
    parser.add_argument("--frame-every", type=int, default=None, metavar="K",
                        help=f"record every K-th step (default: the smallest K giving at most "
                             f"{MAX_RECORDED_FRAMES} frames over --episodes x --max-steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a WorldConfig field, e.g. --set num_trees=40 (repeatable; keys below)")
    parser.add_argument("--json", type=pathlib.Path, default=None, metavar="PATH",
                        help="also write the per-episode metrics and their mean as JSON")
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("episodes", "max_steps", "fps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.frame_every is not None and args.frame_every < 1:
        parser.error(f"--frame-every: expected an int >= 1, got {args.frame_every}")
    if args.world_seed is not None and args.world_seed < 0:
        parser.error(f"--world-seed: expected a non-negative int, got {args.world_seed}")
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative int, got {args.seed}")
    try:
        registry.parse(args.agent)
    except (TypeError, ValueError) as e:
        parser.error(f"--{e}")
    render = args.render or ("rgb_array" if args.record is not None else "none")
    if args.record is not None:
        if render != "rgb_array":
            parser.error(f"--record needs rgb_array frames, got --render {render}")
        if args.record.suffix.lower() not in (".gif", ".mp4", ".png"):
            parser.error(f"--record: expected a path ending in .gif, .mp4 or .png, got {str(args.record)!r}")
    try:
        config = WorldConfig().replace(**{**TASKS[args.task], **parse_overrides(args.overrides)})
    except (TypeError, ValueError) as e:
        parser.error(f"--set: {e}")
    if render != "human":
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # offscreen pygame, before it is imported

    import gymnasium as gym
    from tqdm import tqdm

    import treeworld.envs  # noqa: F401  (registers the environment ids)

    env = gym.make("treeworld/TreeWorld-v0", config=config, max_episode_steps=args.max_steps,
                   render_mode=None if render == "none" else render)
    frames = [] if args.record is not None else None
    frame_every = args.frame_every or max(1, math.ceil(args.episodes * args.max_steps / MAX_RECORDED_FRAMES))
    rows = []
    try:
        try:
            agent = registry.make_agent(args.agent, config, env.action_space, args.seed)
        except (TypeError, ValueError) as e:
            parser.error(f"--{e}" if str(e).startswith("agent:") else f"--agent: {e}")
        for episode in range(args.episodes):
            seed = args.seed + episode
            with tqdm(total=args.max_steps, desc=f"episode {episode}", unit="step", file=sys.stderr) as progress:
                rows.append({"episode": episode, "seed": seed,
                             **run_episode(env, agent, seed, args.world_seed, frames, frame_every, progress)})
    finally:
        env.close()

    print(format_table(rows))
    if args.record is not None and args.record.suffix.lower() == ".png":
        import imageio.v3 as iio

        args.record.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.record, frames[-1])
        print(f"wrote the last frame to {args.record}")
    elif args.record is not None:
        from treeworld.envs.video import encode_video

        data = encode_video(frames, args.fps, args.record.suffix.lower().lstrip("."))
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_bytes(data)
        print(f"recorded {len(frames)} frames (every {frame_every} steps) to {args.record} ({len(data) / 1e6:.1f} MB)")
    if args.json is not None:
        report = {"agent": args.agent,
                  "task": args.task, "world_seed": args.world_seed, "config": dataclasses.asdict(config),
                  "episodes": rows, "mean": mean_metrics(rows)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
