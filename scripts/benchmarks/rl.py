"""End-to-end RL throughput: SB3 PPO environment steps per second, collection and training together.

Three runs with the same PPO hyperparameters (``treeworld.agents.rl.HYPERPARAMETERS["ppo"]``) and
env count: Gymnasium's CartPole-v1 (SB3's DummyVecEnv, MlpPolicy), the baseline; the noisy tree
world on the batched SB3 adapter (the tree world's features extractor); and the same with the TEM
memory's features (a TEM agent's inference for every env on every step). Each timed run is one
``learn`` of one rollout (n_steps x envs steps) and its n_epochs of updates.
"""
from __future__ import annotations

import torch

from treeworld.agents import rl
from treeworld.agents.memory_features import MemoryReader
from treeworld.config import WorldConfig
from treeworld.envs import TASKS
from benchmarks.timing import median_seconds

ENVS = 16
QUICK = dict(envs=2, n_steps=16, batch_size=32, n_epochs=1)


def run(repeats: int, device: str, quick: bool) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    envs = QUICK["envs"] if quick else ENVS
    hyper = {**rl.HYPERPARAMETERS["ppo"], **({k: v for k, v in QUICK.items() if k != "envs"} if quick else {})}
    steps = hyper["n_steps"] * envs
    config = WorldConfig(**TASKS["noisy"])
    models = {
        "cartpole": PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=envs, seed=0), seed=0, device="cpu", **hyper),
        "treeworld_raw": rl.make_model("ppo", rl.make_env(config, envs, 0), 0, **hyper),
        "treeworld_tem_features": rl.make_model("ppo", rl.make_env(config, envs, 0, reader=MemoryReader.for_config(
            config, envs)), 0, **hyper),
    }
    rates = {}
    for name, model in models.items():
        model.learn(steps)  # set-up and first reset outside the timing
        rates[name] = steps / median_seconds(lambda: model.learn(steps, reset_num_timesteps=False), repeats, warmup=0)
    return {"units": "environment steps/s, end to end (rollout + PPO updates)", "envs": envs, "steps_per_run": steps,
            "ppo": {k: v for k, v in hyper.items()},
            "steps_per_second": rates,
            "ratio_raw_to_cartpole": rates["treeworld_raw"] / rates["cartpole"],
            "ratio_tem_features_to_cartpole": rates["treeworld_tem_features"] / rates["cartpole"]}
