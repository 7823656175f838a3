"""TEM agent throughput: agent-steps/s of the noisy task's vector env driven by a TEMAgent.

Per step the agent acts on the batch, then the env steps. The env alone (random actions drawn
before timing) is measured at the same batch sizes in the same run, and the ratio env+agent / env
tells the agent's share. The agent is the default one, a valence readout per row (independent
agents), and, in the same run, one with a single readout shared by the batch
(``valence_sharing="batch"``, as the RL memory features use). Each figure: a warm-up block long
enough for the agents to be well into their episodes (at the start memory is empty and nothing has
been eaten, and steps are cheaper), then the median over ``repeats`` timed blocks of a few steps
(few at large batches, where one step is long); the steps and the mean number of trees each agent
remembers when timing starts are reported.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

import treeworld.envs  # noqa: F401  (registers the ids)
from treeworld.agents.tem import TEMAgent
from benchmarks.timing import median_seconds

NOISY = "treeworld/TreeWorldNoisy-v0"
STEPS = {1: (500, 50), 256: (500, 10), 4096: (100, 3)}  # batch -> (warm-up steps, timed steps)
QUICK_STEPS = {1: (2, 5), 8: (2, 5)}


def _envs(num_envs: int):
    envs = gym.make_vec(NOISY, num_envs=num_envs, vectorization_mode="vector_entry_point")
    return envs, envs.reset(seed=0)[0]


def agent_rate(num_envs: int, warmup: int, steps: int, repeats: int, **options) -> tuple[float, float]:
    """Agent-steps/s of ``agent.act`` then ``envs.step`` on ``num_envs`` noisy worlds (``options``
    go to the TEMAgent), and the mean number of trees an agent remembers after the warm-up."""
    envs, observation = _envs(num_envs)
    agent = TEMAgent.for_config(envs.config, num_envs, **options)
    agent.reset(None, seed=0)
    state = {"observation": observation}

    def block(count: int):
        def run():
            for _ in range(count):
                state["observation"] = envs.step(agent.act(state["observation"]))[0]
        return run

    block(warmup)()
    remembered = float(agent.memory.valid.sum(1).double().mean())
    return num_envs * steps / median_seconds(block(steps), repeats, warmup=0), remembered


def env_rate(num_envs: int, warmup: int, steps: int, repeats: int) -> float:
    """Agent-steps/s of ``envs.step`` alone with random actions on ``num_envs`` noisy worlds."""
    envs, _ = _envs(num_envs)
    actions = np.random.default_rng(0).uniform(-1, 1, (max(warmup, steps), num_envs, 3)).astype(np.float32)

    def block(count: int):
        def run():
            for action in actions[:count]:
                envs.step(action)
        return run

    block(warmup)()
    return num_envs * steps / median_seconds(block(steps), repeats, warmup=0)


def run(repeats: int, device: str, quick: bool) -> dict:
    report = {"units": "agent-steps/s (num_envs x steps / s); CPU whatever --device (the agent takes numpy)",
              "task": NOISY, "batches": {}}
    for n, (warmup, steps) in (QUICK_STEPS if quick else STEPS).items():
        with_agent, remembered = agent_rate(n, warmup, steps, repeats)
        shared, _ = agent_rate(n, warmup, steps, repeats, valence_sharing="batch")
        env_only = env_rate(n, warmup, steps, repeats)
        report["batches"][str(n)] = {"env_and_tem": with_agent, "env_and_tem_shared_readout": shared,
                                     "env_only": env_only, "ratio_env_and_tem_to_env": with_agent / env_only,
                                     "warmup_steps": warmup, "timed_steps": steps,
                                     "trees_remembered_per_agent": remembered}
    return report
