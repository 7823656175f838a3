"""scripts/train.py: a tiny run, exact resume, torchrun data parallelism, bad input."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--walks", "2", "--steps", "16", "--eval-every", "0", "--reuse", "2"]


def train(*args, env=None, launcher=None):
    command = (launcher or [sys.executable]) + [str(ROOT / "scripts" / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def parameters(folder):
    state = torch.load(folder / "checkpoint.pt", weights_only=False)["model"]
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_run_writes_checkpoint_metrics_events_and_figure(tmp_path):
    done = train("--updates", "2", "--walks", "2", "--steps", "24", "--eval-every", "2", "--eval-walks", "2",
                 "--world", "motion_gain=1.1", "--alignment-weight", "0.5", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = metrics(tmp_path)
    assert [line["update"] for line in lines] == [0, 1, 2]  # 0: the untrained parts
    assert "train" not in lines[0] and "validation" in lines[0] and "validation" in lines[-1]
    assert 0.0 <= lines[-1]["validation"]["recall_accuracy"] <= 1.0
    assert 0.5 < lines[-1]["validation"]["separation_auc"] <= 1.0
    assert {"elbo", "kl", "log_likelihood", "displacement_variance", "belief_error", "alignment"} <= set(lines[1]["train"])
    assert set(lines[1]["path_integration"]) == {"gain", "rotation", "spread"}  # the calibration, per update
    assert list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "training.png").stat().st_size > 0
    assert json.loads(done.stdout.splitlines()[-1])["updates"] == 2


def test_held_step_and_recall_scales_stay_where_they_were_put(tmp_path):
    scales = {}
    for flags in ((), ("--fixed-step-scale", "--recall-scale", "3")):
        out = tmp_path / ("fixed" if flags else "learned")
        done = train("--updates", "2", *TINY, "--steps", "60", *flags, "--out", str(out))  # long enough to revisit
        assert done.returncode == 0, done.stderr
        scales[bool(flags)] = metrics(out)[-1]["scales"]
    assert scales[True]["step_scale"] == pytest.approx(0.5, abs=1e-6)  # the noisy task's motion noise, untouched
    assert scales[True]["recall_scale"] == pytest.approx(3.0, abs=1e-6)
    assert abs(scales[False]["step_scale"] - 0.5) > 1e-4  # learned, they move in two updates
    assert abs(scales[False]["recall_scale"] - 5.0) > 1e-4


def test_resume_continues_with_the_losses_of_an_uninterrupted_run(tmp_path):
    whole, split, constant = tmp_path / "whole", tmp_path / "split", tmp_path / "constant"
    cosine = ("--lr-schedule", "cosine")  # the schedule is resumed too
    assert train("--updates", "3", *TINY, *cosine, "--out", str(whole)).returncode == 0
    first = train("--updates", "1", *TINY, *cosine, "--out", str(split))  # stops inside a reused batch
    assert first.returncode == 0, first.stderr
    resumed = train("--updates", "3", *TINY, *cosine, "--out", str(split), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [line["train"]["loss"] for line in metrics(split)] == [line["train"]["loss"] for line in metrics(whole)]
    a, b = parameters(whole), parameters(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train("--updates", "3", *TINY, "--out", str(constant)).returncode == 0
    # the same first step (factor 1: the same second loss), then a step 0.75 as long
    losses = [[line["train"]["loss"] for line in metrics(run)] for run in (whole, constant)]
    c = parameters(constant)
    assert losses[0][:2] == losses[1][:2] and not torch.equal(a["percept_metric.embedding"], c["percept_metric.embedding"])


def test_the_cosine_schedule_falls_from_one_to_zero():
    module = load_train_module()
    config = module.parse(["--updates", "10", "--lr-schedule", "cosine"])
    factors = [module.learning_rate_factor(config, update) for update in range(11)]
    assert factors[0] == 1.0 and factors[5] == pytest.approx(0.5) and factors[10] == pytest.approx(0.0, abs=1e-12)
    assert all(later < earlier for earlier, later in zip(factors, factors[1:]))
    assert module.learning_rate_factor(module.parse(["--updates", "10"]), 7) == 1.0  # constant


def test_two_torchrun_processes_match_one_process_with_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(pathlib.Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    one, two = tmp_path / "one", tmp_path / "two"
    assert train("--updates", "2", *TINY, "--out", str(one)).returncode == 0
    done = train("--updates", "2", *TINY, "--out", str(two),
                 launcher=[torchrun, "--standalone", "--nproc_per_node=2"])
    assert done.returncode == 0, done.stderr
    a, b = parameters(one), parameters(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert metrics(two)[0]["train"]["elbo"] == pytest.approx(metrics(one)[0]["train"]["elbo"], rel=1e-5)


def load_train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("treeworld_scripts_train", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--nope", "1"], "unrecognized arguments: --nope"),
    (["--algo", "dqn"], "--algo: unknown algorithm 'dqn'"),
    (["--behaviour", "wizard"], "--behaviour: agent: unknown agent 'wizard'"),
    (["--walks", "0"], "--walks: expected an int >= 1"),
    (["--world", "gravity=2"], "--world: unknown config key(s) ['gravity']"),
    (["--alignment-weight", "-1"], "--alignment-weight: expected >= 0"),
    (["--truncate-backprop", "-1"], "--truncate-backprop: expected an int >= 0, got -1"),
    (["--lr-schedule", "step"], "--lr-schedule: expected one of constant, cosine, got 'step'"),
    (["--recall-scale", "-1"], "--recall-scale: expected >= 0 (0: learned), got -1.0"),
    (["--seed", "-1"], "--seed: expected an int >= 0, got -1"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_train_module().parse(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_more_processes_than_walks_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SystemExit):
        load_train_module().parse(["--walks", "2"])
    assert "--walks: expected a multiple of the 4 processes" in capsys.readouterr().err


def test_resume_refuses_missing_foreign_shaped_and_corrupted_checkpoints(tmp_path):
    done = train("--resume", "--out", str(tmp_path / "none"))
    assert done.returncode == 2 and "--resume: no checkpoint at" in done.stderr and "Traceback" not in done.stderr
    assert train("--updates", "1", "--walks", "2", "--steps", "12", "--eval-every", "0", "--metric-rank", "8",
                 "--out", str(tmp_path)).returncode == 0
    done = train("--updates", "2", "--walks", "2", "--steps", "12", "--out", str(tmp_path), "--resume")
    assert done.returncode == 2 and "--resume:" in done.stderr and "'metric_rank': 8" in done.stderr, done.stderr
    same = ("--updates", "2", "--walks", "2", "--steps", "12", "--eval-every", "0", "--metric-rank", "8")
    done = train(*same, "--seed", "7", "--lr", "0.1", "--out", str(tmp_path), "--resume")
    assert done.returncode == 2 and "--lr 0.003 (now 0.1), --seed 0 (now 7)" in done.stderr, done.stderr
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state["model"]["percept_metric.embedding"] = state["model"]["percept_metric.embedding"][:, :10]
    torch.save(state, tmp_path / "checkpoint.pt")
    done = train(*same, "--out", str(tmp_path), "--resume")
    assert done.returncode == 2 and "does not fit this model" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    done = train("--updates", "2", "--walks", "2", "--steps", "12", "--out", str(tmp_path), "--resume")
    assert done.returncode == 2 and "is not a readable checkpoint" in done.stderr, done.stderr


RL_TINY = ["--envs", "2", "--max-episode-steps", "40", "--eval-steps", "512", "--eval-envs", "2",
           "--checkpoint-steps", "512"]


def test_an_rl_run_with_tem_features_trains_resumes_and_its_policy_runs(tmp_path, capsys):
    done = train("--algo", "ppo", "--task", "homing", "--tem-features", "--timesteps", "1024", *RL_TINY,
                 "--world", "explore_steps=10", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["timesteps"] == 1024 and result["reader"].endswith("policy.memory.pt")
    assert [line["timesteps"] for line in metrics(tmp_path)] == [512, 1024]
    assert {"fruit", "survived", "success", "spl"} <= set(metrics(tmp_path)[-1]["validation"])
    assert list(tmp_path.glob("ppo_1/events.out.tfevents.*")) and (tmp_path / "learning.png").stat().st_size > 0
    resumed = load_train_module().main(["--algo", "ppo", "--task", "homing", "--tem-features", "--timesteps", "2048",
                                        *RL_TINY, "--world", "explore_steps=10", "--out", str(tmp_path), "--resume"])
    assert resumed["timesteps"] == 2048
    assert [line["timesteps"] for line in metrics(tmp_path)] == [512, 1024, 1536, 2048]
    with pytest.raises(SystemExit):  # resumed without the features it was trained with
        load_train_module().main(["--algo", "ppo", "--task", "homing", "--timesteps", "2560", *RL_TINY,
                                  "--world", "explore_steps=10", "--out", str(tmp_path), "--resume"])
    err = capsys.readouterr().err
    assert "--resume: " in err and "trained with --tem-features" in err and "Traceback" not in err, err
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "--agent", f"sb3:{tmp_path / 'policy.zip'}",
                          "--task", "homing", "--episodes", "1", "--max-steps", "20", "--set", "explore_steps=10"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    assert run.returncode == 0, run.stderr


def test_rl_options_and_foreign_tem_checkpoints_are_named(tmp_path, capsys):
    module = load_train_module()
    from treeworld.agents.training import TEMModel

    small = TEMModel(16, 4, 0.5, 0.9, 8)
    optimizer = torch.optim.Adam(small.parameters())
    module.save(tmp_path / "small.pt", small, optimizer, module.TrainConfig(), 1)
    for argv, message in [
        (["--algo", "ppo", "--task", "maze"], "--task: expected one of forage, noisy, homing, got 'maze'"),
        (["--task", "homing"], "--task: expected one of forage, noisy for --algo tem, got 'homing'"),
        (["--algo", "ppo", "--tem-checkpoint", "x.pt"], "--tem-checkpoint: given without --tem-features"),
        (["--algo", "ppo", "--tem-features", "--tem-checkpoint", str(tmp_path / "none.pt")],
         "--tem-checkpoint: checkpoint: no checkpoint at"),
        (["--algo", "ppo", "--tem-features", "--tem-checkpoint", str(tmp_path / "small.pt")],
         "does not fit this world: model: trained on 16-d percepts, the world's are 384-d"),
        (["--algo", "sac", "--timesteps", "0"], "--timesteps: expected an int >= 1, got 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            module.parse(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
