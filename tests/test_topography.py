import math

import numpy as np
import pytest
import torch

from treeworld.agents.topography import Topography, grid_coordinates

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def square_in(dim: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n points of the unit square embedded isometrically (x10, offset) in dim dimensions."""
    g = gen(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g))  # (dim, 2), orthonormal columns
    uv = torch.rand(n, 2, generator=g)
    return 10.0 * uv @ basis.T + 3.0, basis, uv


# ------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("grid, degree", [("rectangular", 8), ("hexagonal", 6)])
def test_interior_units_have_the_expected_neighbors(grid, degree):
    som = Topography(4, 5, 6, grid=grid)
    a, b = som.neighbor_pairs().unbind(-1)
    counts = torch.bincount(a, minlength=som.num_units).reshape(5, 6)
    assert (counts[1:-1, 1:-1] == degree).all()
    gaps = (som.coords[a] - som.coords[b]).norm(dim=-1)
    assert gaps.max() <= som.neighbor_radius + 1e-5
    assert set(map(tuple, torch.stack([a, b], 1).tolist())) == set(map(tuple, torch.stack([b, a], 1).tolist()))


def test_hexagonal_neighbors_are_all_at_unit_distance():
    coords = grid_coordinates(4, 4, "hexagonal")
    som = Topography(3, 4, 4, grid="hexagonal")
    a, b = som.neighbor_pairs().unbind(-1)
    assert torch.allclose((coords[a] - coords[b]).norm(dim=-1), torch.ones(len(a)), atol=1e-6)


def test_coordinates_are_a_buffer_that_follows_the_module():
    som = Topography(3, 2, 4)
    assert "coords" in dict(som.named_buffers())
    assert [name for name, _ in som.named_parameters()] == ["weight"]
    moved = som.to("meta")
    assert moved.coords.device.type == "meta" and moved.weight.device.type == "meta"
    assert Topography(3, 2, 4).double().coords.dtype == torch.float64


# ------------------------------------------------------------------------- forward and loss
def test_forward_returns_grid_and_feature_distances():
    som = Topography(5, 3, 4, generator=gen(0))
    z = torch.randn(2, 7, 5, generator=gen(1))
    grid_sq, feature_sq = som(z)
    assert grid_sq.shape == feature_sq.shape == (2, 7, 12)
    expected = torch.cdist(z.reshape(-1, 5), som.weight.detach()).square().reshape(2, 7, 12)
    assert torch.allclose(feature_sq, expected, atol=1e-4)
    best = expected.argmin(-1)
    assert torch.equal(som.bmu(z), best)
    assert (grid_sq.gather(-1, best[..., None]) == 0).all()
    rc = som.coords[best]  # (2, 7, 2)
    assert torch.allclose(grid_sq, (rc[..., None, :] - som.coords).square().sum(-1))


def test_loss_gradient_is_the_kohonen_update():
    som = Topography(6, 4, 4, generator=gen(0))
    z = torch.randn(32, 6, generator=gen(1))
    sigma = 1.3
    som.loss(z, sigma).backward()
    w = som.weight.detach()
    best = torch.cdist(z, w).argmin(-1)
    h = torch.exp(-(som.coords[best][:, None] - som.coords).square().sum(-1) / (2 * sigma**2))  # (N, U)
    expected = -2.0 * (h[..., None] * (z[:, None] - w)).sum(0) / len(z)  # (U, D)
    assert torch.allclose(som.weight.grad, expected, atol=1e-4)


def test_gradient_training_lowers_the_loss_and_moves_only_the_weights():
    som = Topography(8, 5, 5, generator=gen(0))
    coords = som.coords.clone()
    z = torch.randn(256, 8, generator=gen(1)) + 2.0
    z_before = z.clone()
    z.requires_grad_(True)
    optimizer = torch.optim.SGD(som.parameters(), lr=0.01, momentum=0.9)
    weight_before = som.weight.detach().clone()
    first = som.loss(z, 1.5).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss = som.loss(z, 1.5)
        loss.backward()
        optimizer.step()
    assert som.loss(z, 1.5).item() < 0.5 * first
    assert not torch.equal(som.weight.detach(), weight_before)
    assert torch.equal(som.coords, coords) and torch.equal(z.detach(), z_before)
    assert z.grad is not None and z.grad.abs().sum() > 0  # an encoder upstream would be trained too


def test_normalized_map_is_scale_invariant():
    som = Topography(5, 3, 3, normalize=True, generator=gen(0))
    z = torch.randn(20, 5, generator=gen(1))
    assert torch.allclose(som.weight.norm(dim=1), torch.ones(9))
    assert torch.equal(som.bmu(z), som.bmu(7.0 * z))
    som.fit(z, 2, 4, sigma=(1.5, 0.5), generator=gen(2))
    assert torch.allclose(som.weight.norm(dim=1), torch.ones(9), atol=1e-5)


# ---------------------------------------------------------------------------------- fitting
def test_batch_of_one_is_the_online_kohonen_rule():
    som = Topography(4, 3, 3, generator=gen(0))
    w = som.weight.detach().clone()
    z = torch.randn(1, 4, generator=gen(1))
    som.fit(z, 1, 1, sigma=(0.8, 0.8), lr=(0.3, 0.3))
    best = torch.cdist(z, w).argmin()
    h = torch.exp(-(som.coords[best] - som.coords).square().sum(-1) / (2 * 0.8**2))
    assert torch.allclose(som.weight.detach(), w + 0.3 * h[:, None] * (z - w), atol=1e-6)


def test_full_batch_with_unit_rate_is_the_classic_batch_som():
    som = Topography(3, 3, 3, generator=gen(0))
    w = som.weight.detach().clone()
    z = torch.randn(40, 3, generator=gen(1))
    som.fit(z, 1, 40, sigma=(2.0, 2.0), lr=(1.0, 1.0))
    best = torch.cdist(z, w).argmin(-1)
    h = torch.exp(-(som.coords[best][:, None] - som.coords).square().sum(-1) / 8.0)  # (N, U)
    assert (h.sum(0) >= 1).all()  # every unit has at least one input's worth of mass
    assert torch.allclose(som.weight.detach(), (h.T @ z) / h.sum(0)[:, None], atol=1e-5)


@pytest.mark.parametrize("grid", ["rectangular", "hexagonal"])
def test_map_fit_on_an_embedded_square_unfolds(grid):
    data, basis, _ = square_in(64, 3000, seed=0)
    som = Topography(64, 10, 10, grid=grid, generator=gen(1))
    records = []
    som.fit(data, 8, 128, sigma=(5.0, 0.7), lr=(0.5, 0.02), generator=gen(2), callback=records.append)
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["quantization_error"] < records[0]["quantization_error"]
    assert som.topographic_error(data) < 0.05
    # Unit weights, read back in square coordinates: adjacent units sit close (the ideal spacing
    # is 1/9 of the side), and grid distance tracks distance in the square.
    position = (som.weight.detach() - 3.0) @ basis / 10.0  # (U, 2)
    a, b = som.neighbor_pairs().unbind(-1)
    assert (position[a] - position[b]).norm(dim=-1).max() < 2.5 / 9
    grid_d = torch.pdist(som.coords)
    feature_d = torch.pdist(position)
    assert np.corrcoef(grid_d.numpy(), feature_d.numpy())[0, 1] > 0.95
    # ...and the map covers the square: every corner has a unit near it.
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    assert torch.cdist(corners, position).min(-1).values.max() < 0.2


def test_fit_is_deterministic_under_a_generator():
    data, _, _ = square_in(8, 300, seed=3)
    maps = []
    for _ in range(2):
        som = Topography(8, 4, 4, generator=gen(5))
        som.fit(data, 2, 32, generator=gen(6))
        maps.append(som.weight.detach())
    assert torch.equal(*maps)
    other = Topography(8, 4, 4, generator=gen(5))
    other.fit(data, 2, 32, generator=gen(7))
    assert not torch.equal(maps[0], other.weight.detach())


# --------------------------------------------------------------------------------- measures
def test_errors_match_minisom_on_the_same_weights():
    minisom = pytest.importorskip("minisom")
    g = gen(0)
    data = torch.randn(500, 6, generator=g)
    som = Topography(6, 4, 5, generator=g)
    reference = minisom.MiniSom(4, 5, 6)
    reference._weights = som.weight.detach().double().numpy().reshape(4, 5, 6).copy()
    x = data.double().numpy()
    assert som.quantization_error(data) == pytest.approx(reference.quantization_error(x), rel=1e-5)
    assert som.topographic_error(data) == pytest.approx(reference.topographic_error(x))


def test_topographic_error_counts_non_adjacent_best_pairs():
    som = Topography(2, 1, 4)
    with torch.no_grad():
        som.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.4, 0.1]]))
    # Near unit 0 the second best is unit 3 (three cells away): a topographic error.
    # Between units 1 and 2 the two best units are neighbors: no error.
    data = torch.tensor([[0.1, 0.0], [1.5, 0.0], [1.4, 0.0], [1.6, 0.0]])
    assert som.topographic_error(data) == pytest.approx(0.25)
    assert som.quantization_error(data) == pytest.approx(float(np.mean([0.1, 0.5, 0.4, 0.4])), abs=1e-6)


def test_umatrix_of_a_flat_grid_embedding():
    som = Topography(3, 4, 5)
    with torch.no_grad():
        som.weight.copy_(torch.cat([som.coords, torch.zeros(20, 1)], dim=1))
    u = som.umatrix()
    assert u.shape == (4, 5)
    assert u[1:-1, 1:-1].allclose(torch.full((2, 3), (4 + 4 * math.sqrt(2)) / 8))
    assert u[0, 0].item() == pytest.approx((2 + math.sqrt(2)) / 3)
    with torch.no_grad():
        som.weight.zero_()
    assert som.umatrix().abs().max() == 0


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, error, match", [
    ({"latent_dim": 0}, ValueError, "latent_dim"),
    ({"height": 0}, ValueError, "height"),
    ({"width": 2.5}, TypeError, "width"),
    ({"grid": "square"}, ValueError, "grid"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    args = {"latent_dim": 3, "height": 2, "width": 2, **kwargs}
    with pytest.raises(error, match=match):
        Topography(args.pop("latent_dim"), args.pop("height"), args.pop("width"), **args)


def test_methods_reject_bad_arguments():
    som = Topography(3, 2, 2)
    data = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"z: expected shape \(\.\.\., 3\), got \(10, 4\)"):
        som(torch.randn(10, 4))
    with pytest.raises(TypeError, match="z: expected a torch.Tensor"):
        som.bmu([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="sigma: expected > 0"):
        som.loss(data, 0.0)
    with pytest.raises(ValueError, match="data: expected shape"):
        som.quantization_error(data[0])
    with pytest.raises(ValueError, match="epochs: expected >= 1"):
        som.fit(data, 0, 4)
    with pytest.raises(ValueError, match="batch_size: expected >= 1"):
        som.fit(data, 1, 0)
    with pytest.raises(ValueError, match=r"lr: expected values in \(0, 1.0\]"):
        som.fit(data, 1, 4, lr=(2.0, 0.1))
    with pytest.raises(TypeError, match="sigma: expected a \\(start, end\\) pair"):
        som.fit(data, 1, 4, sigma=3.0)
    with pytest.raises(TypeError, match="callback: expected a callable"):
        som.fit(data, 1, 4, callback="print")
    with pytest.raises(ValueError, match="one unit"):
        Topography(3, 1, 1).topographic_error(data)


# ---------------------------------------------------------------------------- random sources
class _ForeignGenerator(torch.Generator):
    """A CPU generator that claims to live on a CUDA device, to test the device rule without one."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_generator_none_draws_fresh_entropy_and_leaves_the_global_rng_alone():
    data = torch.randn(40, 3, generator=gen(2))
    before = torch.get_rng_state()
    som, other = Topography(3, 3, 3), Topography(3, 3, 3, generator=None)
    som.fit(data, 2, 8)
    other.fit(data, 1, 8, generator=None)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(Topography(3, 3, 3).weight, Topography(3, 3, 3).weight)


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
        Topography(3, 2, 2, generator=_ForeignGenerator())
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        Topography(3, 2, 2, generator=3)
    som = Topography(3, 2, 2, generator=gen(0))
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
        som.fit(torch.randn(10, 3, generator=gen(1)), 1, 4, generator=_ForeignGenerator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_shuffles_with_a_cpu_generator_and_rejects_a_cuda_one():
    data = torch.randn(64, 3, generator=gen(1))
    som, on_cuda = Topography(3, 3, 3, generator=gen(0)), Topography(3, 3, 3, generator=gen(0)).to("cuda")
    som.fit(data, 2, 8, generator=gen(2))
    on_cuda.fit(data.cuda(), 2, 8, generator=gen(2))
    assert torch.allclose(on_cuda.weight.detach().cpu(), som.weight.detach(), atol=1e-4)
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator"):
        on_cuda.fit(data.cuda(), 1, 8, generator=torch.Generator("cuda"))


# ------------------------------------------------------------- best units far from the origin
def _exact_sq(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Squared distances by direct differences, in float64.  (N, D), (U, D) -> (N, U)"""
    return (z.double()[:, None] - w.double()).square().sum(-1)


@pytest.mark.parametrize("offset", [1e3, 3e3, 1e4])
@pytest.mark.parametrize("weights", ["with the data", "at the origin"])
def test_best_units_are_exact_far_from_the_origin(offset, weights):
    # ||z||^2 - 2 z.w + ||w||^2 in float32 picked the wrong unit for 54% of such inputs.
    g = gen(60)
    som = Topography(16, 6, 6, generator=g)
    if weights == "with the data":
        with torch.no_grad():
            som.weight.copy_(offset + 1e-2 * torch.randn(36, 16, generator=g))
    z = offset + 1e-2 * torch.randn(3000, 16, generator=g)
    w = som.weight.detach().clone()
    exact = _exact_sq(z, w)  # (N, U)
    # Float32 steps of 1e-3 at 1e4 leave exact ties; keep the inputs whose three best units are not.
    distinct = (exact.topk(3, dim=-1, largest=False).values.diff(dim=-1) > 0).all(-1)
    z, exact = z[distinct], exact[distinct]
    assert len(z) > 2500
    first, second = exact.topk(2, dim=-1, largest=False).indices.unbind(-1)
    assert torch.equal(som.bmu(z), first)
    grid_sq, feature_sq = som(z)
    assert torch.equal(grid_sq, som.grid_sq(first))
    assert torch.allclose(feature_sq.double(), exact, rtol=1e-3, atol=1e-6 * exact.max().item())
    distance = exact.gather(-1, first[:, None]).sqrt().squeeze(-1)  # (N,)
    assert som.quantization_error(z) == pytest.approx(distance.mean().item(), rel=1e-4)
    gap = (som.coords[first] - som.coords[second]).norm(dim=-1)
    assert som.topographic_error(z) == pytest.approx((gap > som.neighbor_radius + 1e-4).double().mean().item())
    h = torch.exp(-som.grid_sq(first).double() / (2 * 1.3**2))
    assert som.loss(z, 1.3).item() == pytest.approx((h * exact).sum(-1).mean().item(), rel=1e-3)
    record, = som.fit(z, 1, len(z), sigma=(1.0, 1.0), lr=(1.0, 1.0), generator=gen(61))
    assert record["quantization_error"] == pytest.approx(distance.mean().item(), rel=1e-4)


# ------------------------------------------------------- non-finite input, loading, dtypes
def test_non_finite_inputs_are_rejected_naming_the_argument():
    som = Topography(3, 2, 2, generator=gen(0))
    bad = torch.randn(10, 3, generator=gen(1))
    bad[4, 1] = math.nan
    calls = [("z", lambda: som(bad)), ("z", lambda: som.loss(bad, 1.0)), ("z", lambda: som.bmu(bad)),
             ("data", lambda: som.quantization_error(bad)), ("data", lambda: som.topographic_error(bad)),
             ("data", lambda: som.fit(bad, 1, 4))]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got 1 non-finite"):
            call()
    with pytest.raises(ValueError, match="sigma: expected a finite number"):
        som.neighborhood(torch.tensor([0]), math.nan)
    with pytest.raises(ValueError, match="sigma: expected a finite number"):
        som.loss(bad.nan_to_num(), math.inf)


def test_loading_a_map_of_another_shape_fails_naming_the_key():
    som = Topography(3, 2, 6, generator=gen(0))
    with pytest.raises(ValueError, match=r"state_dict: 'weight' holds a 3x4 rectangular map.*this one is "
                                         r"a 2x6 rectangular map"):
        som.load_state_dict(Topography(3, 3, 4).state_dict())  # same (12, 3) weight: it loaded silently
    with pytest.raises(ValueError, match=r"state_dict: 'weight' holds a 2x6 hexagonal map"):
        som.load_state_dict(Topography(3, 2, 6, grid="hexagonal").state_dict())
    with pytest.raises(ValueError, match=r"state_dict: 'weight' must have shape \(12, 3\) .*got shape \(12, 4\)"):
        som.load_state_dict(Topography(4, 2, 6).state_dict())
    same = Topography(3, 2, 6, generator=gen(1))
    som.load_state_dict(same.state_dict())
    assert torch.equal(som.weight, same.weight)
    som.load_state_dict({"weight": 2 * same.weight.detach()})  # a bare weight of the right shape still loads
    assert torch.equal(som.weight, 2 * same.weight)


def test_inputs_are_cast_to_the_weights_dtype():
    som = Topography(5, 3, 4, generator=gen(0))
    z = torch.randn(20, 5, generator=gen(1), dtype=torch.float64)
    grid_sq, feature_sq = som(z)
    assert feature_sq.dtype == torch.float32 and torch.equal(feature_sq, som(z.float())[1])
    assert torch.equal(som.bmu(z), som.bmu(z.float()))
    assert som.loss(z, 1.0).dtype == torch.float32
    assert som.quantization_error(z) == som.quantization_error(z.float())
    double = Topography(5, 3, 4, generator=gen(0)).double()
    assert double(z.float())[1].dtype == torch.float64
    som.fit(z, 1, 8, generator=gen(2))
    assert som.weight.dtype == torch.float32


def test_a_normalized_map_trains_the_unit_its_codebook_picks():
    # weights off the unit sphere (as gradient steps through loss() leave them): the raw weights
    # would pick unit 0, the codebook (what bmu() and the distances use) unit 1
    topography = Topography(3, 1, 2, normalize=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        topography.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0]]))
    z = torch.tensor([[0.6, 0.8, 0.0]])
    assert topography.bmu(z).tolist() == [1]
    history = topography.fit(z, epochs=1, batch_size=1, sigma=(0.01, 0.01), lr=(0.5, 0.5),
                             generator=torch.Generator().manual_seed(0))
    assert history[0]["quantization_error"] == pytest.approx(math.hypot(0.6, 0.2), rel=1e-5)
    weight = topography.weight.detach()
    assert weight[1, 0] > 0.1 and float(weight[0, 1]) == pytest.approx(0.0, abs=1e-6)  # unit 1 moved toward z


def test_a_finite_input_that_overflows_the_weights_dtype_is_rejected():
    topography = Topography(2, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^z: expected finite values"):
        topography.bmu(torch.tensor([[1e300, 0.0]], dtype=torch.float64))
