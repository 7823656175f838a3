import copy
import io
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from treeworld.agents.fourier import FourierMetric
from treeworld.agents.memory import SpatialMemory, _topk
from treeworld.agents.pseudometric import PseudoMetric
from treeworld.agents.topography import Topography

torch.set_num_threads(1)

HALF = 30.0  # the field is the square [-HALF, HALF]^2, well inside the metric's scale
LANDMARKS = 20


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LandmarkField:
    """Percepts as a function of position: a soft one-hot of the nearby landmarks (first
    LANDMARKS entries, largest at the nearest landmark) plus a smooth texture.  (..., 2) -> (..., dim)"""

    dim = LANDMARKS + 24

    def __init__(self, seed: int):
        g = gen(seed)
        self.landmarks = (2 * torch.rand(LANDMARKS, 2, generator=g) - 1) * HALF
        self.freqs = torch.randn(12, 2, generator=g) / 4
        self.phases = 2 * math.pi * torch.rand(12, generator=g)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        near = torch.softmax(-(x[..., None, :] - self.landmarks).square().sum(-1) / 32.0, dim=-1)
        arg = x @ self.freqs.T + self.phases
        return F.normalize(torch.cat([near, 0.3 * arg.cos(), 0.3 * arg.sin()], dim=-1), dim=-1)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return (x[..., None, :] - self.landmarks).square().sum(-1).argmin(-1)


def walk(steps: int, seed: int, step: float = 1.0) -> torch.Tensor:
    """A correlated random walk reflected at the field's edges.  # (steps, 2)"""
    turns = 0.5 * torch.randn(steps, generator=gen(seed)).double()
    heading, position, path = 0.0, np.zeros(2), []
    for turn in turns.tolist():
        heading += turn
        position = position + step * np.array([math.cos(heading), math.sin(heading)])
        over = np.abs(position) > HALF
        position = np.where(over, np.sign(position) * (2 * HALF - np.abs(position)), position)
        heading = math.atan2(math.sin(heading) * (-1 if over[1] else 1), math.cos(heading) * (-1 if over[0] else 1))
        path.append(position)
    return torch.tensor(np.array(path), dtype=torch.float32)


def unit_percepts(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Random percepts of unit length.  # (*shape, LandmarkField.dim)"""
    return F.normalize(torch.randn(*shape, LandmarkField.dim, generator=generator), dim=-1)


def new_memory(capacity: int, batch_size: int = 1, seed: int = 1, **kwargs) -> SpatialMemory:
    return SpatialMemory(FourierMetric(48, scale=64.0), PseudoMetric(LandmarkField.dim, 32, generator=gen(seed)),
                         capacity, batch_size, **kwargs)


@pytest.fixture(scope="module")
def explored():
    """One agent that walked 2000 steps through a landmark field, writing every step."""
    field, path = LandmarkField(0), walk(2000, 1)
    memory = new_memory(2500, place_radius=0.5, percept_radius=0.1)
    codes = memory.location_metric.encode(path)
    for code, percept in zip(codes, field(path)):
        memory.write(code[None], percept[None])
    return field, path, memory


# ----------------------------------------------------------------------------- recall
def test_recall_at_revisited_places_names_the_nearest_landmark(explored):
    field, path, memory = explored
    assert 0 < memory.size.item() < len(path)  # revisits merged into existing entries
    places = path[torch.randint(len(path), (1000,), generator=gen(2))]
    percepts, confidence = memory.recall_percept(memory.location_metric.encode(places)[None])
    hits = percepts[0, :, :LANDMARKS].argmax(-1) == field.nearest(places)
    assert hits.float().mean() >= 0.99
    assert confidence.min() > 0.2


def test_confidence_is_low_where_the_agent_never_went(explored):
    _, path, memory = explored
    grid = torch.stack(torch.meshgrid(torch.linspace(-45, 45, 46), torch.linspace(-45, 45, 46), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    unvisited = grid[torch.cdist(grid, path).min(-1).values > 5.0]
    assert len(unvisited) > 100
    _, confidence = memory.recall_percept(memory.location_metric.encode(unvisited)[None])
    assert confidence.max() < 1e-3


def test_recall_by_distinctive_percept_returns_the_true_place(explored):
    field, path, memory = explored
    places = path[torch.randint(len(path), (300,), generator=gen(3))]
    percepts = field(places)
    codes, weights = memory.recall_location(percepts[None], k=3)
    assert codes.shape == (1, 300, 3, 48) and weights.shape == (1, 300, 3)
    assert (weights[..., :-1] >= weights[..., 1:]).all() and weights.max() <= 1
    found = memory.location_metric.decode(codes[0, :, 0])[1]  # (300, 2)
    # Distinctive: no place more than 1 unit away along the path looks alike under the metric.
    alike = memory.percept_metric.cross_distance(percepts, field(path))  # (300, T)
    distinctive = alike.masked_fill(torch.cdist(places, path) <= 1.0, math.inf).min(-1).values > 0.05
    assert distinctive.float().mean() > 0.5
    assert ((found - places).norm(dim=-1)[distinctive] < 1.0).float().mean() >= 0.99


def test_two_stage_recall_equals_attention_over_all_entries():
    memory = new_memory(400, candidates=16, place_radius=0.5)
    metric = memory.location_metric
    g = gen(4)
    places = 10 * torch.rand(300, 2, generator=g)
    memory.write(metric.encode(places)[None], unit_percepts(1, 300, generator=g))
    queries = metric.encode(10 * torch.rand(50, 2, generator=g))[None]  # (1, 50, L)
    stored_codes, stored_percepts = memory.entries(0)
    dist_sq = metric.cross_distance(queries[0], stored_codes, squared=True)  # (50, n)
    attention = torch.softmax(-dist_sq / (2 * memory.recall_scale ** 2), dim=-1)
    percepts, confidence = memory.recall_percept(queries)
    assert torch.allclose(percepts[0], attention @ stored_percepts, atol=1e-4)
    assert torch.allclose(confidence[0], torch.exp(-dist_sq.min(-1).values / (2 * memory.recall_scale ** 2)), atol=1e-5)
    nearest, same = memory.recall_percept(queries, nearest=True)
    assert torch.equal(nearest[0], stored_percepts[dist_sq.argmin(-1)]) and torch.equal(same, confidence)


def test_nearest_recall_of_an_empty_memory_is_nothing():
    memory = new_memory(10, batch_size=2)
    metric = memory.location_metric
    memory.write(metric.encode(torch.tensor([[[1.0, 1.0]]])).expand(2, 1, -1),
                 unit_percepts(2, 1, generator=gen(6)), mask=torch.tensor([[True], [False]]))
    percepts, confidence = memory.recall_percept(metric.encode(torch.tensor([[1.0, 1.0], [1.0, 1.0]])), nearest=True)
    assert torch.equal(percepts[0], memory.percepts[0, memory.valid[0]][0]) and confidence[0] == pytest.approx(1.0)
    assert torch.equal(percepts[1], torch.zeros_like(percepts[1])) and confidence[1] == 0.0


@pytest.mark.parametrize("length", [40, 1000, 1021])
def test_blocked_topk_matches_torch_topk(length):
    scores = torch.randn(3, 5, length, generator=gen(length))
    scores[0, 0, :500] = -math.inf
    assert torch.equal(_topk(scores, 8).sort(-1).values, scores.topk(8, dim=-1).indices.sort(-1).values)


def test_recall_is_differentiable():
    memory = new_memory(50)
    metric = memory.location_metric
    g = gen(5)
    places = 5 * torch.rand(1, 20, 2, generator=g)
    percepts = unit_percepts(1, 20, generator=g)
    memory.write(metric.encode(places), percepts)
    query = metric.encode(places[:, :4] + 0.2).requires_grad_(True)
    recalled, _ = memory.recall_percept(query)
    recalled.square().sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    _, weights = memory.recall_location(percepts[:, :4] + 0.05, k=2)
    weights.sum().backward()
    assert memory.percept_metric.embedding.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ write
def test_novelty_gating_merges_what_was_seen_at_the_same_place():
    memory = new_memory(10, place_radius=1.0, percept_radius=0.2)
    metric = memory.location_metric
    here, there = torch.tensor([[1.0, 2.0]]), torch.tensor([[8.0, -3.0]])
    p, q = unit_percepts(2, generator=gen(6))
    assert memory.write(metric.encode(here), p[None]).tolist() == [0]
    assert memory.write(metric.encode(here + 0.3), (p + 0.01)[None]).tolist() == [0]  # same place, same percept
    assert memory.counts[0, 0] == 2 and memory.size.item() == 1
    assert torch.allclose(memory.percepts[0, 0], p + 0.005)
    centroid = metric.decode(memory.codes[0, 0])[1]
    assert torch.allclose(centroid, here[0] + 0.15, atol=1e-3)  # the entry sits at the centroid
    assert memory.write(metric.encode(here), q[None]).tolist() == [1]  # same place, new percept
    assert memory.write(metric.encode(there), p[None]).tolist() == [2]  # same percept, new place
    assert memory.write(metric.encode(there), p[None], mask=torch.tensor([False])).tolist() == [-1]
    assert memory.size.item() == 3 and memory.clock.item() == 4


def test_eviction_keeps_capacity_and_drops_the_least_recently_refreshed():
    memory = new_memory(8)
    metric = memory.location_metric
    places = torch.stack([3.0 * torch.arange(20.0), torch.zeros(20)], dim=-1)  # 3 units apart
    percepts = unit_percepts(20, generator=gen(7))
    for i in range(8):
        memory.write(metric.encode(places[i:i + 1]), percepts[i:i + 1])
    memory.write(metric.encode(places[:1]), percepts[:1])  # a revisit refreshes entry 0
    def kept():
        _, confidence = memory.recall_percept(metric.encode(places)[None])
        return (confidence[0] > 0.5).nonzero().flatten().tolist()

    for i in range(8, 15):
        memory.write(metric.encode(places[i:i + 1]), percepts[i:i + 1])
        assert memory.size.item() == 8
    assert kept() == [0] + list(range(8, 15))  # entry 0 outlived its cohort 1..7
    memory.write(metric.encode(places[15:17])[None], percepts[15:17][None])
    assert kept() == list(range(9, 17))  # then it was the oldest


def test_eviction_ties_go_to_the_entry_with_fewer_merges():
    memory = new_memory(3)
    metric = memory.location_metric
    places = 5.0 * torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    percepts = unit_percepts(5, generator=gen(8))
    memory.write(metric.encode(places[:3])[None], percepts[:3][None])
    # One call merges twice into entry 0 and once into entry 1: same refresh step, counts 3 and 2.
    memory.write(metric.encode(places[[0, 0, 1]])[None], percepts[[0, 0, 1]][None])
    assert memory.counts[0].tolist() == [3, 2, 1]
    assert memory.write(metric.encode(places[3:4]), percepts[3:4]).tolist() == [2]  # the oldest
    assert memory.write(metric.encode(places[4:5]), percepts[4:5]).tolist() == [1]  # tie: fewer merges


def test_agents_in_a_batch_are_independent():
    g = gen(9)
    places = 20 * torch.rand(3, 120, 2, generator=g)
    percepts = unit_percepts(3, 120, generator=g)
    mask = torch.rand(3, 120, generator=g) > 0.3
    mask[2] = False
    batch = new_memory(60, batch_size=3, place_radius=1.0, percept_radius=0.5)
    singles = [new_memory(60, place_radius=1.0, percept_radius=0.5) for _ in range(3)]
    metric = batch.location_metric
    for t in range(120):
        batch.write(metric.encode(places[:, t]), percepts[:, t], mask=mask[:, t])
        for b, single in enumerate(singles):
            if mask[b, t]:
                single.write(metric.encode(places[b:b + 1, t]), percepts[b:b + 1, t])
    queries = metric.encode(places[:, :30] + 0.3)
    recalled, confidence = batch.recall_percept(queries)
    for b, single in enumerate(singles):
        for name in ("valid", "counts", "refreshed"):
            assert torch.equal(getattr(batch, name)[b], getattr(single, name)[0])
        assert torch.allclose(batch.percepts[b], single.percepts[0], atol=1e-6)
        alone, alone_confidence = single.recall_percept(queries[b:b + 1])
        assert torch.allclose(recalled[b], alone[0], atol=1e-5)
        assert torch.allclose(confidence[b], alone_confidence[0], atol=1e-5)
    assert batch.size.tolist()[2] == 0 and batch.size.tolist()[0] == 60  # full, evicting
    batch.reset([0])
    assert batch.size.tolist()[0] == 0 and batch.size.tolist()[1] == singles[1].size.item()


# -------------------------------------------------------------------------- map layer
def test_consolidation_gives_a_topographic_map_of_the_explored_field(explored):
    field, path, memory = explored
    memory = copy.deepcopy(memory)
    topography = Topography(48 + LandmarkField.dim, 8, 8, generator=gen(10))
    memory.consolidate(topography, epochs=8, batch_size=64, sigma=(4.0, 0.7), generator=gen(11))
    units = memory.map_units(0)
    assert units.codes.shape == (64, 48) and units.percepts.shape == (64, LandmarkField.dim)
    assert torch.equal(units.coords, topography.coords)
    position = memory.location_metric.decode(units.codes)[1]  # (64, 2)
    assert torch.cdist(position, path).min(-1).values.max() < 3.0  # units lie on explored ground
    grid_gap, place_gap = torch.pdist(topography.coords), torch.pdist(position)
    assert np.corrcoef(grid_gap.numpy(), place_gap.numpy())[0, 1] > 0.85  # the map is topographic
    # Each prototype is most like what is perceived at its own unit's place.
    similarity = F.cosine_similarity(units.percepts[:, None], field(position)[None], dim=-1)  # (U, U)
    assert similarity.diagonal().median() > 0.8
    assert (similarity.argmax(-1) == torch.arange(64)).float().mean() > 0.9
    # An update starts from the agent's map: a vanishing learning rate leaves it as it was.
    before = units.codes.clone()
    memory.consolidate(topography, epochs=1, batch_size=64, sigma=(0.7, 0.7), lr=(1e-6, 1e-6), generator=gen(12))
    assert torch.allclose(memory.map_units(0).codes, before, atol=1e-4)
    # a bad learning rate is refused before anything changes: the map stays
    with pytest.raises(ValueError, match=r"^lr: expected values <= 1, got 2.0"):
        memory.consolidate(Topography(48 + LandmarkField.dim, 2, 2, generator=gen(13)), lr=(2.0, 1.0))
    assert memory.topography is topography and torch.allclose(memory.map_units(0).codes, before, atol=1e-4)


def test_the_metrics_must_share_the_memorys_dtype_and_a_converted_memory_works():
    with pytest.raises(ValueError, match="^location_metric: expected dtype torch.float32"):
        SpatialMemory(FourierMetric(48, scale=200.0).double(), PseudoMetric(LandmarkField.dim, 8), 16)
    with pytest.raises(ValueError, match="^percept_metric: expected dtype torch.float32"):
        SpatialMemory(FourierMetric(48, scale=200.0), PseudoMetric(LandmarkField.dim, 8).double(), 16)
    memory = SpatialMemory(FourierMetric(48, scale=200.0), PseudoMetric(LandmarkField.dim, 8), 16).double()
    field = LandmarkField(0)
    places = torch.tensor([[3.0, 4.0], [-10.0, 2.0]], dtype=torch.float64)
    memory.write(memory.location_metric.encode(places)[None], field(places.float()).double()[None])
    percepts, confidence = memory.recall_percept(memory.location_metric.encode(places[:1]))
    assert percepts.dtype == torch.float64 and confidence.item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- saving
def filled_memory(seed: int) -> SpatialMemory:
    memory = new_memory(40, batch_size=2, seed=seed)
    g = gen(seed)
    places = 10 * torch.rand(2, 60, 2, generator=g)
    percepts = unit_percepts(2, 60, generator=g)
    for t in range(0, 60, 6):
        memory.write(memory.location_metric.encode(places[:, t:t + 6]), percepts[:, t:t + 6])
    return memory


def test_state_dict_round_trip_loses_nothing():
    memory = filled_memory(13)
    memory.consolidate(Topography(48 + LandmarkField.dim, 3, 4, grid="hexagonal"), agent=1, epochs=2,
                       batch_size=8, generator=gen(14))
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    restored = new_memory(40, batch_size=2, seed=99, place_radius=3.0, percept_radius=0.2)  # other weights and
    restored.load_state_dict(torch.load(buffer, weights_only=False))  # radii, no map yet
    for name in ("place_radius", "percept_radius", "recall_scale", "percept_scale"):
        assert getattr(restored, name) == getattr(memory, name), name
    saved, loaded = memory.state_dict(), restored.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(value, loaded[key]) if isinstance(value, torch.Tensor) else value == loaded[key]
    queries = memory.location_metric.encode(10 * torch.rand(2, 5, 2, generator=gen(15)))
    for got, want in zip(restored.recall_percept(queries), memory.recall_percept(queries)):
        assert torch.equal(got, want)
    assert restored.topography.grid == "hexagonal"
    assert all(torch.equal(x, y) for x, y in zip(restored.map_units(1), memory.map_units(1)))
    with pytest.raises(RuntimeError, match="agent 0 has no map layer"):
        restored.map_units(0)
    # A state without a map clears the map of the memory it is loaded into.
    restored.load_state_dict(filled_memory(16).state_dict())
    assert restored.topography is None


@pytest.mark.parametrize("capacity, batch_size", [(30, 2), (40, 3)])
def test_loading_a_memory_of_another_shape_fails_clearly(capacity, batch_size):
    memory = new_memory(capacity, batch_size=batch_size)
    with pytest.raises(ValueError, match=rf"'codes' must have shape .*batch_size={batch_size}, capacity={capacity}"):
        memory.load_state_dict(filled_memory(17).state_dict())


# -------------------------------------------------------------------------- bad input
def test_bad_input_raises_with_the_argument_named():
    memory = new_memory(5, batch_size=2)
    codes = memory.location_metric.encode(torch.zeros(2, 2))
    percepts = torch.zeros(2, LandmarkField.dim)
    with pytest.raises(ValueError, match="capacity: expected >= 1, got 0"):
        new_memory(0)
    with pytest.raises(TypeError, match="location_metric: expected a FourierMetric"):
        SpatialMemory(memory.percept_metric, memory.percept_metric, 5)
    with pytest.raises(ValueError, match=r"codes: expected shape \(2, 48\) or \(2, K, 48\).*got \(2, 47\)"):
        memory.write(codes[:, :47], percepts)
    with pytest.raises(ValueError, match=r"percepts: expected shape \(2, 44\).*got \(2, 43\)"):
        memory.write(codes, percepts[:, :43])
    with pytest.raises(ValueError, match=r"codes: expected shape \(2, 48\).*got \(3, 48\)"):
        memory.recall_percept(torch.cat([codes, codes[:1]]))
    with pytest.raises(ValueError, match="percepts: expected 1 items per agent like codes"):
        memory.write(codes[:, None], torch.zeros(2, 2, LandmarkField.dim))
    with pytest.raises(ValueError, match="codes: expected at most capacity=5 items"):
        memory.write(codes[:, None].expand(2, 6, 48), torch.zeros(2, 6, LandmarkField.dim))
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor of shape \(2,\)"):
        memory.write(codes, percepts, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="k: expected <= capacity=5, got 6"):
        memory.recall_location(percepts, k=6)
    with pytest.raises(ValueError, match="agent: expected 0 <= agent < batch_size=2, got 2"):
        memory.entries(2)
    with pytest.raises(ValueError, match="agent: expected 0 <= agent < batch_size=2, got -1"):
        memory.map_units(-1)
    with pytest.raises(ValueError, match="agents: expected 0 <= agents < batch_size=2, got 5"):
        memory.reset([5])
    with pytest.raises(ValueError, match="topography: expected latent_dim=location_dim\\+percept_dim=92"):
        memory.consolidate(Topography(10, 2, 2))
    with pytest.raises(ValueError, match="agent: agent 0 has no stored entries"):
        memory.consolidate(Topography(92, 2, 2), agent=0)


# --------------------------------------------------------------------------- random sources
class _ForeignGenerator(torch.Generator):
    """A CPU generator that claims to live on a CUDA device, to test the device rule without one."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_consolidate_without_a_generator_leaves_the_global_rng_alone():
    memory = filled_memory(18)
    topography = Topography(48 + LandmarkField.dim, 2, 3, generator=gen(0))
    before = torch.get_rng_state()
    memory.consolidate(topography, epochs=1, batch_size=8)
    memory.consolidate(topography, agent=0, epochs=1, batch_size=8, generator=None)
    assert torch.equal(torch.get_rng_state(), before)


def test_consolidate_needs_a_cpu_generator():
    memory = filled_memory(19)
    topography = Topography(48 + LandmarkField.dim, 2, 3, generator=gen(0))
    with pytest.raises(ValueError, match="generator: expected a CPU torch.Generator.*got one on cuda:0"):
        memory.consolidate(topography, epochs=1, batch_size=8, generator=_ForeignGenerator())
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        memory.consolidate(topography, epochs=1, batch_size=8, generator=5)
    assert memory.map_ready is None or not memory.map_ready.any()  # checked before anything is fitted


# ----------------------------------------------------------------- fine codes, merging, checks
def memory_with(location_dim: int, scale: float, capacity: int, seed: int = 1, **kwargs) -> SpatialMemory:
    return SpatialMemory(FourierMetric(location_dim, scale=scale),
                         PseudoMetric(LandmarkField.dim, 32, generator=gen(seed)), capacity, **kwargs)


@pytest.mark.parametrize("location_dim, scale, half, entries, recall_scale", [
    (120, 10.0, 3.5, 400, 0.1),  # 20 modules, the finest wavelength 0.03: most are noise at 1 unit
    (48, 512.0, 150.0, 3000, 0.5),  # the benchmark's code, all 8 modules coarse
])
def test_shortlist_holds_the_exact_nearest_entry_for_any_code(location_dim, scale, half, entries, recall_scale):
    """The first stage must not lose the nearest entry: recall equals attention over all entries."""
    misses, confidence_error, percept_error = 0, 0.0, 0.0
    for seed in range(4):
        g = gen(100 + seed)
        memory = memory_with(location_dim, scale, entries, recall_scale=recall_scale)
        metric = memory.location_metric
        places = (2 * torch.rand(entries, 2, generator=g) - 1) * half  # all within scale of each other
        memory.write(metric.encode(places)[None], unit_percepts(1, entries, generator=g))
        revisits = places[torch.randint(entries, (150,), generator=g)] + 0.05 * torch.randn(150, 2, generator=g)
        anywhere = (2 * torch.rand(150, 2, generator=g) - 1) * half
        queries = metric.encode(torch.cat([revisits, anywhere]))[None]  # (1, 300, L)
        stored_codes, stored_percepts = memory.entries(0)
        dist_sq = metric.cross_distance(queries[0], stored_codes, squared=True)  # (300, n), exhaustive
        nearest = dist_sq.min(-1).values
        _, shortlisted = memory._shortlist(queries)
        misses += int((shortlisted[0].min(-1).values > nearest * (1 + 1e-5) + 1e-7).sum())
        two_s2 = 2 * memory.recall_scale ** 2
        weights = torch.softmax(-dist_sq / two_s2, dim=-1)
        # Attention beyond the 16 nearest is negligible here, so top-16 recall must match it.
        assert weights.sort(-1, descending=True).values[:, memory.candidates:].sum(-1).max() < 5e-5
        percepts, confidence = memory.recall_percept(queries)
        confidence_error = max(confidence_error, float((confidence[0] - torch.exp(-nearest / two_s2)).abs().max()))
        percept_error = max(percept_error, float((percepts[0] - weights @ stored_percepts).abs().max()))
    assert (misses, confidence_error < 1e-5, percept_error < 1e-4) == (0, True, True), \
        f"{misses} of 1200 queries lost their nearest entry; errors: confidence {confidence_error:.3g}, " \
        f"percepts {percept_error:.3g}"


def test_merged_revisits_stay_valid_codes_at_the_mean_place():
    memory = memory_with(120, 10.0, 10, place_radius=1.0, percept_radius=0.2)
    metric = memory.location_metric
    g = gen(20)
    centres = torch.tensor([[1.3, -2.1], [-2.0, 1.5]])
    angle, radius = 2 * math.pi * torch.rand(2, 240, generator=g), 0.35 * torch.rand(2, 240, generator=g).sqrt()
    places = centres[:, None] + radius[..., None] * torch.stack([angle.cos(), angle.sin()], -1)  # (2, 240, 2)
    percepts = unit_percepts(2, generator=gen(21))
    for t in list(range(120)) + list(range(120, 240, 6)):  # one at a time, then 6 merging in one call
        for i in range(2):
            chunk = places[i, t:t + (1 if t < 120 else 6)]
            memory.write(metric.encode(chunk)[None], percepts[i].expand(len(chunk), -1)[None])
    assert memory.size.item() == 2 and memory.counts[0, :2].tolist() == [240, 240]
    codes, _ = memory.entries(0)
    pairs = codes.unflatten(-1, (-1, 2)).norm(dim=-1)  # (2, J * 3)
    assert torch.allclose(pairs, torch.ones_like(pairs), atol=1e-5)
    mean = places.double().mean(1).float()  # (2, 2): every observation weighs one
    assert torch.allclose(metric.decode(codes)[1], mean, atol=1e-5)
    assert metric.pseudo_distance(codes, metric.encode(mean)).max() < 1e-5
    # Fine codes of one place stay one place: a later visit still merges and recall is confident.
    _, confidence = memory.recall_percept(metric.encode(places[:, 0])[:, None].transpose(0, 1))
    assert confidence.min() > 0.5


def test_non_finite_inputs_are_rejected_with_the_argument_named():
    memory = new_memory(10, batch_size=2)
    metric = memory.location_metric
    codes = metric.encode(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    percepts = unit_percepts(2, generator=gen(22))
    memory.write(codes, percepts)
    before = copy.deepcopy(memory.state_dict())
    for bad in (math.nan, math.inf, -math.inf):
        spoiled_codes, spoiled_percepts = codes.clone(), percepts.clone()
        spoiled_codes[1, 7] = bad
        spoiled_percepts[0, 3] = bad
        with pytest.raises(ValueError, match="codes: expected finite values"):
            memory.write(spoiled_codes, percepts)
        with pytest.raises(ValueError, match="codes: expected finite values"):
            memory.write(spoiled_codes[:, None], percepts[:, None], mask=torch.tensor([[True], [False]]))
        with pytest.raises(ValueError, match="percepts: expected finite values"):
            memory.write(codes, spoiled_percepts)
        with pytest.raises(ValueError, match="codes: expected finite values"):
            memory.recall_percept(spoiled_codes)
        with pytest.raises(ValueError, match="percepts: expected finite values"):
            memory.recall_location(spoiled_percepts)
    with pytest.raises(ValueError, match="codes: expected values within the range of torch.float32"):
        memory.recall_percept(codes.double() * 1e300)
    saved = memory.state_dict()
    assert all(torch.equal(saved[key], value) for key, value in before.items() if isinstance(value, torch.Tensor))
    _, confidence = memory.recall_percept(codes)
    assert torch.isfinite(confidence).all() and confidence.min() > 0.99


def test_consolidate_checks_its_arguments_before_changing_the_map():
    memory = filled_memory(23)
    topography = Topography(48 + LandmarkField.dim, 2, 3, generator=gen(0))
    memory.consolidate(topography, epochs=1, batch_size=8, generator=gen(1))
    units = memory.map_units(1)
    other = Topography(48 + LandmarkField.dim, 3, 3, generator=gen(2))
    weight = other.weight.detach().clone()
    for kwargs, message in (({"sigma": (math.nan, 0.5)}, "sigma: expected a finite number"),
                            ({"lr": (0.5, math.inf)}, "lr: expected a finite number"),
                            ({"epochs": 0}, "epochs: expected >= 1"),
                            ({"batch_size": 0}, "batch_size: expected >= 1")):
        with pytest.raises(ValueError, match=message):
            memory.consolidate(other, generator=gen(3), **{"epochs": 1, "batch_size": 8, **kwargs})
        assert memory.topography is topography and torch.equal(other.weight, weight)
        assert all(torch.equal(x, y) for x, y in zip(memory.map_units(1), units))


def test_other_float_dtypes_are_cast_to_the_memory_dtype():
    memory = new_memory(20)
    metric = memory.location_metric
    g = gen(24)
    places, percepts = 5 * torch.rand(1, 8, 2, generator=g), unit_percepts(1, 8, generator=g)
    twin = copy.deepcopy(memory)
    memory.write(metric.encode(places), percepts)
    twin.write(metric.encode(places).double(), percepts.double())
    assert twin.codes.dtype == torch.float32
    assert torch.equal(twin.codes, memory.codes) and torch.equal(twin.percepts, memory.percepts)
    queries = metric.encode(places + 0.1).double()
    want = memory.recall_percept(queries.float())
    got = memory.recall_percept(queries)
    assert all(x.dtype == torch.float32 and torch.allclose(x, y, atol=1e-6) for x, y in zip(got, want))
    want = memory.recall_location(percepts + 0.01, k=2)
    got = memory.recall_location((percepts + 0.01).double(), k=2)
    assert all(x.dtype == torch.float32 and torch.allclose(x, y, atol=1e-6) for x, y in zip(got, want))
    query = queries.clone().requires_grad_(True)  # gradients flow back to the float64 query
    memory.recall_percept(query)[0].square().sum().backward()
    assert query.grad.dtype == torch.float64 and query.grad.abs().sum() > 0


def test_loading_a_state_of_another_shape_fails_naming_the_key_and_changes_nothing():
    memory = filled_memory(25)
    memory.consolidate(Topography(48 + LandmarkField.dim, 2, 3), agent=0, epochs=1, batch_size=8, generator=gen(0))
    before = copy.deepcopy(memory.state_dict())
    source = filled_memory(26)
    source.consolidate(Topography(48 + LandmarkField.dim, 3, 4), agent=0, epochs=1, batch_size=8, generator=gen(0))
    other_rank = SpatialMemory(FourierMetric(48, scale=64.0), PseudoMetric(LandmarkField.dim, 16, generator=gen(1)),
                               40, 2)
    cases = [(other_rank.state_dict(), "percept_metric.embedding"),
             ({**source.state_dict(), "counts": torch.zeros(2, 41, dtype=torch.long)}, "counts"),
             ({**source.state_dict(), "clock": torch.zeros(3, dtype=torch.long)}, "clock"),
             ({**source.state_dict(), "map_weights": torch.zeros(2, 6, 92)}, "map_weights"),
             ({**source.state_dict(), "location_metric.alphas": torch.zeros(9)}, "location_metric.alphas"),
             ({**source.state_dict(), "codes": source.codes.clone().fill_(math.nan)}, "codes")]
    for state, key in cases:
        with pytest.raises(ValueError, match=rf"state_dict: '{re.escape(key)}'[ :]"):
            memory.load_state_dict(state)
        saved = memory.state_dict()
        assert saved.keys() == before.keys()
        for name, value in before.items():
            assert torch.equal(saved[name], value) if isinstance(value, torch.Tensor) else saved[name] == value
    memory.load_state_dict(source.state_dict())  # the intact state still loads, exactly
    assert all(torch.equal(x, y) for x, y in zip(memory.map_units(0), source.map_units(0)))


def brute_recall_location(memory: SpatialMemory, percepts: torch.Tensor, k: int):
    """recall_location over every slot, no shortlist, no cached keys: (B, Q, k) distances and slots."""
    dist_sq = memory.percept_metric.cross_distance(percepts, memory.percepts, squared=True)  # (B, Q, C)
    dist_sq = dist_sq.masked_fill(~memory.valid[:, None, :], float("inf"))
    return dist_sq.topk(k, dim=-1, largest=False)


def test_cached_percept_keys_follow_writes_merges_resets_and_embedding_changes():
    memory = filled_memory(3)
    g = gen(4)
    optimizer = torch.optim.SGD(memory.percept_metric.parameters(), lr=0.5)

    def check():
        queries = memory.percepts[:, :5] + 0.01 * torch.randn(2, 5, LandmarkField.dim, generator=g)
        with torch.no_grad():
            codes, weights, slots = memory.recall_location(queries, 3, return_slots=True)
        nearest, expected = brute_recall_location(memory, queries.detach(), 3)
        assert torch.equal(slots, expected)
        torch.testing.assert_close(weights, torch.exp(-nearest / (2 * memory.percept_scale ** 2)),
                                   rtol=1e-4, atol=1e-5)
        assert torch.equal(codes, memory.codes[torch.arange(2)[:, None, None], slots])

    check()
    places = memory.location_metric.decode(memory.codes[:, :4])[1]  # revisits: merges
    memory.write(memory.location_metric.encode(places), memory.percepts[:, :4] + 0.01)
    check()
    memory.write(memory.location_metric.encode(10 + torch.rand(2, 3, 2, generator=g)),
                 unit_percepts(2, 3, generator=g))  # new entries
    check()
    memory.reset([1])
    memory.write(memory.location_metric.encode(torch.rand(2, 6, 2, generator=g)), unit_percepts(2, 6, generator=g))
    check()
    loss = memory.percept_metric.pseudo_distance(memory.percepts[0, :3], memory.percepts[0, 3:6]).sum()
    loss.backward()
    optimizer.step()  # the embedding changes in place: the keys must follow
    check()
    memory.percepts[0, 0] = unit_percepts(1, generator=g)[0]  # an outside edit
    check()
