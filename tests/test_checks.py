"""treeworld.checks: one set of argument checks, numpy scalars accepted wherever Python numbers are."""
import math

import numpy as np
import pytest
import torch

from treeworld import checks
from treeworld.agents import FourierMetric, PseudoMetric, RandomWalker, SpatialMemory, Topography

INTEGERS = [np.int64(7), np.int32(7), np.uint8(7), np.array(7), np.array(7, dtype=np.int16)]
FLOATS = [np.float32(2.5), np.float64(2.5), np.array(2.5), np.array(2.5, dtype=np.float32)]
BOOLS = [True, False, np.bool_(True), np.array(True)]


# ---------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("value", [7, *INTEGERS])
def test_integer_and_count_accept_numpy_integers_as_python_ints(value):
    for result in (checks.integer(value, "n"), checks.count(value, "n")):
        assert result == 7 and type(result) is int


@pytest.mark.parametrize("value", [7, 2.5, *INTEGERS, *FLOATS])
def test_real_and_positive_accept_numpy_numbers_as_python_floats(value):
    for result in (checks.real(value, "x"), checks.positive(value, "x")):
        assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", BOOLS)
def test_bools_are_not_numbers(value):
    for check in (checks.integer, checks.count, checks.real, checks.positive):
        with pytest.raises(TypeError, match="flag: expected .*, got bool"):
            check(value, "flag")


@pytest.mark.parametrize("value", [2.0, np.float64(2.0), "2", None, np.array([2]), 2 + 0j])
def test_integer_rejects_non_integers(value):
    with pytest.raises(TypeError, match="n: expected an int, got"):
        checks.integer(value, "n")


@pytest.mark.parametrize("value", ["2", None, np.array([2.0]), 2 + 0j, torch.tensor(2.0)])
def test_real_rejects_non_numbers(value):
    with pytest.raises(TypeError, match="x: expected a number, got"):
        checks.real(value, "x")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"),
                                   np.array(math.nan)])
def test_real_rejects_non_finite(value):
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        checks.real(value, "scale")
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        checks.positive(value, "scale")


@pytest.mark.parametrize("value", [1e39, -1e39, np.float64(1e39), 10 ** 39, 10 ** 400, np.array(1e300)])
def test_real_rejects_what_overflows_float32(value):
    with pytest.raises(ValueError, match=r"radius: expected a magnitude <= 3\.40282e\+38 \(float32 range\)"):
        checks.real(value, "radius")
    assert checks.real(np.finfo(np.float32).max, "radius") == checks.FLOAT32_MAX


def test_integer_ranges_name_the_bound():
    assert checks.integer(-3, "n") == -3
    assert checks.integer(np.int64(5), "n", low=0, high=5) == 5
    with pytest.raises(ValueError, match="n: expected >= 0, got -1"):
        checks.integer(np.int64(-1), "n", low=0)
    with pytest.raises(ValueError, match="n: expected <= 5, got 6"):
        checks.integer(6, "n", high=5)
    with pytest.raises(ValueError, match="capacity: expected >= 1, got 0"):
        checks.count(np.int32(0), "capacity")
    with pytest.raises(ValueError, match="k: expected >= 2, got 1"):
        checks.count(1, "k", minimum=2)


def test_real_ranges_name_the_bound():
    assert checks.real(0, "p", low=0, high=1) == 0.0
    assert checks.real(np.float32(1), "p", low=0, high=1) == 1.0
    for kwargs, value, message in [
        (dict(low=0), -0.5, "p: expected >= 0, got -0.5"),
        (dict(low=0, low_open=True), 0, "p: expected > 0, got 0.0"),
        (dict(high=1), np.float64(1.5), "p: expected <= 1, got 1.5"),
        (dict(high=1, high_open=True), 1, "p: expected < 1, got 1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            checks.real(value, "p", **kwargs)


def test_positive_keeps_its_signature():
    assert checks.positive(np.float32(0.5), "tau") == 0.5
    assert checks.positive(1, "ratio", minimum=1.0, strict=False) == 1.0
    with pytest.raises(ValueError, match="tau: expected > 0, got 0.0"):
        checks.positive(np.float64(0.0), "tau")
    with pytest.raises(ValueError, match="ratio: expected >= 1.0, got 0.5"):
        checks.positive(0.5, "ratio", minimum=1.0, strict=False)


def test_instance():
    assert checks.instance(3, int, "n") == 3
    with pytest.raises(TypeError, match="metric: expected a FourierMetric, got str"):
        checks.instance("x", FourierMetric, "metric")


# ---------------------------------------------------------------------------------- tensors
def test_tensor_checks():
    x = torch.zeros(4, 3)
    assert checks.float_tensor(x, "x") is x and checks.last_dim(x, 3, "x", "dim") is x
    assert checks.matrix(x, 3, "x", "dim", rows="N") is x
    with pytest.raises(TypeError, match="x: expected a torch.Tensor, got ndarray"):
        checks.float_tensor(np.zeros(3), "x")
    with pytest.raises(TypeError, match="x: expected a floating-point tensor, got torch.int64"):
        checks.float_tensor(torch.zeros(3, dtype=torch.long), "x")
    with pytest.raises(ValueError, match=r"x: expected last dimension dim=2, got shape \(4, 3\)"):
        checks.last_dim(x, 2, "x", "dim")
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., N, 3\), got \(3,\)"):
        checks.matrix(torch.zeros(3), 3, "x", "dim", rows="N")


def test_generator():
    seeded = torch.Generator().manual_seed(0)
    assert checks.generator(seeded) is seeded
    state = torch.get_rng_state()
    assert isinstance(checks.generator(None), torch.Generator)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        checks.generator(0)


# ------------------------------------------------------------------ agents take numpy scalars
def _same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert a.extra_repr() == b.extra_repr()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:  # tensors, and the memory's extra state (a dict)
        assert torch.equal(sa[key], sb[key]) if isinstance(sa[key], torch.Tensor) else sa[key] == sb[key]


def test_topography_takes_numpy_sizes():
    som = Topography(np.int64(8), np.int64(4), np.array(4), generator=torch.Generator().manual_seed(0))
    plain = Topography(8, 4, 4, generator=torch.Generator().manual_seed(0))
    _same_module(som, plain)
    assert type(som.latent_dim) is type(som.height) is type(som.width) is int
    assert torch.equal(som.coords, plain.coords)
    history = som.fit(torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), np.int32(2), np.int64(8),
                      sigma=(np.float32(2.0), np.float64(0.5)), generator=torch.Generator().manual_seed(2))
    assert len(history) == 2


def test_fourier_metric_takes_numpy_scalars():
    metric = FourierMetric(np.int64(24), np.int32(2), np.float32(10.0), np.float64(math.sqrt(2.0)))
    plain = FourierMetric(24, 2, 10.0, math.sqrt(2.0))
    _same_module(metric, plain)
    assert type(metric.location_dim) is type(metric.dim) is int
    assert type(metric.scale) is type(metric.ratio) is float
    assert metric.sample(np.int64(3), generator=torch.Generator().manual_seed(0)).shape == (3, 24)
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        FourierMetric(24, scale=np.float64("nan"))
    with pytest.raises(ValueError, match="scale: expected a magnitude"):
        FourierMetric(24, scale=1e39)


def test_pseudometric_takes_numpy_scalars():
    metric = PseudoMetric(np.int64(8), np.int32(2), tau=np.float32(0.5), generator=torch.Generator().manual_seed(0))
    plain = PseudoMetric(8, 2, tau=0.5, generator=torch.Generator().manual_seed(0))
    _same_module(metric, plain)
    assert type(metric.vector_dim) is type(metric.metric_rank) is int and type(metric.tau) is float


def test_spatial_memory_takes_numpy_scalars():
    def build(capacity, batch_size, radius, candidates):
        return SpatialMemory(FourierMetric(24), PseudoMetric(6, 2, generator=torch.Generator().manual_seed(0)),
                             capacity, batch_size, place_radius=radius, candidates=candidates)

    memory = build(np.int64(5), np.int32(2), np.float32(1.5), np.array(4))
    plain = build(5, 2, 1.5, 4)
    _same_module(memory, plain)
    assert memory.recall_scale == plain.recall_scale == 0.75
    assert memory.entries(np.int64(1))[0].shape == (0, 24)
    with pytest.raises(TypeError, match="agent: expected an int, got float"):
        memory.entries(1.0)


def test_random_walker_takes_numpy_scalars():
    walker = RandomWalker(persistence=np.float32(0.5), seed=np.int64(3))
    assert walker.persistence == 0.5 and walker._seed == 3
    with pytest.raises(ValueError, match="persistence: expected <= 1"):
        RandomWalker(persistence=np.float64(1.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_tensor_passes_finite_entries_whose_sum_overflows(dtype):
    big = torch.finfo(dtype).max
    values = torch.tensor([big, big, -1.0], dtype=dtype)  # the one-pass sum is inf
    assert checks.finite_tensor(values, "values") is values


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite_tensor_names_each_kind_of_non_finite_entry(bad):
    values = torch.zeros(3, 4)
    values[1, 2] = bad
    with pytest.raises(ValueError, match=r"values: expected finite values, got 1 non-finite .* of 12"):
        checks.finite_tensor(values, "values")


def test_finite_tensor_catches_opposite_infinities_and_empty_tensors_pass():
    with pytest.raises(ValueError, match="got 2 non-finite"):
        checks.finite_tensor(torch.tensor([math.inf, -math.inf, 1.0]), "values")  # the sum is NaN
    assert checks.finite_tensor(torch.zeros(0, 3), "values").shape == (0, 3)
