"""PseudoMetric: distances, the Tikhonov left inverse, the low-rank Gaussian, its cache, errors."""
import math
import warnings

import pytest
import torch

from treeworld.agents import PseudoMetric
from treeworld.agents.pseudometric import LowRankGaussian

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

SHAPES = [(64, 4), (256, 32), (384, 16), (40, 39)]


def _metric(N=64, M=8, seed=0, **kwargs) -> PseudoMetric:
    return PseudoMetric(N, M, generator=gen(seed), **kwargs)


def _chi_mean(M: int) -> float:
    return math.sqrt(2) * math.exp(math.lgamma((M + 1) / 2) - math.lgamma(M / 2))


def test_pseudo_distance_is_embedded_norm_and_ignores_the_null_space():
    metric = _metric(32, 5)
    generator = gen(1)
    x, y = torch.randn(2, 7, 32, generator=generator)
    E = metric.embedding.detach()
    expected = ((x - y) @ E.T).norm(dim=-1)
    assert torch.allclose(metric.pseudo_distance(x, y), expected, rtol=1e-5)
    assert torch.allclose(metric.pseudo_distance(x, y, scale=2.5), expected / 2.5, rtol=1e-5)
    assert torch.allclose(metric.pseudo_distance(x, y, squared=True, scale=torch.full((7,), 0.5)),
                          (expected / 0.5).square(), rtol=1e-5)
    assert torch.equal(metric.pseudo_distance(x, y), metric.pseudo_distance(y, x))
    null = torch.linalg.svd(E, full_matrices=True).Vh[5:]  # (27, 32): directions E cannot see
    far = x + 10 * torch.randn(7, 27, generator=generator) @ null
    assert (x - far).norm(dim=-1).min() > 10
    assert metric.pseudo_distance(x, far).max() < 1e-4


def test_cross_distance_matches_pairwise_and_is_zero_on_identical_rows():
    metric = _metric(20, 6)
    generator = gen(2)
    x, y = torch.randn(3, 5, 20, generator=generator), torch.randn(3, 9, 20, generator=generator)
    cross = metric.cross_distance(x, y)
    assert cross.shape == (3, 5, 9)
    assert torch.allclose(cross, metric.pseudo_distance(x[:, :, None], y[:, None]), rtol=1e-5, atol=1e-6)
    assert torch.allclose(metric.cross_distance(x, y, squared=True, scale=3.0), (cross / 3).square(), rtol=1e-5)
    assert torch.equal(metric.cross_distance(x, x).diagonal(dim1=-2, dim2=-1), torch.zeros(3, 5))
    leaf = x.clone().requires_grad_()
    metric.cross_distance(leaf, x).sum().backward()
    assert torch.isfinite(leaf.grad).all()


def test_left_inverse_is_the_tikhonov_formula_and_nearly_inverts_e():
    metric = _metric(128, 16, tau=1e-3)
    E = metric.embedding.detach().double()
    U, s, Vh = torch.linalg.svd(E, full_matrices=False)
    expected = Vh.T @ torch.diag(s / (s.square() + 1e-3)) @ U.T  # (N, M)
    left = metric.left_inverse()
    assert left.shape == (128, 16)
    assert torch.allclose(left.double(), expected, atol=1e-6)
    bound = 1e-3 / s.min().square().item()  # E E^+ = I up to tau / s^2
    assert (E @ left.double() - torch.eye(16, dtype=torch.float64)).abs().max() < 1.01 * bound


@pytest.mark.parametrize("factor,rank", [(0.0, 6), (1.0, 1), (1e6, 2), (1e12, 1), (1e-9, 6)])
def test_left_inverse_stays_finite_and_right_for_any_e(factor, rank):
    metric = _metric(48, 6)
    with torch.no_grad():
        base = metric.embedding[:rank].repeat(6, 1)[:6].clone()  # rank `rank`
        metric.embedding.copy_(factor * base)
    left = metric.left_inverse()
    assert torch.isfinite(left).all()
    assert left.abs().max() <= (1 + 1e-5) / (2 * math.sqrt(metric.tau))  # s / (s^2 + tau) <= 1 / (2 sqrt(tau))
    U, s, Vh = torch.linalg.svd(base.double(), full_matrices=False)  # the exact rank, scaled by hand
    U, s, Vh = U[:, :rank], factor * s[:rank], Vh[:rank]
    expected = (Vh.T * (s / (s.square() + metric.tau))) @ U.T
    assert torch.allclose(left.double(), expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item() + 1e-30)


@pytest.mark.parametrize("N,M", SHAPES)
def test_samples_have_mean_pseudo_distance_scale(N, M):
    metric = _metric(N, M, seed=N + M)
    reference = torch.randn(N, generator=gen(3))
    s_min = torch.linalg.svdvals(metric.embedding.detach()).min().item()
    shrink = s_min**2 / (s_min**2 + metric.tau)  # Tikhonov: E E^+ shrinks directions by >= this
    for eps in (0.1, 3.0):
        samples = metric.distribution(reference, eps).sample((3000,), generator=gen(4))
        ratio = metric.pseudo_distance(samples, reference) / eps
        error = 4 * ratio.std().item() / math.sqrt(len(ratio))
        assert shrink - error < ratio.mean().item() < 1 + error


def test_log_prob_matches_an_independent_density():
    N, M, eps = 24, 5, 0.3
    metric = _metric(N, M, tau=1e-2).double()
    E = metric.embedding.detach()
    reference = torch.randn(N, dtype=torch.float64, generator=gen(5))
    dist = metric.distribution(reference, eps)
    z = dist.sample((6,), generator=gen(6))
    # The seed's (N, N) form of the left inverse; coordinates in an orthonormal basis of its range.
    left = torch.linalg.solve(E.T @ E + 1e-2 * torch.eye(N, dtype=torch.float64), E.T)  # (N, M)
    basis, _ = torch.linalg.qr(left)  # (N, M)
    width = eps / _chi_mean(M)
    covariance = width**2 * basis.T @ left @ left.T @ basis  # (M, M)
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(M, dtype=torch.float64), covariance)
    assert torch.allclose((z - reference) - (z - reference) @ basis @ basis.T, torch.zeros(N, dtype=torch.float64),
                          atol=1e-10)  # samples lie on the subspace
    assert torch.allclose(dist.log_prob(z), gaussian.log_prob((z - reference) @ basis), atol=1e-6)


def test_log_prob_of_a_sample_matches_its_normal_draw():
    metric = _metric(96, 12)
    reference = torch.randn(4, 96, generator=gen(7))
    eps = torch.tensor([0.05, 0.2, 1.0, 4.0])
    with torch.no_grad():
        dist = metric.distribution(reference, eps)
        z = dist.sample((5,), generator=gen(8))  # (5, 4, 96)
        v = torch.randn(5, 4, 12, generator=gen(8))  # the same draw
        E = metric.embedding.double()
        s = torch.linalg.svdvals(E)
        half_logdet = (s.log() - (s.square() + metric.tau).log()).sum()
        width = eps.double() / _chi_mean(12)
        expected = -0.5 * v.double().square().sum(-1) - 6 * math.log(2 * math.pi) - 12 * width.log() - half_logdet
        assert torch.allclose(dist.log_prob(z).double(), expected, rtol=1e-4)


def test_log_determinant_is_cached_and_recomputed_when_e_changes():
    metric = _metric(40, 6)
    reference = torch.zeros(40)
    point = torch.randn(40, generator=gen(9)) * 0.01
    with torch.no_grad():
        assert metric._factors() is metric._factors()
        before = metric.distribution(reference, 1.0).log_prob(point)
        metric.embedding.mul_(2.0)  # in-place, as an optimizer step
        changed = metric.distribution(reference, 1.0).log_prob(point)
        metric.embedding.data.mul_(0.5)  # behind autograd's back: the cache still notices
        restored = metric.distribution(reference, 1.0).log_prob(point)
    fresh = PseudoMetric(40, 6)
    with torch.no_grad():
        fresh.embedding.copy_(metric.embedding * 2.0)
        assert torch.allclose(changed, fresh.distribution(reference, 1.0).log_prob(point))
    assert not torch.allclose(before, changed) and torch.allclose(before, restored)


def test_gradients_reach_e_reference_and_scale():
    metric = _metric(30, 4)
    reference = torch.randn(2, 30, generator=gen(10)).requires_grad_()
    scale = torch.tensor([0.5, 2.0], requires_grad=True)
    dist = metric.distribution(reference, scale)
    z = dist.rsample((8,), generator=gen(11))
    (metric.pseudo_distance(z, torch.zeros(30)).sum() + dist.log_prob(z.detach()).sum()).backward()
    for grad in (metric.embedding.grad, reference.grad, scale.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_seeded_construction_and_sampling_without_warnings():
    assert torch.equal(_metric(16, 3, seed=12).embedding, _metric(16, 3, seed=12).embedding)
    metric = _metric(16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = metric.distribution(torch.zeros(5, 16), 0.5)
        assert isinstance(dist, LowRankGaussian) and dist.batch_shape == (5,) and dist.event_shape == (16,)
        one, two = (dist.sample((2,), generator=gen(13)) for _ in range(2))
        assert one.shape == (2, 5, 16) and torch.equal(one, two)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="vector_dim: expected >= 1, got 0"):
        PseudoMetric(0, 1)
    with pytest.raises(ValueError, match="metric_rank: expected <= vector_dim=8, got 9"):
        PseudoMetric(8, 9)
    with pytest.raises(TypeError, match="metric_rank: expected an int"):
        PseudoMetric(8, 2.0)
    with pytest.raises(ValueError, match="tau: expected > 0"):
        PseudoMetric(8, 2, tau=0.0)
    metric = _metric(8, 2)
    with pytest.raises(ValueError, match=r"y: expected last dimension vector_dim=8, got shape \(3, 7\)"):
        metric.pseudo_distance(torch.zeros(3, 8), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="x: expected shape"):
        metric.cross_distance(torch.zeros(8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="scale: expected > 0"):
        metric.pseudo_distance(torch.zeros(8), torch.ones(8), scale=0.0)
    with pytest.raises(ValueError, match="scale: expected values > 0"):
        metric.cross_distance(torch.zeros(2, 8), torch.ones(3, 8), scale=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="reference: expected last dimension vector_dim=8"):
        metric.distribution(torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="scale"):
        metric.distribution(torch.zeros(8), -0.5)


# -- random sources -----------------------------------------------------------------------------
class _ForeignGenerator(torch.Generator):
    """A CPU generator that claims to live on a CUDA device, to test the device rule without one."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_generator_none_draws_fresh_entropy_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    metric, other = PseudoMetric(16, 3), PseudoMetric(16, 3, generator=None)
    dist = metric.distribution(torch.zeros(5, 16), 0.5)
    draws = dist.rsample((2,)), dist.sample((2,), generator=None)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(metric.embedding, other.embedding) and not torch.equal(*draws)


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
        PseudoMetric(16, 3, generator=_ForeignGenerator())
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        PseudoMetric(16, 3, generator=7)
    dist = _metric(16, 3).distribution(torch.zeros(5, 16), 0.5)
    for draw in (dist.rsample, dist.sample):
        with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
            draw((2,), generator=_ForeignGenerator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_with_a_cpu_generator_and_rejects_a_cuda_one():
    metric = _metric(16, 3)
    reference = torch.randn(5, 16, generator=gen(20))
    on_cpu = metric.distribution(reference, 0.5).rsample((4,), generator=gen(21))
    dist = metric.to("cuda").distribution(reference.cuda(), 0.5)
    on_cuda = dist.rsample((4,), generator=gen(21))
    assert on_cuda.device.type == "cuda" and torch.allclose(on_cuda.cpu(), on_cpu, atol=1e-5)
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator"):
        dist.rsample((4,), generator=torch.Generator("cuda"))
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator"):
        PseudoMetric(16, 3, generator=torch.Generator("cuda"))


# -- non-finite input, dtypes -------------------------------------------------------------------
def test_non_finite_inputs_are_rejected_naming_the_argument():
    metric = _metric(8, 2)
    x = torch.randn(3, 8, generator=gen(30))
    bad = x.clone()
    bad[1, 2] = math.nan
    dist = metric.distribution(x, 0.5)
    calls = [("x", lambda: metric.pseudo_distance(bad, x)), ("y", lambda: metric.pseudo_distance(x, bad)),
             ("x", lambda: metric.cross_distance(bad, x)), ("y", lambda: metric.cross_distance(x, bad)),
             ("scale", lambda: metric.pseudo_distance(x, x, scale=torch.tensor([1.0, math.inf, 1.0]))),
             ("scale", lambda: metric.cross_distance(x, x, scale=torch.tensor(math.nan))),
             ("reference", lambda: metric.distribution(bad, 0.5)),
             ("scale", lambda: metric.distribution(x, torch.tensor([0.5, math.inf, 0.5]))),
             ("value", lambda: dist.log_prob(bad))]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got 1 non-finite"):
            call()
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        metric.pseudo_distance(x, x, scale=math.inf)


def test_inputs_are_cast_to_the_embedding_dtype():
    metric = _metric(8, 2)
    x, y = torch.randn(2, 3, 8, generator=gen(31), dtype=torch.float64)
    distance = metric.pseudo_distance(x, y)  # failed inside torch: double != float
    assert distance.dtype == torch.float32 and torch.equal(distance, metric.pseudo_distance(x.float(), y.float()))
    assert metric.cross_distance(x, y, scale=torch.tensor(2.0, dtype=torch.float64)).dtype == torch.float32
    dist = metric.distribution(x, 0.5)
    assert dist.sample((2,), generator=gen(32)).dtype == torch.float32 and dist.log_prob(y).dtype == torch.float32
    double = _metric(8, 2).double()
    assert double.pseudo_distance(x.float(), y.float()).dtype == torch.float64


def test_embed_is_the_product_with_e_and_skips_only_an_identity():
    metric = _metric(40, 6)
    x = torch.randn(3, 5, 40, generator=gen(31))
    assert torch.allclose(metric.embed(x), x @ metric.embedding.detach().T)
    square = PseudoMetric(40, 40)
    with torch.no_grad():
        square.embedding.copy_(torch.eye(40))
    same = square.embed(x)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()  # a new tensor, never the input
    with torch.no_grad():
        square.embedding.mul_(2.0)  # in place, as an optimizer step: the identity test is redone
    assert torch.equal(square.embed(x), 2.0 * x)
    x.requires_grad_(True)
    assert not square.embed(x).requires_grad
