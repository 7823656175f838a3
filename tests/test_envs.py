"""The Gymnasium and stable-baselines3 faces: API checks, seeding, batching, errors, rendering."""
import os
import pickle

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gymnasium.error import ResetNeeded  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402
from stable_baselines3.common.vec_env.base_vec_env import VecEnv  # noqa: E402

import treeworld.envs  # noqa: E402
from treeworld.envs import DiscreteActions, TreeWorldEnv, TreeWorldSB3VecEnv, TreeWorldVectorEnv  # noqa: E402
from treeworld.config import WorldConfig  # noqa: E402

torch.set_num_threads(1)
SHORT = dict(max_health=60.0)  # episodes end within ~50 steps, so autoreset is exercised


@pytest.mark.parametrize("env_id", treeworld.envs.ENV_IDS)
def test_gymnasium_and_sb3_check_env_pass_on_every_registered_id(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=False)
    sb3_check_env(gym.make(env_id), warn=True)


def test_registered_env_has_the_documented_spaces_and_time_limit():
    env = gym.make("treeworld/TreeWorld-v0")
    assert env.spec.max_episode_steps == 2000
    assert env.action_space == gym.spaces.Box(-1, 1, (3,), np.float32)
    assert {k: v.shape for k, v in env.observation_space.items()} == {
        "smell": (384,), "sight": (384,), "sight_distance": (1,), "motion": (2,), "heading": (2,), "health": (1,)}
    obs, info = env.reset(seed=0)
    assert "position" not in obs and info["position"].shape == (2,) and info["tree_positions"].shape == (25, 2)
    with_position = gym.make("treeworld/TreeWorld-v0", observe_position=True)
    assert with_position.reset(seed=0)[0]["position"].tolist() == info["position"].tolist()


def run_random(env, seed, steps=200):
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    trace = [(obs, info)]
    for _ in range(steps):
        out = env.step(env.action_space.sample())
        trace.append(out)
        if out[2] or out[3]:
            trace.append(env.reset())
    return trace


def test_same_seed_gives_identical_episodes_and_other_seeds_differ(assert_same):
    a = run_random(gym.make("treeworld/TreeWorld-v0", **SHORT), seed=3)
    b = run_random(gym.make("treeworld/TreeWorld-v0", **SHORT), seed=3)
    assert len(a) == len(b) > 200
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert_same(u, v)
    c = run_random(gym.make("treeworld/TreeWorld-v0", **SHORT), seed=4, steps=5)
    assert not np.array_equal(a[0][1]["tree_positions"], c[0][1]["tree_positions"])


def test_world_seed_keeps_the_layout_across_episodes():
    env = gym.make("treeworld/TreeWorld-v0")
    _, first = env.reset(seed=1, options={"world_seed": 42})
    _, second = env.reset(options={"world_seed": 42})
    _, other = env.reset(options={"world_seed": 43})
    np.testing.assert_array_equal(first["tree_positions"], second["tree_positions"])
    assert not np.array_equal(first["position"], second["position"])
    assert not np.array_equal(first["tree_positions"], other["tree_positions"])


@pytest.mark.parametrize("overrides", [SHORT, dict(SHORT, motion_noise=0.5, observe_position=True)])
def test_vector_env_reproduces_single_envs_step_for_step(overrides, assert_same):
    n, seed, limit = 3, 11, 40
    vector = gym.make_vec("treeworld/TreeWorld-v0", num_envs=n, vectorization_mode="vector_entry_point",
                          max_episode_steps=limit, **overrides)
    singles = [gym.make("treeworld/TreeWorld-v0", max_episode_steps=limit, **overrides) for _ in range(n)]
    obs, _ = vector.reset(seed=seed)
    for i, env in enumerate(singles):
        assert_same({k: v[i] for k, v in obs.items()}, env.reset(seed=seed + i)[0])
    rng = np.random.default_rng(0)
    pending = [False] * n
    ended = 0
    for _ in range(150):
        actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        obs, reward, terminated, truncated, _ = vector.step(actions)
        for i, env in enumerate(singles):
            if pending[i]:  # next-step autoreset: the vector env restarts env i now
                expected = (env.reset()[0], 0.0, False, False)
            else:
                expected = env.step(actions[i])[:4]
            pending[i] = bool(expected[2] or expected[3])
            ended += pending[i]
            assert_same({k: v[i] for k, v in obs.items()}, expected[0])
            assert reward[i] == pytest.approx(expected[1], abs=1e-6)
            assert (terminated[i], truncated[i]) == (expected[2], expected[3])
    assert ended >= 3


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vector_env_backends_match_the_default_compiled_one(backend):
    kwargs = dict(num_envs=4, vectorization_mode="vector_entry_point", **SHORT)
    compiled_env = gym.make_vec("treeworld/TreeWorld-v0", **kwargs)
    other_env = gym.make_vec("treeworld/TreeWorld-v0", backend=backend, **kwargs)
    assert compiled_env.unwrapped.batch.backend == "numba"
    a, _ = compiled_env.reset(seed=5)
    b, _ = other_env.reset(seed=5)
    rng = np.random.default_rng(1)
    for _ in range(80):
        actions = rng.uniform(-1, 1, (4, 3)).astype(np.float32)
        a, ra, ta, ua, _ = compiled_env.step(actions)
        b, rb, tb, ub, _ = other_env.step(torch.from_numpy(actions) if backend == "torch" else actions)
        assert isinstance(b["smell"], np.ndarray)  # numpy out on the CPU, whichever backend computes
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-3, err_msg=key)
        np.testing.assert_allclose(ra, rb, atol=1e-4)
        assert np.array_equal(ta, tb) and np.array_equal(ua, ub)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vector_env_runs_on_cuda():
    env = gym.make_vec("treeworld/TreeWorld-v0", num_envs=8, vectorization_mode="vector_entry_point", device="cuda")
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(torch.zeros(8, 3, device="cuda"))
    assert obs["smell"].device.type == "cuda"


def test_pickled_env_continues_identically(assert_same):
    env = gym.make("treeworld/TreeWorld-v0")
    env.reset(seed=2)
    for _ in range(10):
        env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    action = np.array([0.3, -0.2, 1.0], np.float32)
    for _ in range(5):
        assert_same(env.step(action)[0], clone.step(action)[0])


@pytest.mark.parametrize("action, error, match", [
    (np.array([np.nan, 0, 0], np.float32), ValueError, "action: expected finite"),
    (np.array([np.inf, 0, 0], np.float32), ValueError, "action: expected finite"),
    (np.zeros(2, np.float32), ValueError, r"action: expected shape \(3,\), got \(2,\)"),
    (np.zeros((1, 3), np.float32), ValueError, r"action: expected shape \(3,\)"),
    (np.array(["a", "b", "c"]), TypeError, "action: expected a real-valued"),
    (np.array([True, False, True]), TypeError, "action: expected a real-valued"),
])
def test_bad_actions_raise_clear_errors(action, error, match):
    env = TreeWorldEnv()
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)


def test_bad_calls_and_arguments_raise_clear_errors():
    with pytest.raises(ResetNeeded, match="reset"):
        TreeWorldEnv().step(np.zeros(3, np.float32))
    with pytest.raises(ResetNeeded):
        gym.make("treeworld/TreeWorld-v0").step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unknown config key"):
        gym.make("treeworld/TreeWorld-v0", trees=3)
    with pytest.raises(ValueError, match="num_trees"):
        gym.make("treeworld/TreeWorld-v0", num_trees=-1)
    with pytest.raises(ValueError, match="arena_radius"):
        TreeWorldEnv(arena_radius=-1.0)
    with pytest.raises(ValueError, match="render_mode"):
        TreeWorldEnv(render_mode="ascii")
    with pytest.raises(ValueError, match="options: unknown key"):
        TreeWorldEnv().reset(options={"layout": 1})
    with pytest.raises(ValueError, match="world_seed"):
        TreeWorldEnv().reset(options={"world_seed": -3})
    with pytest.raises(ValueError, match="num_envs"):
        TreeWorldVectorEnv(num_envs=0)
    with pytest.raises(ValueError, match="backend"):
        TreeWorldVectorEnv(num_envs=2, backend="jax")
    vector = TreeWorldVectorEnv(num_envs=2)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: expected shape \(2, 3\)"):
        vector.step(np.zeros((3, 3), np.float32))


def test_discrete_wrapper_maps_directions_stay_and_eat():
    env = gym.make("treeworld/TreeWorldDiscrete-v0")
    assert env.action_space == gym.spaces.Discrete(10)
    env.reset(seed=0)
    _, _, _, _, info = env.step(2)  # north
    assert info["heading"].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    table = DiscreteActions(TreeWorldEnv())
    assert table.action(8).tolist() == [0.0, 0.0, -1.0] and table.action(9)[2] > 0
    with pytest.raises(ValueError, match=r"action: expected ints in \[0, 10\)"):
        env.step(10)
    with pytest.raises(TypeError, match="action"):
        env.step(0.5)


def test_sb3_vec_env_resets_on_the_same_step_and_reports_terminal_observations():
    venv = TreeWorldSB3VecEnv(num_envs=3, max_episode_steps=30, **SHORT)
    assert isinstance(venv, VecEnv)
    venv.seed(7)
    obs = venv.reset()
    assert obs["smell"].shape == (3, 384)
    ended = 0
    for _ in range(70):
        obs, rewards, dones, infos = venv.step(np.zeros((3, 3), np.float32))
        assert rewards.dtype == np.float32 and dones.shape == (3,)
        for i in np.flatnonzero(dones):
            ended += 1
            assert infos[i]["terminal_observation"]["health"].shape == (1,)
            assert obs["health"][i, 0] == pytest.approx(1.0)  # already the next episode's first observation
    assert ended >= 3


def test_sb3_ppo_trains_256_steps_on_the_vec_env_adapter():
    venv = TreeWorldSB3VecEnv(num_envs=4, max_episode_steps=50)
    venv.seed(0)
    model = PPO("MultiInputPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256


def test_rendering_through_the_env_in_both_modes():
    env = gym.make("treeworld/TreeWorld-v0", render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([1.0, 0.0, -1.0], np.float32))
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 20
    human = gym.make("treeworld/TreeWorld-v0", render_mode="human")
    human.reset(seed=0)
    human.step(np.zeros(3, np.float32))
    assert human.render() is None
    human.close()


def test_resets_without_a_seed_continue_the_seeded_streams():
    def layouts(make):
        env = make()
        first = env.reset(seed=0)[1]["tree_positions"]
        return first, env.reset()[1]["tree_positions"], env.reset()[1]["tree_positions"]

    a = layouts(lambda: TreeWorldVectorEnv(num_envs=2))
    b = layouts(lambda: TreeWorldVectorEnv(num_envs=2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[1])

    def sb3_layouts():
        venv = TreeWorldSB3VecEnv(num_envs=2)
        venv.seed(3)
        venv.reset()
        return [venv.reset()["smell"] for _ in range(2)]

    for x, y in zip(sb3_layouts(), sb3_layouts()):
        np.testing.assert_array_equal(x, y)


def test_world_seed_holds_through_autoresets_and_restart_steps_report_nothing():
    env = TreeWorldVectorEnv(num_envs=2, max_episode_steps=5)
    _, info = env.reset(seed=1, options={"world_seed": [10, None]})
    layout = info["tree_positions"]
    for _ in range(6):  # step 6 is the first step of episode 2 for both envs
        _, reward, terminated, truncated, info = env.step(np.array([[0, 0, 1.0]] * 2, np.float32))
    assert not truncated.any() and (reward == 0).all() and not info["ate"].any()
    np.testing.assert_array_equal(info["tree_positions"][0], layout[0])
    assert not np.array_equal(info["tree_positions"][1], layout[1])
    venv = TreeWorldSB3VecEnv(num_envs=1, max_episode_steps=3)
    venv.set_options({"world_seed": 4})
    venv.seed(0)
    venv.reset()
    layout = venv.batch.state.tree_position.copy()
    for _ in range(3):
        _, _, dones, _ = venv.step(np.zeros((1, 3), np.float32))
    assert dones[0]
    np.testing.assert_array_equal(venv.batch.state.tree_position, layout)


def test_observations_are_not_views_of_the_state(assert_same):
    env = TreeWorldEnv()
    obs, _ = env.reset(seed=0)
    twin = pickle.loads(pickle.dumps(env))
    obs["heading"][:] = 0.0
    obs["motion"][:] = 9.0
    action = np.array([0.0, 0.0, -1.0], np.float32)  # standing still keeps the heading
    assert_same(env.step(action)[0], twin.step(action)[0])


@pytest.mark.parametrize("make, error, match", [
    (lambda: TreeWorldVectorEnv(num_envs="2"), TypeError, "num_envs"),
    (lambda: TreeWorldVectorEnv(num_envs=2, backend="numpy", device="cuda"), ValueError, "device"),
    (lambda: TreeWorldVectorEnv(num_envs=2, max_episode_steps=True), TypeError, "max_episode_steps"),
    (lambda: TreeWorldVectorEnv(num_envs=2).reset(seed=[1, "a"]), TypeError, "seed"),
    (lambda: TreeWorldVectorEnv(num_envs=2).reset(seed=[1, 2, 3]), ValueError, "expected 2 seeds"),
    (lambda: TreeWorldVectorEnv(num_envs=2).reset(seed=1.5), TypeError, "seed"),
    (lambda: TreeWorldEnv().reset(options={"world_seed": "x"}), TypeError, "world_seed"),
    (lambda: TreeWorldSB3VecEnv(num_envs=2).env_method("reset"), NotImplementedError, "env_method"),
])
def test_bad_construction_and_reset_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_odd_but_valid_arguments_are_accepted():
    env = TreeWorldVectorEnv(num_envs=np.int64(2), max_episode_steps=np.int64(5))
    env.reset(seed=(1, 2), options={"world_seed": np.array(3)})
    single = TreeWorldEnv(max_step=np.float32(4.0))
    assert type(single.config.max_step) is float
    single.reset(seed=0)
    with pytest.raises(TypeError, match="action"):
        single.step([[1, 2], 3])
    tiny = TreeWorldEnv(arena_radius=1.0, start_radius=0.5, tree_spread=1000.0)  # truncated Gaussian, no loop
    _, info = tiny.reset(seed=0)
    assert (np.hypot(*info["tree_positions"].T) <= 1.0).all()


def test_every_env_has_its_own_action_space_so_seeding_one_leaves_the_others():
    envs = [gym.make("treeworld/TreeWorld-v0"), gym.make("treeworld/TreeWorld-v0"),
            gym.make("treeworld/TreeWorldDiscrete-v0"), gym.make("treeworld/TreeWorldDiscrete-v0"),
            TreeWorldVectorEnv(2), TreeWorldSB3VecEnv(2)]
    spaces = [env.action_space for env in envs[:4]] + [envs[4].single_action_space, envs[5].action_space]
    assert len({id(space) for space in spaces}) == len(spaces)
    for a, b in ((spaces[0], spaces[1]), (spaces[2], spaces[3])):
        a.seed(1)
        first = [a.sample() for _ in range(3)]
        a.seed(1)
        b.seed(2)
        np.testing.assert_array_equal([a.sample() for _ in range(3)], first)


def test_an_ids_task_settings_make_the_default_config_and_a_given_config_is_taken_whole():
    noisy = treeworld.envs.NOISY
    assert gym.make("treeworld/TreeWorldNoisy-v0").unwrapped.config.motion_noise == noisy["motion_noise"]
    assert gym.make("treeworld/TreeWorldNoisy-v0", motion_noise=1.0).unwrapped.config.motion_noise == 1.0
    mine = WorldConfig(motion_noise=2.0, percept_noise=0.0)
    for env in (gym.make("treeworld/TreeWorldNoisy-v0", config=mine).unwrapped,
                gym.make_vec("treeworld/TreeWorldNoisy-v0", 2, vectorization_mode="vector_entry_point", config=mine)):
        assert env.config == mine
    homing = gym.make("treeworld/TreeWorldHoming-v0", config=WorldConfig(task="homing")).unwrapped.config
    assert (homing.living_cost, homing.move_cost) == (WorldConfig().living_cost, WorldConfig().move_cost)


def test_the_sb3_adapter_keeps_generators_on_seed_none_and_layouts_on_empty_options():
    env = TreeWorldSB3VecEnv(2, WorldConfig())
    state = np.random.get_state()[1].copy()
    assert env.seed(None) == [None, None]
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global generator untouched
    env.set_options([{"world_seed": 7}, {"world_seed": 8}])
    env.reset()
    layout = env.batch.state.tree_position.copy()
    env.set_options([{"world_seed": 7}, {}])  # env 1: no new options, its fixed layout stays
    env.reset()
    assert env.batch.world_seeds == [7, 8]
    np.testing.assert_array_equal(env.batch.state.tree_position, layout)


def test_a_huge_finite_float64_action_is_clipped_not_called_infinite():
    env = gym.make("treeworld/TreeWorld-v0")
    env.reset(seed=0)
    env.step(np.array([1e39, 0.0, -1.0]))  # finite in float64, inf in float32: clipped to 1
    assert env.unwrapped.config.max_step == pytest.approx(float(np.hypot(*env.unwrapped._batch.state.motion[0])), rel=1e-4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(np.array([np.inf, 0.0, -1.0]))
