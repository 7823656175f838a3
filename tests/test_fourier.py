"""FourierMetric and FourierCodeDistribution: round trips, metric properties, sampler, errors."""
import math
import warnings

import pytest
import torch

from treeworld.agents import FourierCodeDistribution, FourierMetric
from treeworld.agents.fourier import simplex_directions

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

# Max error in world units (float32), from the issue: 1e-4 at scale 10, 1e-3 at scale 1000.
BARS = {10.0: 1e-4, 1000.0: 1e-3}
CASES = [(dim, scale) for dim in (1, 2, 3) for scale in BARS]
ARENA = 500.0


def _ball(count: int, dim: int, radius: float, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Points uniform in a ball, plus points on its rim along every +-simplex direction
    (where a direction's phase sits next to its wrap)."""
    direction = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    points = radius * torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1 / dim) * direction
    rim = radius * torch.cat([simplex_directions(dim), -simplex_directions(dim)])
    return torch.cat([points, rim]).to(dtype)


def _metric(dim=2, scale=10.0, location_dim=None, **kwargs) -> FourierMetric:
    return FourierMetric(location_dim or 20 * 2 * (dim + 1), dim=dim, scale=scale, **kwargs)


def _phases(J: int, n: int, seed: int = 3) -> torch.Tensor:
    return torch.empty(J, n).uniform_(-math.pi, math.pi, generator=gen(seed))


@pytest.mark.parametrize("dim,scale", CASES)
def test_decode_recovers_positions_within_scale(dim, scale):
    metric = _metric(dim, scale, phases=_phases(20, dim + 1))
    x = _ball(4000, dim, 0.999 * scale, gen(dim))
    per_module, mean = metric.decode(metric.encode(x))
    assert per_module.shape == (len(x), metric.num_modules, dim) and mean.shape == x.shape
    assert (mean.double() - x.double()).norm(dim=-1).max() < BARS[scale]
    assert (per_module.double() - x.double()[:, None]).norm(dim=-1).max() < BARS[scale]


@pytest.mark.parametrize("dim,scale", CASES)
def test_displacement_recovers_steps_anywhere_in_the_arena(dim, scale):
    generator = gen(10 + dim)
    metric = _metric(dim, scale)
    x = _ball(4000, dim, ARENA, generator)
    step = _ball(4000, dim, 0.999 * scale, generator)[torch.randperm(4000 + 2 * (dim + 1), generator=generator)]
    y = x + step  # float32; the true step is y - x, exactly
    per_module, mean = metric.displacement(metric.encode(x), metric.encode(y))
    truth = y.double() - x.double()
    assert (mean.double() - truth).norm(dim=-1).max() < BARS[scale]
    assert (per_module.double() - truth[:, None]).norm(dim=-1).max() < BARS[scale]


@pytest.mark.parametrize("dim", (1, 2, 3))
def test_a_float64_metric_reads_every_module_to_float64_precision(dim):
    # Built in float32 and cast: its buffers hold float32-rounded directions. The readings solve
    # with the pseudo-inverse of those stored directions; the float32-rounded pinv buffer left the
    # coarse modules 4e-8 off.
    metric = _metric(dim, 10.0, phases=_phases(20, dim + 1)).double()
    generator = gen(40 + dim)
    x = _ball(500, dim, ARENA, generator, torch.float64)
    y = x + _ball(500, dim, 0.999 * metric.scale, generator, torch.float64)
    per_module, mean = metric.displacement(metric.encode(x), metric.encode(y))
    assert (per_module - (y - x)[:, None]).norm(dim=-1).max() < 1e-10
    assert (mean - (y - x)).norm(dim=-1).max() < 1e-10


def test_seed_addendum_round_trip_is_exact():
    # The seed's addendum: scale 1000, positions randn * 10; it decoded them 0.006 to 0.04 off.
    metric = _metric(2, 1000.0)
    x = torch.randn(10, 2, generator=gen(0)) * 10
    _, mean = metric.decode(metric.encode(x))
    assert (mean - x).norm(dim=-1).max() < 1e-4


def test_apply_displacement_is_encode_of_the_sum():
    generator = gen(1)
    metric = _metric(2, 10.0).double()
    x = _ball(500, 2, ARENA, generator, torch.float64)
    step = _ball(500, 2, 30.0, generator, torch.float64)  # beyond scale too: rotations do not alias
    assert torch.allclose(metric.apply_displacement(metric.encode(x), step), metric.encode(x + step), atol=1e-9)
    # float32 on a dyadic grid, so x + step is exact
    metric32 = _metric(2, 10.0)
    x32, step32 = (x * 64).round().float() / 64, (step * 64).round().float() / 64
    moved = metric32.apply_displacement(metric32.encode(x32), step32)
    assert (moved - metric32.encode(x32 + step32)).abs().max() < 1e-5


def test_path_integration_tracks_the_position():
    generator = gen(2)
    metric = _metric(2, 10.0)
    start = torch.tensor([[120.0, -340.0]])
    steps = (torch.randn(300, 1, 2, generator=generator) * 2).clamp(-5, 5)
    code = metric.encode(start)
    for step in steps:
        code = metric.apply_displacement(code, step)
    assert (start + steps.sum(0) - start).norm() > 3 * metric.scale  # walked beyond the decodable range
    _, drift = metric.displacement(metric.encode(start + steps.double().sum(0).float()), code)
    assert drift.norm() < 1e-4


@pytest.mark.parametrize("dim,scale", CASES)
def test_distances_are_euclidean_below_scale_symmetric_and_zero_on_identical_codes(dim, scale):
    generator = gen(20 + dim)
    metric = _metric(dim, scale)
    x = _ball(2000, dim, ARENA, generator)
    y = x + _ball(2000, dim, 0.999 * scale, generator)[: len(x)]
    a, b = metric.encode(x), metric.encode(y)
    distance = metric.pseudo_distance(a, b)
    truth = (y.double() - x.double()).norm(dim=-1)
    assert (distance.double() - truth).abs().max() < BARS[scale]
    assert torch.equal(distance, metric.pseudo_distance(b, a))
    assert torch.equal(metric.pseudo_distance(a, a), torch.zeros(len(a)))
    assert torch.allclose(metric.pseudo_distance(a, b, squared=True), distance.square(), rtol=1e-5, atol=1e-12)


def test_pseudo_distance_is_squared_mean_displacement_plus_module_variance():
    # Arbitrary (invalid) codes: modules disagree, and the variance term is what measures it.
    generator = gen(4)
    metric = _metric(2, 10.0).double()
    a, b = (torch.randn(64, metric.location_dim, generator=generator, dtype=torch.float64) for _ in range(2))
    per_module, mean = metric.displacement(a, b)
    J = metric.num_modules
    variance = (per_module - mean[:, None]).square().sum(-1).sum(-1) / (J - 1)
    assert variance.min() > 0.1
    expected = mean.square().sum(-1) + variance
    assert torch.allclose(metric.pseudo_distance(a, b, squared=True), expected, rtol=1e-9)
    assert torch.allclose(metric.displacement_variance(
        2 * math.pi * (metric._angles(b) - metric._angles(a)).flatten(-2)), variance, rtol=1e-9)


def test_cross_distance_matches_pairwise_with_batch_shapes():
    generator = gen(5)
    metric = _metric(2, 10.0)
    centre = torch.tensor([200.0, 150.0])
    x = centre + _ball(3 * 7, 2, 4.9, generator)[: 3 * 7].reshape(3, 7, 2)
    y = centre + _ball(3 * 11, 2, 4.9, generator)[: 3 * 11].reshape(3, 11, 2)
    a, b = metric.encode(x), metric.encode(y)
    cross = metric.cross_distance(a, b)  # (3, 7, 11)
    assert cross.shape == (3, 7, 11)
    assert torch.equal(cross, metric.pseudo_distance(a[:, :, None], b[:, None]))
    assert (cross.double() - torch.cdist(x.double(), y.double())).abs().max() < 1e-4
    assert metric.cross_distance(a[0], b).shape == (3, 7, 11)  # (T, L) against (B, S, L)
    assert torch.allclose(metric.cross_distance(a, b, squared=True), cross.square(), rtol=1e-5)


def test_gradients_are_finite_at_zero_distance():
    metric = _metric(2, 10.0)
    a = metric.encode(torch.tensor([[3.0, 4.0], [1.0, -2.0]])).requires_grad_()
    b = metric.encode(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    distance = metric.pseudo_distance(a, b)
    assert distance[0] == 0
    distance.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad[1].abs().sum() > 0
    leaf = a.detach().clone().requires_grad_()
    metric.cross_distance(leaf, b).sum().backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_sample_gives_valid_seeded_codes_within_scale():
    metric = _metric(3, 10.0)
    codes = metric.sample((5, 40), generator=gen(6))
    again = metric.sample((5, 40), generator=gen(6))
    assert codes.shape == (5, 40, metric.location_dim) and torch.equal(codes, again)
    pairs = codes.unflatten(-1, (metric.num_modules, 4, 2))
    assert torch.allclose(pairs.norm(dim=-1), torch.ones(()), atol=1e-6)
    per_module, mean = metric.decode(codes)
    assert mean.norm(dim=-1).max() < metric.scale
    assert (per_module - mean[..., None, :]).norm(dim=-1).max() < 1e-4  # modules agree: valid


def test_displacement_variance_vanishes_for_consistent_steps_only():
    generator = gen(7)
    metric = _metric(2, 10.0)
    step = _ball(200, 2, 9.9, generator)  # (N, 2)
    consistent = (metric.alphas[:, None] * (step @ metric.directions.T)[:, None, :]).flatten(-2)  # unwrapped
    assert metric.displacement_variance(consistent).max() < 1e-8
    noisy = (consistent + 0.3 * torch.randn(consistent.shape, generator=generator)).requires_grad_()
    loss = metric.displacement_variance(noisy)
    assert loss.shape == (len(step),) and loss.min() > 1e-6
    loss.mean().backward()
    assert torch.isfinite(noisy.grad).all() and noisy.grad.abs().sum() > 0


def test_dtype_device_and_buffers():
    metric = _metric(2, 10.0)
    assert {name for name, _ in metric.named_buffers()} == {"directions", "directions_pinv", "alphas", "phases"}
    assert torch.allclose(metric.directions.sum(0), torch.zeros(2), atol=1e-7)
    assert torch.allclose(metric.directions.norm(dim=1), torch.ones(3))
    assert metric.alphas[0] == pytest.approx(math.pi / 10.0)
    assert metric.alphas[1:] / metric.alphas[:-1] == pytest.approx(torch.full((19,), math.sqrt(2)))
    double = _metric(2, 10.0).double()
    assert double.alphas.dtype == torch.float64
    x = torch.tensor([[400.0, -250.0]], dtype=torch.float64)
    code = double.encode(x)
    assert code.dtype == torch.float64
    _, step = double.displacement(code, double.encode(x + torch.tensor([3.25, -7.5], dtype=torch.float64)))
    assert torch.allclose(step, torch.tensor([[3.25, -7.5]], dtype=torch.float64), atol=1e-9)
    half = metric.encode(torch.tensor([[1.0, 2.0]], dtype=torch.float16))  # cast to the buffers' dtype
    assert half.dtype == torch.float32
    assert torch.allclose(metric.decode(half.half())[1], torch.tensor([[1.0, 2.0]]), atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    metric = _metric(2, 10.0)
    x = _ball(300, 2, ARENA, gen(8))
    a, b = metric.encode(x), metric.encode(x.flip(0) * 0.01 + x)
    cuda = metric.to("cuda")
    on_cuda = cuda.cross_distance(a.cuda(), b.cuda()).cpu()
    assert torch.allclose(on_cuda, _metric(2, 10.0).cross_distance(a, b), atol=1e-4)


# -- the distribution ---------------------------------------------------------------------------
def _code_map(metric: FourierMetric, origin: torch.Tensor, scale: float):
    """u -> code of origin + scale * u, written out from the definition (float64)."""
    def code(u: torch.Tensor) -> torch.Tensor:
        x = origin + scale * u
        theta = metric.alphas[:, None] * (metric.directions @ x)[None, :] + metric.phases  # (J, dim+1)
        return torch.stack([theta.cos(), theta.sin()], dim=-1).flatten()
    return code


@pytest.mark.parametrize("dim", (1, 2, 3))
def test_log_prob_matches_autograd_change_of_variables(dim):
    metric = _metric(dim, 10.0, phases=_phases(20, dim + 1)).double()
    generator = gen(30 + dim)
    origin = torch.randn(dim, generator=generator, dtype=torch.float64) * 200
    for scale in (0.05, 0.7):
        code_map = _code_map(metric, origin, scale)
        dist = FourierCodeDistribution(metric, code_map(torch.zeros(dim, dtype=torch.float64)), scale)
        for u in torch.randn(4, dim, generator=generator, dtype=torch.float64):
            jac = torch.autograd.functional.jacobian(code_map, u)  # (L, dim)
            expected = (-0.5 * u.square().sum() - 0.5 * dim * math.log(2 * math.pi)
                        - 0.5 * torch.logdet(jac.T @ jac))
            assert dist.log_prob(code_map(u)).item() == pytest.approx(expected.item(), abs=1e-3)


@pytest.mark.parametrize("dim", (1, 2, 3))
def test_samples_have_mean_squared_displacement_dim_scale_squared(dim):
    metric = _metric(dim, 10.0)
    reference = metric.encode(torch.tensor([[150.0, -80.0, 30.0][:dim], [-400.0, 10.0, 5.0][:dim]]))
    eps = torch.tensor([0.1, 1.5])
    dist = FourierCodeDistribution(metric, reference, eps)
    count = 4000
    samples = dist.sample((count,), generator=gen(40 + dim))  # (count, 2, L)
    _, delta = metric.displacement(reference, samples)
    ratio = delta.square().sum(-1) / eps.square()  # chi-square with dim degrees of freedom
    tolerance = 4 * math.sqrt(2 * dim / count)
    assert torch.allclose(ratio.mean(0), torch.full((2,), float(dim)), atol=tolerance)
    assert torch.allclose(delta.mean(0) / eps[:, None], torch.zeros(2, dim), atol=4 / math.sqrt(count))


def test_rsample_gradients_reach_reference_and_scale():
    metric = _metric(2, 10.0)
    reference = metric.encode(torch.tensor([[30.0, 40.0]])).requires_grad_()
    scale = torch.tensor(0.5, requires_grad=True)
    dist = FourierCodeDistribution(metric, reference, scale)
    sample = dist.rsample((16,), generator=gen(9))
    target = metric.encode(torch.tensor([[31.0, 39.0]]))
    (metric.pseudo_distance(sample, target).sum() + dist.log_prob(sample.detach()).sum()).backward()
    for grad in (reference.grad, scale.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_distribution_is_seeded_and_warning_free():
    metric = _metric(2, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = FourierCodeDistribution(metric, metric.sample((3,), gen(0)), 0.2)
        one = dist.sample((2,), generator=gen(1))
        two = dist.sample((2,), generator=gen(1))
        assert one.shape == (2, 3, metric.location_dim) and torch.equal(one, two)
        assert dist.log_prob(one).shape == (2, 3)
    assert dist.arg_constraints.keys() == {"reference", "scale"}


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(location_dim=100, dim=2), r"location_dim: expected a positive multiple of 2\*\(dim\+1\)=6"),
    (dict(location_dim=0, dim=1), "location_dim"),
    (dict(location_dim=24, dim=4), "dim: expected one of"),
    (dict(location_dim=24, dim=3, scale=0.0), "scale: expected > 0"),
    (dict(location_dim=24, dim=3, scale=-2.0), "scale"),
    (dict(location_dim=24, dim=3, ratio=0.0), "ratio: expected >= 1"),
    (dict(location_dim=24, dim=3, ratio=-1.5), "ratio"),
    (dict(location_dim=24, dim=3, phases=torch.zeros(3, 3)), r"phases: expected shape \(3,\) or \(3, 4\)"),
])
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FourierMetric(**kwargs)


def test_bad_inputs_name_the_argument():
    metric = _metric(2, 10.0)
    code = metric.sample((4,))
    with pytest.raises(ValueError, match=r"x: expected last dimension dim=2, got shape \(4, 3\)"):
        metric.encode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"code: expected last dimension location_dim=120"):
        metric.decode(code[:, :60])
    with pytest.raises(ValueError, match="code_to: expected last dimension location_dim=120"):
        metric.displacement(code, code[:, :-1])
    with pytest.raises(ValueError, match="b: expected last dimension location_dim=120"):
        metric.pseudo_distance(code, torch.zeros(4, 12))
    with pytest.raises(ValueError, match=r"a: expected shape \(\.\.\., N, 120\)"):
        metric.cross_distance(code[0], code)
    with pytest.raises(ValueError, match="delta: expected last dimension dim=2"):
        metric.apply_displacement(code, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"delta_thetas: expected last dimension J\*\(dim\+1\)=60"):
        metric.displacement_variance(torch.zeros(4, 120))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        metric.encode(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reference: expected last dimension location_dim=120"):
        FourierCodeDistribution(metric, torch.zeros(3, 7), 1.0)
    with pytest.raises(ValueError, match="scale"):
        FourierCodeDistribution(metric, code, -1.0)


# -- random sources -----------------------------------------------------------------------------
class _ForeignGenerator(torch.Generator):
    """A CPU generator that claims to live on a CUDA device, to test the device rule without one."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_generator_none_draws_fresh_entropy_and_leaves_the_global_rng_alone():
    metric = _metric(2, 10.0)
    dist = FourierCodeDistribution(metric, metric.sample((3,), gen(0)), 0.2)
    before = torch.get_rng_state()
    one, two = metric.sample((4,)), metric.sample((4,), generator=None)
    draws = dist.rsample((2,)), dist.sample((2,), generator=None)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(one, two) and not torch.equal(*draws)


def test_generator_must_be_a_cpu_generator():
    metric = _metric(2, 10.0)
    dist = FourierCodeDistribution(metric, metric.sample((3,), gen(0)), 0.2)
    for draw in (metric.sample, dist.rsample, dist.sample):
        with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
            draw((2,), generator=_ForeignGenerator())
        with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
            draw((2,), generator=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_with_a_cpu_generator_and_rejects_a_cuda_one():
    metric, cuda = _metric(2, 10.0), _metric(2, 10.0).to("cuda")
    on_cuda = cuda.sample((50,), generator=gen(3))
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), metric.sample((50,), generator=gen(3)), atol=1e-4)
    dist = FourierCodeDistribution(cuda, on_cuda, 0.2)
    assert dist.rsample((2,), generator=gen(4)).device.type == "cuda"
    for draw in (cuda.sample, dist.rsample):
        with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator"):
            draw((2,), generator=torch.Generator("cuda"))


# -- the sampler's limit, and codes log_prob cannot place ---------------------------------------
def _one_dim_log_prob(metric: FourierMetric, reference: torch.Tensor, scale: float, delta: torch.Tensor):
    """Closed form in one dimension: k = (+1, -1), so J^T J = sum_ji alpha_j^2 rho_ji^2 (float64)."""
    rho = reference.double().unflatten(-1, (metric.num_modules, 2, 2)).norm(dim=-1)  # (J, 2)
    gram = (metric.alphas.double()[:, None].square() * rho.square()).sum()
    return (-0.5 * (delta.double() / scale).square().sum(-1) - 0.5 * math.log(2 * math.pi) - math.log(scale)
            - 0.5 * gram.log())


def test_distribution_rejects_a_scale_whose_steps_would_wrap():
    # Sampler scale 5 on metric scale 10: 11.8% of the steps pass metric.scale along some direction,
    # wrap, and log_prob read them as nearby codes (e.g. -12.4 where the exact value is -8640).
    metric = _metric(2, 10.0)
    reference = metric.encode(torch.tensor([[30.0, 40.0], [-100.0, 5.0]]))
    bound = r"scale: expected <= metric.scale / 6 = 1\.66667 .*got 5"
    with pytest.raises(ValueError, match=bound):
        FourierCodeDistribution(metric, reference, 5.0)
    with pytest.raises(ValueError, match=bound):
        FourierCodeDistribution(metric, reference, torch.tensor([0.1, 5.0]))
    FourierCodeDistribution(metric, reference, 10.0 / 6)  # the bound itself is allowed
    big = _metric(2, 1000.0)
    FourierCodeDistribution(big, big.encode(torch.zeros(2)), 150.0)  # relative to the metric's scale


def test_log_prob_is_minus_inf_beyond_the_decodable_range_and_off_the_manifold():
    metric = _metric(2, 10.0, phases=_phases(20, 3)).double()
    origin = torch.tensor([120.0, -75.0], dtype=torch.float64)
    dist = FourierCodeDistribution(metric, metric.encode(origin), 1.5)
    near = metric.encode(origin + torch.tensor([2.0, -1.0], dtype=torch.float64))
    far = metric.encode(origin + torch.tensor([25.0, 8.0], dtype=torch.float64))  # beyond metric.scale
    short = 0.5 * near  # pair norms 0.5: off the manifold of codes
    torus = near.unflatten(-1, (20, 3, 2))
    angles = torch.atan2(torus[..., 1], torus[..., 0]) + 0.3 * torch.randn(20, 3, generator=gen(50),
                                                                            dtype=torch.float64)
    scrambled = torch.stack([angles.cos(), angles.sin()], dim=-1).flatten()  # unit pairs, phases of no position
    log_prob = dist.log_prob(torch.stack([near, far, short, scrambled]))
    assert torch.isfinite(log_prob[0])
    assert log_prob[1:].tolist() == [-math.inf] * 3


def test_log_prob_matches_a_closed_form_on_samples_at_the_bound():
    # dim 1, a reference with shortened pairs (a merged code): every sample at the largest allowed
    # scale is placed, and its density is the closed form at the step it was drawn from.
    metric = _metric(1, 10.0, location_dim=4 * 6, phases=_phases(6, 2))
    scale = 10.0 / 6
    reference = metric.encode(torch.tensor([[-37.0]])) * torch.linspace(0.6, 1.0, 24)
    dist = FourierCodeDistribution(metric, reference, scale)
    samples = dist.sample((20000,), generator=gen(51))  # (20000, 1, 24)
    u = torch.randn(20000, 1, 1, generator=gen(51))  # the same draw
    log_prob = dist.log_prob(samples)
    assert torch.isfinite(log_prob).all()
    expected = _one_dim_log_prob(metric, reference[0], scale, scale * u)
    assert (log_prob.double() - expected).abs().max() < 1e-3


@pytest.mark.parametrize("dim", (2, 3))
def test_log_prob_of_a_shortened_reference_matches_autograd(dim):
    metric = _metric(dim, 10.0, location_dim=4 * 2 * (dim + 1)).double()
    origin = torch.randn(dim, generator=gen(52), dtype=torch.float64) * 50
    rho = torch.linspace(0.5, 1.0, metric.location_dim // 2, dtype=torch.float64).repeat_interleave(2)
    plain = _code_map(metric, origin, 1.0)
    dist = FourierCodeDistribution(metric, plain(torch.zeros(dim, dtype=torch.float64)) * rho, 1.0)
    for u in torch.randn(4, dim, generator=gen(53), dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: plain(v) * rho, u)  # (L, dim)
        expected = -0.5 * u.square().sum() - 0.5 * dim * math.log(2 * math.pi) - 0.5 * torch.logdet(jac.T @ jac)
        assert dist.log_prob(plain(u) * rho).item() == pytest.approx(expected.item(), abs=1e-6)


# -- non-finite input, frequencies, loading, dtypes ---------------------------------------------
def test_non_finite_inputs_are_rejected_naming_the_argument():
    metric = _metric(2, 10.0)
    code = metric.sample((4,), generator=gen(54))
    x = torch.zeros(4, 2)
    bad_code, bad_x = code.clone(), x.clone()
    bad_code[1, 7], bad_x[2, 0] = math.nan, math.inf  # pseudo_distance(code, bad_code) said 0.0: a match
    calls = [
        ("x", lambda: metric.encode(bad_x)),
        ("code", lambda: metric.decode(bad_code)),
        ("code_from", lambda: metric.displacement(bad_code, code)),
        ("code_to", lambda: metric.displacement(code, bad_code)),
        ("code", lambda: metric.apply_displacement(bad_code, x)),
        ("delta", lambda: metric.apply_displacement(code, bad_x)),
        ("a", lambda: metric.pseudo_distance(bad_code, code)),
        ("b", lambda: metric.pseudo_distance(code, bad_code)),
        ("a", lambda: metric.cross_distance(bad_code, code)),
        ("b", lambda: metric.cross_distance(code, bad_code)),
        ("delta_thetas", lambda: metric.displacement_variance(torch.zeros(60).index_fill(0, torch.tensor([3]),
                                                                                         -math.inf))),
        ("phases", lambda: _metric(2, 10.0, phases=torch.zeros(20).index_fill(0, torch.tensor([5]), math.nan))),
        ("reference", lambda: FourierCodeDistribution(metric, bad_code, 0.5)),
        ("scale", lambda: FourierCodeDistribution(metric, code, torch.tensor([0.5, math.nan, 0.5, 0.5]))),
        ("value", lambda: FourierCodeDistribution(metric, code, 0.5).log_prob(bad_code)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got 1 non-finite"):
            call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=math.inf), "ratio: expected a finite number"),
    (dict(ratio=1e30), r"ratio: expected frequencies .*<= 3\.40282e\+38"),
    (dict(location_dim=6 * 200, ratio=2.0), r"ratio: expected frequencies .*J=200 modules"),
    (dict(scale=1e-40), r"scale: expected frequencies"),
    (dict(scale=3e38), r"scale: expected frequencies .*>= 1\.17549e-38"),
])
def test_frequencies_must_fit_the_buffers_dtype(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _metric(2, **{"scale": 10.0, **kwargs})


def test_load_state_dict_restores_scale_and_ratio():
    metric, other = _metric(2, 10.0), _metric(2, 1000.0, ratio=1.5, phases=_phases(20, 3))
    metric.load_state_dict(other.state_dict())
    assert (metric.scale, metric.ratio) == (1000.0, 1.5)
    assert metric.extra_repr() == other.extra_repr()
    assert torch.equal(metric.alphas, other.alphas) and torch.equal(metric.phases, other.phases)
    assert metric.sample(2000, generator=gen(55)).shape == (2000, 120)
    assert metric.decode(metric.sample(2000, generator=gen(55)))[1].norm(dim=-1).max() > 100  # radius 1000
    # A state without the extra entry (the buffers alone): scale and ratio read from the frequencies.
    buffers = {k: v for k, v in _metric(2, 250.0, ratio=1.25).state_dict().items() if k != "_extra_state"}
    metric.load_state_dict(buffers)
    assert metric.scale == pytest.approx(250.0, rel=1e-6) and metric.ratio == pytest.approx(1.25, rel=1e-6)
    # Other shapes, and buffers that disagree with the recorded scale, fail naming the key.
    with pytest.raises(ValueError, match=r"state_dict: 'alphas' must have shape \(20,\) .*got shape \(10,\)"):
        metric.load_state_dict(_metric(2, 10.0, location_dim=60).state_dict())
    with pytest.raises(ValueError, match=r"state_dict: 'directions' must have shape \(3, 2\)"):
        metric.load_state_dict(_metric(3, 10.0, location_dim=160).state_dict())
    state = _metric(2, 10.0).state_dict()
    state["alphas"] = state["alphas"] * 2
    with pytest.raises(ValueError, match=r"state_dict: 'alphas' .*scale=10\.0, ratio=1\.41421"):
        metric.load_state_dict(state)
    assert metric.scale == pytest.approx(250.0, rel=1e-6)  # a failed load leaves the attributes alone


def test_inputs_are_cast_to_the_buffers_dtype():
    metric, double = _metric(2, 10.0), _metric(2, 10.0).double()
    x64 = torch.tensor([[400.0, -250.0], [3.0, 4.0]], dtype=torch.float64)
    code = metric.encode(x64)
    assert code.dtype == torch.float32 and torch.equal(code, metric.encode(x64.float()))
    code64 = code.double()
    for result in (metric.decode(code64)[1], metric.displacement(code64, code)[1],
                   metric.apply_displacement(code, x64), metric.pseudo_distance(code64, code64),
                   metric.cross_distance(code64, code64), metric.displacement_variance(torch.zeros(2, 60).double())):
        assert result.dtype == torch.float32
    assert double.encode(x64.float()).dtype == torch.float64
    assert double.pseudo_distance(code, code).dtype == torch.float64
    dist = FourierCodeDistribution(metric, code64, torch.tensor(0.5, dtype=torch.float64))
    assert dist.sample((3,), generator=gen(56)).dtype == torch.float32
    assert dist.log_prob(code64).dtype == torch.float32


def test_a_converted_metric_equals_one_built_in_its_dtype_and_loads_its_own_state():
    converted = FourierMetric(120, scale=10.0).double()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        built = FourierMetric(120, scale=10.0)
    finally:
        torch.set_default_dtype(previous)
    for name in ("alphas", "directions", "directions_pinv"):
        assert torch.equal(getattr(converted, name), getattr(built, name)), name
    converted.load_state_dict(converted.state_dict())  # rejected before: float32-rounded frequencies
    assert converted.float().alphas.dtype == torch.float32


def test_a_finite_input_that_overflows_the_metric_dtype_is_rejected_not_nan():
    metric = FourierMetric(24)
    with pytest.raises(ValueError, match="^x: expected finite values"):
        metric.encode(torch.tensor([[1e300, 0.0]], dtype=torch.float64))


def test_the_chain_follows_a_load_of_other_frequencies():
    metric, other = _metric(2, 10.0), _metric(2, 1000.0, ratio=1.5)
    here = torch.tensor([[300.0, -200.0], [-450.0, 10.0]])
    metric.decode(metric.encode(torch.zeros(1, 2)))  # the chain's matrices are now kept for scale 10
    metric.load_state_dict(other.state_dict())
    assert torch.equal(metric.decode(other.encode(here))[1], other.decode(other.encode(here))[1])
    assert torch.allclose(metric.decode(metric.encode(here))[1], here, atol=1e-2)


def test_the_chain_filled_in_inference_mode_still_serves_autograd():
    metric = _metric(2, 10.0)
    code = metric.encode(torch.tensor([[3.0, -2.0]]))
    with torch.inference_mode():
        metric.decode(code)
    delta = torch.tensor([[1.0, 2.0]], requires_grad=True)
    metric.displacement(code, metric.apply_displacement(code, delta))[1].sum().backward()
    assert torch.allclose(delta.grad, torch.ones(1, 2))
