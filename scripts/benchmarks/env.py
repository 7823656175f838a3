"""Environment throughput: TreeWorld single env and vector env against Gymnasium's CartPole-v1.

Figures are steps per second (single env, one thread) and agent-steps per second (vector env:
num_envs x steps / s, all CPU cores), with random actions drawn before timing; each is the median
of ``repeats`` runs. The vector env runs on each backend: numba (the default on CPU: compiled
kernels), numpy (the array-API reference) and torch. CartPole-v1 and its native
CartPoleVectorEnv are measured in the same run as the baseline.
"""
from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import torch

import treeworld.envs  # noqa: F401  (registers the ids)
from treeworld.backend import BACKENDS
from benchmarks.timing import median_seconds

TREEWORLD = "treeworld/TreeWorld-v0"
CPU_COUNTS = (1, 64, 1024, 4096)
CUDA_COUNTS = (4096, 65536, 262144, 1048576)


def single_env_rate(env_id: str, steps: int, repeats: int) -> float:
    """Steps/s of ``gym.make(env_id)`` (default wrappers), resetting when an episode ends."""
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]

    def run():
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    return steps / median_seconds(run, repeats)


def vector_env_rate(env_id: str, num_envs: int, steps: int, repeats: int, **kwargs) -> float:
    """Agent-steps/s of ``gym.make_vec(env_id, num_envs, "vector_entry_point", **kwargs)``."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    env.reset(seed=0)
    device = kwargs.get("device", "cpu")
    rng = np.random.default_rng(0)
    if env_id == TREEWORLD:
        actions = rng.uniform(-1, 1, (steps, num_envs, 3)).astype(np.float32)
        if kwargs.get("backend") == "torch" or device != "cpu":
            actions = torch.from_numpy(actions).to(device)
    else:
        actions = rng.integers(0, 2, (steps, num_envs))

    def run():
        for action in actions:
            env.step(action)

    return num_envs * steps / median_seconds(run, repeats, device=device)


def _steps_for(num_envs: int, quick: bool) -> int:
    if quick:
        return 5
    return max(10, min(2000, 200_000 // num_envs))


def run(repeats: int, device: str, quick: bool) -> dict:
    single_steps = 200 if quick else 5000
    counts = (1, 64) if quick else CPU_COUNTS
    report = {"units": "single: steps/s; vector: agent-steps/s (num_envs x steps / s)", "single": {}, "vector_cpu": {}}
    ours = single_env_rate(TREEWORLD, single_steps, repeats)
    cartpole = single_env_rate("CartPole-v1", single_steps, repeats)
    report["single"] = {"treeworld": ours, "cartpole": cartpole, "ratio_to_cartpole": ours / cartpole}
    torch.set_num_threads(os.cpu_count() or 1)
    report["vector_cpu_threads"] = torch.get_num_threads()
    for n in counts:
        steps = _steps_for(n, quick)
        row = {f"treeworld_{backend}": vector_env_rate(TREEWORLD, n, steps, repeats, backend=backend)
               for backend in BACKENDS}
        row["cartpole"] = vector_env_rate("CartPole-v1", n, steps, repeats)
        row["default_ratio_to_cartpole"] = row["treeworld_numba"] / row["cartpole"]
        report["vector_cpu"][str(n)] = row
    if device.startswith("cuda") and torch.cuda.is_available():
        report["vector_cuda"] = {str(n): {"treeworld_torch": vector_env_rate(TREEWORLD, n, 50, repeats, device=device)}
                                 for n in ((4096,) if quick else CUDA_COUNTS)}
    torch.set_num_threads(1)
    return report
