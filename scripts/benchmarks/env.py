"""Environment throughput: TreeWorld single env and vector env against Gymnasium's CartPole-v1.

Figures are steps per second (single env, one thread) and agent-steps per second (vector env:
num_envs x steps / s, all CPU cores), with random actions drawn before timing; each is the median
of ``repeats`` runs. The vector env runs on each backend: numba (the default on CPU: compiled
kernels), numpy (the array-API reference) and torch. CartPole-v1 and its native
CartPoleVectorEnv are measured in the same run as the baseline.

``tasks``: the default, noisy and homing ids, single env and 4,096 envs, on a quiet machine and
contended by one busy process this suite starts itself (as when another job shares the cores).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import torch

import treeworld.envs  # noqa: F401  (registers the ids)
from treeworld.backend import BACKENDS
from benchmarks.timing import median_seconds

TREEWORLD = "treeworld/TreeWorld-v0"
TASK_IDS = {"forage": TREEWORLD, "noisy": "treeworld/TreeWorldNoisy-v0", "homing": "treeworld/TreeWorldHoming-v0"}
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
    if env_id.startswith("treeworld/"):
        actions = rng.uniform(-1, 1, (steps, num_envs, 3)).astype(np.float32)
        if kwargs.get("backend") == "torch" or device != "cpu":
            actions = torch.from_numpy(actions).to(device)
    else:
        actions = rng.integers(0, 2, (steps, num_envs))

    def run():
        for action in actions:
            env.step(action)

    return num_envs * steps / median_seconds(run, repeats, device=device)


@contextlib.contextmanager
def busy_process():
    """One other process spinning on a core for the duration of the block."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def task_rates(repeats: int, quick: bool) -> dict:
    """Single-env steps/s and vector agent-steps/s (4,096 envs; 64 when quick) of each task id."""
    n = 64 if quick else 4096
    return {task: {"single": single_env_rate(env_id, 200 if quick else 3000, repeats),
                   f"vector_{n}": vector_env_rate(env_id, n, _steps_for(n, quick), repeats)}
            for task, env_id in TASK_IDS.items()}


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
    report["tasks"] = {"quiet": task_rates(repeats, quick)}
    n = 64 if quick else 256  # the parallel kernels' smallest batch, where spinning threads hurt most
    report["tasks"]["quiet"]["forage"][f"vector_{n}"] = vector_env_rate(TREEWORLD, n, _steps_for(n, quick), repeats)
    with busy_process():
        report["tasks"]["contended"] = task_rates(repeats, quick)
        report["tasks"]["contended"]["forage"][f"vector_{n}"] = vector_env_rate(TREEWORLD, n, _steps_for(n, quick),
                                                                               repeats)
    if device.startswith("cuda") and torch.cuda.is_available():
        report["vector_cuda"] = {str(n): {"treeworld_torch": vector_env_rate(TREEWORLD, n, 50, repeats, device=device)}
                                 for n in ((4096,) if quick else CUDA_COUNTS)}
    torch.set_num_threads(1)
    return report
