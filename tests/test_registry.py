"""The agent registry: specs to agents, one list of names, clear errors."""
import gymnasium as gym
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import registry
from treeworld.agents.baselines import Forager, RandomWalker
from treeworld.agents.protocol import Agent, Batched, BatchAgent, Single, run_batch
from treeworld.agents.tem import TEMAgent
from treeworld.config import WorldConfig

torch.set_num_threads(1)

CONFIG = WorldConfig()
ACTIONS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def test_kinds_name_every_builtin_and_which_load_files():
    assert registry.kinds()[:4] == ("random", "forager", "tem[:PATH]", "sb3[:PATH]")


@pytest.mark.parametrize("spec, kind", [("random", Batched), ("forager", Batched), ("tem", TEMAgent)])
def test_batch_agents_have_one_row_per_env_and_act_in_a_vector_env(spec, kind):
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        max_episode_steps=20)
    agent = registry.make_batch_agent(spec, envs.config, 3, envs.single_action_space, seed=4)
    assert isinstance(agent, kind) and isinstance(agent, BatchAgent) and agent.num_agents == 3
    episodes = run_batch(envs, agent, 25, seed=4)
    assert len(episodes["env"]) == 3  # every env ended its first (20-step) episode
    envs.close()


def test_single_agents_are_the_baselines_themselves_or_a_single_row():
    assert isinstance(registry.make_agent("random", CONFIG, ACTIONS), RandomWalker)
    assert isinstance(registry.make_agent("forager", CONFIG, ACTIONS), Forager)
    tem = registry.make_agent("tem", CONFIG, ACTIONS)
    assert isinstance(tem, Single) and isinstance(tem, Agent) and tem.batch_agent.num_agents == 1


def test_a_saved_tem_agent_loads_by_path_and_must_fit(tmp_path):
    path = tmp_path / "tem.pt"
    saved = TEMAgent.for_config(CONFIG, 2)
    saved.readouts.update(torch.nn.functional.normalize(torch.ones(1, 384), dim=-1), torch.ones(1), torch.ones(1, dtype=torch.long))
    saved.save(path)
    loaded = registry.make_batch_agent(f"tem:{path}", CONFIG, 2, ACTIONS)
    assert torch.equal(loaded.readouts.covariance(), saved.readouts.covariance())
    with pytest.raises(ValueError, match="^agent: .* holds a TEMAgent of num_agents 2, expected 3"):
        registry.make_batch_agent(f"tem:{path}", CONFIG, 3, ACTIONS)
    with pytest.raises(ValueError, match="^agent: .* 32-d"):
        registry.make_batch_agent(f"tem:{path}", CONFIG.replace(vocabulary="hashed", percept_dim=32), 2, ACTIONS)


@pytest.mark.parametrize("spec, message", [
    ("dqn", r"^agent: unknown agent 'dqn'; expected one of random, forager, tem\[:PATH\], sb3\[:PATH\]"),
    ("forager:x.pt", "^agent: 'forager' takes no file"),
    ("tem:", "^agent: no file at ''"),
    ("tem:/no/such/file.pt", "^agent: no file at '/no/such/file.pt'"),
])
def test_bad_specs_are_value_errors_naming_the_argument(spec, message):
    with pytest.raises(ValueError, match=message):
        registry.make_batch_agent(spec, CONFIG, 1, ACTIONS)


def test_bad_arguments_and_registering_a_kind():
    with pytest.raises(TypeError, match="^agent:"):
        registry.parse(3)
    with pytest.raises(ValueError, match="^num_envs:"):
        registry.make_batch_agent("random", CONFIG, 0, ACTIONS)
    with pytest.raises(ValueError, match="^kind:"):
        registry.register("not a name", lambda *args: None)
    made = []

    def still(config, num_envs, action_space, seed, path):
        made.append((num_envs, seed, path))
        return Batched([RandomWalker(action_space, seed=seed + row, config=config) for row in range(num_envs)])

    registry.register("still", still, takes_file=True)
    try:
        assert "still[:PATH]" in registry.kinds()
        registry.make_batch_agent("still", CONFIG, 2, ACTIONS, seed=7)
        assert made == [(2, 7, None)]
    finally:
        registry._FACTORIES.pop("still")


@pytest.mark.parametrize("algorithm", ["PPO", "RecurrentPPO"])
def test_a_saved_sb3_policy_acts_as_it_did_before_saving(tmp_path, algorithm):
    import stable_baselines3
    import sb3_contrib

    from treeworld.envs import TreeWorldSB3VecEnv

    venv = TreeWorldSB3VecEnv(num_envs=2, max_episode_steps=50)
    policy = "MultiInputLstmPolicy" if algorithm == "RecurrentPPO" else "MultiInputPolicy"
    algo = getattr(sb3_contrib if algorithm == "RecurrentPPO" else stable_baselines3, algorithm)
    model = algo(policy, venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(32)
    path = tmp_path / "policy.zip"
    model.save(path)
    envs = gym.make_vec("treeworld/TreeWorld-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        max_episode_steps=50)
    agent = registry.make_batch_agent(f"sb3:{path}", envs.config, 2, envs.single_action_space)
    assert isinstance(agent, BatchAgent) and agent.num_agents == 2
    agent.reset()
    observation, _ = envs.reset(seed=3)
    state, starts = None, np.ones(2, dtype=bool)
    for _ in range(5):  # the loaded policy's actions are the saved model's, its memory carried per row
        expected, state = model.predict(observation, state=state, episode_start=starts, deterministic=True)
        starts[:] = False
        got = agent.act(observation)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        observation, *_ = envs.step(got)
    other = WorldConfig(vocabulary="hashed", percept_dim=16)
    with pytest.raises(ValueError, match="^agent: .* was trained on the observation space"):
        registry.make_batch_agent(f"sb3:{path}", other, 2, envs.single_action_space)
    with pytest.raises(ValueError, match="^agent: 'sb3' needs a saved policy"):
        registry.make_batch_agent("sb3", envs.config, 2, envs.single_action_space)
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a stable-baselines3 file"):
        registry.make_batch_agent(f"sb3:{tmp_path / 'junk.zip'}", envs.config, 2, envs.single_action_space)
    envs.close()
