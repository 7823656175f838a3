"""Self-supervised training throughput: TEM VAE updates per second on this machine.

One update is what ``scripts/train.py`` does per step on a collected batch: the ELBO over ``walks``
walks of ``steps`` steps, backward, an Adam step. Its baseline, measured in the same run, is
collecting those walks (the noisy task's vector env driven by the Forager, health costs off): the
ratio says how the model's cost compares with the world's and the behaviour policy's.
"""
from __future__ import annotations

import gymnasium as gym
import torch

import treeworld.envs  # noqa: F401  (registers the ids)
from treeworld.agents import registry
from treeworld.agents.training import TEMModel, collect
from treeworld.config import WorldConfig
from treeworld.envs import TASKS
from benchmarks.timing import median_seconds

SIZES = (16, 100)  # walks, steps: scripts/train.py's defaults
QUICK_SIZES = (2, 10)


def run(repeats: int, device: str, quick: bool) -> dict:
    walks, steps = QUICK_SIZES if quick else SIZES
    config = WorldConfig(**{**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0})
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=walks, vectorization_mode="vector_entry_point",
                        config=config, max_episode_steps=None)
    agent = registry.make_batch_agent("forager", config, walks, envs.single_action_space)
    batch = {}

    def gather():
        batch["walks"] = collect(envs, agent, steps, seed=0, world_seeds=list(range(walks)))

    collect_seconds = median_seconds(gather, repeats)
    model = TEMModel(config.percept_dim, generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    sequences = batch["walks"].to(device)
    noise = model.noise(sequences, torch.Generator().manual_seed(0))

    def update():
        loss, _ = model.loss(sequences, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    update_seconds = median_seconds(update, repeats, device=device)
    envs.close()
    return {"units": "updates/s; walk-steps/s = walks x steps / s", "device": device, "walks": walks, "steps": steps,
            "updates_per_second": 1.0 / update_seconds,
            "update_walk_steps_per_second": walks * steps / update_seconds,
            "collect_walk_steps_per_second": walks * steps / collect_seconds,
            "ratio_update_to_collect_time": update_seconds / collect_seconds}
