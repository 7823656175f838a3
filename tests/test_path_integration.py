"""Path integration and the location belief: default metric, exact and learned integrators, Belief."""
import math

import pytest
import torch

from treeworld.agents import FourierMetric
from treeworld.agents.path_integration import (Belief, ExactPathIntegration, LearnedPathIntegration, PathIntegrator,
                                               default_metric, odometry_step_variance)

torch.set_num_threads(1)

ARENA = 500.0
MAX_STEP = 5.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_steps(count: int, generator: torch.Generator, max_length: float = MAX_STEP) -> torch.Tensor:
    """Steps of uniform direction and length in [0, max_length], float64.  # (count, 2)"""
    angle = _TWO_PI * torch.rand(count, generator=generator, dtype=torch.float64)
    length = max_length * torch.rand(count, generator=generator, dtype=torch.float64)
    return length[:, None] * torch.stack((angle.cos(), angle.sin()), dim=-1)


_TWO_PI = 2.0 * math.pi


def inside(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``step``, turned straight back towards the origin where it would leave the arena disc."""
    out = (x + step).norm(dim=-1) > ARENA
    inward = -x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * step.norm(dim=-1, keepdim=True)
    return torch.where(out[:, None], inward, step)


def rotation(gain: float, angle: float) -> torch.Tensor:
    """``gain * R(angle)``, the world's odometry bias (treeworld.sensors.odometry).  # (2, 2)"""
    c, s = gain * math.cos(angle), gain * math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


# -- the default metric --------------------------------------------------------------------------
def test_default_metric_covers_the_arena_and_resolves_under_a_unit():
    metric = default_metric()
    assert (metric.location_dim, metric.dim, metric.num_modules) == (150, 2, 25)
    wavelengths = _TWO_PI / metric.alphas.double()
    assert wavelengths[0] > 2 * 1000.0  # the coarsest: 2048
    assert wavelengths[-1] <= 0.5 + 1e-6  # the finest: half a world unit
    assert torch.allclose(wavelengths[0], torch.tensor(2048.0, dtype=torch.float64))


def test_default_metric_decodes_exactly_everywhere_in_the_arena():
    metric = default_metric()  # float32, the default
    axis = torch.linspace(-ARENA, ARENA, 201, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # the square [-500, 500]^2 around the disc, corners included
    scatter = (2 * torch.rand(20000, 2, generator=gen(0), dtype=torch.float64) - 1) * ARENA
    x = torch.cat([grid, scatter]).float()
    per_module, mean = metric.decode(metric.encode(x))
    assert (mean.double() - x.double()).norm(dim=-1).max() < 1e-3
    assert (per_module.double() - x.double()[:, None]).norm(dim=-1).max() < 1e-3


# -- exact path integration ---------------------------------------------------------------------
def test_exact_path_integration_stays_exact_over_10000_steps():
    B, generator = 16, gen(1)
    belief = Belief(ExactPathIntegration(default_metric()), B)  # float32 suffices
    truth = torch.zeros(B, 2, dtype=torch.float64)
    worst, farthest = 0.0, 0.0
    for n in range(1, 10001):
        motion = inside(truth, random_steps(B, generator)).float()
        truth = truth + motion.double()  # the summed motion, exactly (float64 sum of the float32 steps)
        belief.step(motion)
        if n % 500 == 0:
            worst = max(worst, (belief.position().double() - truth).norm(dim=-1).max().item())
            farthest = max(farthest, truth.norm(dim=-1).max().item())
    assert belief.code.dtype == torch.float32
    assert farthest > 0.6 * ARENA  # the walk crossed the arena, not just the middle
    assert worst < 1e-3


# -- learned path integration -------------------------------------------------------------------
def _codes_and_motions(metric: FourierMetric, count: int, seed: int, max_length: float):
    generator = gen(seed)
    x = (2 * torch.rand(count, 2, generator=generator, dtype=torch.float64) - 1) * ARENA
    return metric.encode(x.float()), random_steps(count, generator, max_length).float()


@pytest.mark.parametrize("max_length", [MAX_STEP, 200.0])
def test_learned_equals_exact_at_initialisation(max_length):
    metric = default_metric()
    exact, learned = ExactPathIntegration(metric), LearnedPathIntegration(metric)
    code, motion = _codes_and_motions(metric, 2000, 2, max_length)
    assert (learned(code, motion) - exact(code, motion)).abs().max() < 1e-5
    assert torch.allclose(learned.velocities.double(),
                          (metric.alphas.double()[:, None, None] * metric.directions.double()).flatten(0, 1))
    readings = learned.implied_displacements(motion)  # (B, J, 2): every module reads the step
    assert readings.shape == (2000, metric.num_modules, 2)
    assert (readings - motion[:, None]).abs().max() < 1e-4 * max_length
    assert metric.displacement_variance(learned.phase_steps(motion)).max() < 1e-6 * max_length ** 2


def test_learned_path_integration_is_differentiable():
    metric = default_metric()
    learned = LearnedPathIntegration(metric)
    code, motion = _codes_and_motions(metric, 64, 3, MAX_STEP)
    target = ExactPathIntegration(metric)(code, 1.1 * motion)
    readings = learned.implied_displacements(motion)
    loss = (learned(code, motion) - target).square().sum() + readings.var(dim=1).sum()
    loss.backward()
    for name, parameter in learned.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().max() > 0, name


def test_gradients_reach_the_correction_through_the_decoded_belief():
    # position() = C * (summed motion) while nothing wraps, so d sum(position) / d C[a, b] = sum_t m_t[b].
    learned = LearnedPathIntegration(default_metric())
    belief = Belief(learned, 8)
    motions = random_steps(8 * 20, gen(4)).float().reshape(20, 8, 2)
    for motion in motions:
        belief.step(motion)
    belief.position().sum().backward()
    expected = motions.double().sum(dim=(0, 1)).expand(2, 2)
    assert torch.allclose(learned.correction.grad.double(), expected, rtol=1e-3, atol=1e-3)
    assert belief.detach().code.grad_fn is None


def test_learned_correction_calibrates_a_biased_odometry():
    gain, angle, B, generator = 1.2, 0.1, 8, gen(5)
    bias = rotation(gain, angle)  # motion_obs = gain R(angle) motion_true
    learned, raw = LearnedPathIntegration(default_metric()), LearnedPathIntegration(default_metric())
    with torch.no_grad():
        learned.correction.copy_(torch.linalg.inv(bias))
    calibrated, uncalibrated = Belief(learned, B), Belief(raw, B)
    truth = torch.zeros(B, 2, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(2000):
            motion = inside(truth, random_steps(B, generator)).float()
            truth = truth + motion.double()
            observed = (motion.double() @ bias.T).float()
            calibrated.step(observed)
            uncalibrated.step(observed)
        error = (calibrated.position().double() - truth).norm(dim=-1).max()
        drift = (uncalibrated.position().double() - truth).norm(dim=-1).max()
    assert drift > 10.0  # the bias matters (an uncorrected belief is far off) ...
    assert error < 1e-3, error  # ... and the inverse correction removes it


def test_the_odometry_map_reads_the_identity_at_initialisation_and_the_inverse_of_a_bias():
    learned = LearnedPathIntegration(default_metric())
    assert learned.odometry_map() == pytest.approx({"gain": 1.0, "rotation": 0.0, "spread": 0.0}, abs=1e-6)  # float32
    with torch.no_grad():
        learned.correction.copy_(torch.linalg.inv(rotation(1.25, 0.1)))
        learned.lattice[3] *= 1.01  # one module reads 1% longer steps
    read = learned.odometry_map()
    assert read["gain"] == pytest.approx(0.8 * (1 + 0.01 / 25), rel=1e-5)  # the mean map over 25 modules
    assert read["rotation"] == pytest.approx(-0.1, abs=1e-6)
    assert read["spread"] == pytest.approx(0.8 * math.cos(0.1) * 0.01 * 24 / 25, rel=1e-4)  # its largest entry


# -- the belief -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [ExactPathIntegration, LearnedPathIntegration])
def test_a_batch_of_agents_equals_single_agents(kind):
    B, steps = 5, 50
    integrator = kind(default_metric())
    motions = random_steps(steps * B, gen(6)).float().reshape(steps, B, 2)
    starts = (2 * torch.rand(B, 2, generator=gen(7)) - 1) * 400
    batch = Belief(integrator, B, step_variance=0.25)
    batch.reset(position=starts, variance=torch.arange(B, dtype=torch.float32))
    singles = [Belief(integrator, 1, step_variance=0.25) for _ in range(B)]
    for b, single in enumerate(singles):
        single.reset(position=starts[b], variance=float(b))
    with torch.no_grad():
        for motion in motions:
            batch.step(motion)
            for b, single in enumerate(singles):
                single.step(motion[b:b + 1])
        for b, single in enumerate(singles):
            assert torch.allclose(batch.code[b], single.code[0], atol=1e-6)
            assert torch.allclose(batch.position()[b], single.position()[0], atol=1e-4)
            assert batch.variance[b] == single.variance[0]


@pytest.mark.parametrize("rows", [torch.tensor([False, True, False, True]), [3, 1], torch.tensor([1, 3])])
def test_rows_reset_independently(rows):
    metric = default_metric()
    belief = Belief(ExactPathIntegration(metric), 4, step_variance=1.0)
    motions = random_steps(4 * 3, gen(8)).float().reshape(3, 4, 2)
    for motion in motions:
        belief.step(motion)
    before_code, before_variance = belief.code.clone(), belief.variance.clone()
    chosen = [3, 1] if isinstance(rows, list) else [1, 3]
    starts = torch.tensor([[100.0, -200.0], [-300.0, 50.0]])
    belief.reset(rows, position=starts, variance=torch.tensor([0.5, 2.0]))
    kept = [0, 2]
    assert torch.equal(belief.code[kept], before_code[kept])
    assert torch.equal(belief.variance[kept], before_variance[kept])
    assert torch.equal(belief.code[chosen], metric.encode(starts))
    assert belief.variance[chosen].tolist() == [0.5, 2.0]
    step = torch.tensor([[1.0, 2.0]]).expand(4, 2)
    previous = belief.position()
    belief.step(step)
    assert torch.allclose(belief.position(), previous + step, atol=1e-3)
    assert torch.allclose(belief.position()[chosen], starts + step[:2], atol=1e-3)
    # start from a code, and neither (the origin)
    code = metric.encode(torch.tensor([7.0, 8.0]))
    belief.reset([2], start_code=code)
    belief.reset(torch.tensor([True, False, False, False]))
    assert torch.allclose(belief.position()[[0, 2]], torch.tensor([[0.0, 0.0], [7.0, 8.0]]), atol=1e-4)
    assert belief.variance[[0, 2]].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("length", [0.0, 1.0, MAX_STEP])
def test_variance_grows_by_step_variance_per_step_whatever_the_length(length):
    s, n = 0.5, 40
    belief = Belief(ExactPathIntegration(default_metric()), 3, step_variance=odometry_step_variance(s))
    belief.reset(variance=torch.tensor([0.0, 1.0, 2.0]))
    motion = torch.tensor([[length, 0.0]]).expand(3, 2)
    for _ in range(n):
        belief.step(motion)
    expected = torch.tensor([0.0, 1.0, 2.0]) + n * s ** 2  # per axis; not n * length * s^2 / max_step
    assert torch.allclose(belief.variance, expected)
    assert torch.allclose(belief.sigma, expected.sqrt())


def test_variance_matches_the_error_of_integrating_noisy_odometry():
    # The world's odometry: observed = true + N(0, s^2) per axis, every step; the error of the
    # integrated observation has per-axis variance n s^2 whatever the steps' lengths.
    s, n, B, generator = 0.5, 40, 2000, gen(9)
    belief = Belief(ExactPathIntegration(default_metric()), B, step_variance=odometry_step_variance(s))
    truth = torch.zeros(B, 2, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(n):
            motion = random_steps(B, generator, 1.0)  # short steps: a per-unit rate would under-report 5x
            truth = truth + motion
            belief.step((motion + s * torch.randn(B, 2, generator=generator, dtype=torch.float64)).float())
    error = belief.position().double() - truth  # (B, 2)
    empirical = error.square().mean()  # per axis (the noise has mean 0)
    assert abs(empirical / belief.variance.double().mean() - 1) < 0.1  # 4000 samples: ~2% sampling error
    assert odometry_step_variance(0.5, motion_gain=2.0) == 0.0625


# -- arguments, dtypes, devices ---------------------------------------------------------------------
def _bad_calls():
    metric = default_metric()
    exact, learned = ExactPathIntegration(metric), LearnedPathIntegration(metric)
    belief = Belief(exact, 3)
    code, motion = metric.encode(torch.zeros(3, 2)), torch.zeros(3, 2)
    nan = torch.tensor([[0.0, float("nan")], [0.0, 0.0], [0.0, 0.0]])
    return [
        (lambda: belief.step(nan), ValueError, "motion: expected finite"),
        (lambda: belief.step(torch.zeros(3, 3)), ValueError, "motion: expected shape"),
        (lambda: belief.step(torch.zeros(4, 2)), ValueError, "motion: expected shape"),
        (lambda: belief.step(torch.zeros(2)), ValueError, "motion: expected shape"),
        (lambda: belief.step(torch.zeros(3, 2, dtype=torch.int64)), TypeError, "motion: expected a floating"),
        (lambda: belief.step(torch.full((3, 2), 1e300, dtype=torch.float64)), ValueError, "motion: expected values"),
        (lambda: exact(code, nan), ValueError, "motion: expected finite"),
        (lambda: exact(code, torch.zeros(2, 2)), ValueError, "motion: expected shape"),
        (lambda: exact(code[:, :-1], motion), ValueError, "code: expected shape"),
        (lambda: exact(code[0], motion), ValueError, "code: expected shape"),
        (lambda: learned(code.masked_fill(code > 0.5, float("inf")), motion), ValueError, "code: expected finite"),
        (lambda: learned.implied_displacements(torch.zeros(3, 3)), ValueError, "motion: expected shape"),
        (lambda: learned.phase_steps(nan), ValueError, "motion: expected finite"),
        (lambda: belief.reset([0], position=nan[:1]), ValueError, "position: expected finite"),
        (lambda: belief.reset([0, 1], position=torch.zeros(3, 2)), ValueError, "position: expected shape"),
        (lambda: belief.reset([0], start_code=code[:, :10]), ValueError, "start_code: expected shape"),
        (lambda: belief.reset([0], start_code=code[:1], position=motion[:1]), ValueError, "start_code: expected"),
        (lambda: belief.reset([3]), ValueError, "rows: expected indices in"),
        (lambda: belief.reset([1, 1]), ValueError, "rows: expected distinct"),
        (lambda: belief.reset(torch.tensor([True, False])), ValueError, "rows: expected a bool mask"),
        (lambda: belief.reset([0.5]), ValueError, "rows: expected None"),
        (lambda: belief.reset(variance=-1.0), ValueError, "variance: expected >= 0"),
        (lambda: belief.reset(variance=torch.tensor([1.0, -1.0, 0.0])), ValueError, "variance: expected >= 0"),
        (lambda: Belief(exact, 0), ValueError, "batch_size: expected >= 1"),
        (lambda: Belief(exact, 2, step_variance=-0.1), ValueError, "step_variance: expected >= 0"),
        (lambda: Belief(metric, 2), TypeError, "integrator: expected a PathIntegrator"),
        (lambda: ExactPathIntegration(None), TypeError, "metric: expected a FourierMetric"),
        (lambda: odometry_step_variance(-1.0), ValueError, "motion_noise: expected >= 0"),
        (lambda: PathIntegrator(metric)(code, motion), NotImplementedError, None),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_names_the_argument(index):
    call, error, message = _bad_calls()[index]
    with pytest.raises(error, match=message):
        call()


def test_bad_input_changes_nothing():
    belief = Belief(ExactPathIntegration(default_metric()), 2)
    belief.step(torch.ones(2, 2))
    code, variance = belief.code.clone(), belief.variance.clone()
    for call in (lambda: belief.step(torch.tensor([[1.0, float("nan")], [0.0, 0.0]])),
                 lambda: belief.reset([0, 5], position=torch.zeros(2, 2))):
        with pytest.raises(ValueError):
            call()
    assert torch.equal(belief.code, code) and torch.equal(belief.variance, variance)


def _device_and_dtype_follow_the_module(device: str):
    for kind in (ExactPathIntegration, LearnedPathIntegration):
        belief = Belief(kind(default_metric()), 2, step_variance=0.5).to(device).double()
        assert belief.code.dtype == belief.variance.dtype == torch.float64
        assert belief.code.device.type == device
        assert all(p.dtype == torch.float64 and p.device.type == device for p in belief.parameters())
        belief.reset(position=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # float32 on the CPU: cast and moved
        code = belief.step(torch.tensor([[0.5, 0.25], [-1.0, 0.0]]))
        assert code.dtype == torch.float64 and code.device.type == device
        position = belief.position()
        assert position.dtype == torch.float64 and position.device.type == device
        assert torch.allclose(position.cpu(), torch.tensor([[1.5, 2.25], [2.0, 4.0]], dtype=torch.float64),
                              atol=1e-6)
        assert belief.variance.tolist() == [0.5, 0.5]
        out = belief.integrator(belief.code.float().cpu(), torch.zeros(2, 2))
        assert out.dtype == torch.float64 and out.device.type == device


def test_device_and_dtype_follow_the_module_cpu():
    _device_and_dtype_follow_the_module("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_and_dtype_follow_the_module_cuda():
    _device_and_dtype_follow_the_module("cuda")


def test_state_dict_holds_the_parameters_not_the_episode():
    belief = Belief(LearnedPathIntegration(default_metric()), 3)
    keys = set(belief.state_dict())
    assert {"integrator.lattice", "integrator.correction", "integrator.metric.alphas"} <= keys
    assert "code" not in keys and "variance" not in keys
