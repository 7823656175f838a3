"""Coverage: which cells the agent has looked at, and the frontier it explores next."""
import math

import pytest
import torch

from treeworld.agents.coverage import Coverage

torch.set_num_threads(1)
COS = 0.9  # the world's sight cone: about 26 degrees each side


def _viewed_at(coverage, row, point):
    """Whether the cell holding ``point`` (x, y) was viewed in ``row``."""
    cell = (coverage.centres - torch.tensor(point, dtype=torch.float64)).norm(dim=-1).argmin()
    return bool(coverage.viewed[row, cell])


def test_a_look_views_the_cone_up_to_what_sight_reached_and_the_cell_underfoot():
    coverage = Coverage(2, radius=500.0, cell=25.0)
    position = torch.tensor([[12.5, 12.5], [12.5, 12.5]])
    heading = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    coverage.mark(position, heading, torch.tensor([100.0, 40.0]), COS)  # row 1: a tree in sight at 40
    assert _viewed_at(coverage, 0, (12.5, 12.5)) and _viewed_at(coverage, 1, (12.5, 12.5))  # underfoot
    assert _viewed_at(coverage, 0, (87.5, 12.5))  # 75 ahead: in the cone and in range
    assert not _viewed_at(coverage, 1, (87.5, 12.5))  # behind the tree in sight: still unknown
    assert _viewed_at(coverage, 1, (37.5, 12.5))  # in front of it
    assert not _viewed_at(coverage, 0, (137.5, 12.5))  # beyond the sight range
    assert not _viewed_at(coverage, 0, (-62.5, 12.5))  # behind the agent
    assert not _viewed_at(coverage, 0, (62.5, 62.5))  # 45 degrees off the heading: outside the cone
    # exactly the cells whose centres pass the cone and range test (plus the one underfoot)
    offset = coverage.centres - position[0].double()
    distance = offset.norm(dim=-1)
    expected = ((offset[:, 0] >= COS * distance) & (distance <= 100.0)) | (distance <= 25.0 / math.sqrt(2))
    assert torch.equal(coverage.viewed[0], expected)



def test_marking_equals_the_test_of_every_cell_anywhere_on_or_off_the_grid():
    gen = torch.Generator().manual_seed(0)
    coverage = Coverage(64, radius=200.0, cell=25.0)
    for _ in range(5):
        position = (torch.rand(64, 2, generator=gen) * 2 - 1) * 260  # some beyond the grid's edge
        heading = torch.nn.functional.normalize(torch.randn(64, 2, generator=gen), dim=-1)
        reach = torch.rand(64, generator=gen) * 100
        before = coverage.viewed.clone()
        coverage.mark(position, heading, reach, COS)
        offset = coverage.centres[None] - position.double()[:, None]
        distance = offset.norm(dim=-1)
        along = (offset * heading.double()[:, None]).sum(-1)
        brute = ((along >= COS * distance) & (distance <= reach.double()[:, None])) | (distance <= 25.0 / math.sqrt(2))
        assert torch.equal(coverage.viewed, before | brute)
    assert coverage.viewed.any(1).float().mean() > 0.5


def test_frontier_is_the_nearest_promising_unviewed_cell():
    coverage = Coverage(1, radius=500.0, cell=25.0, spread=200.0)
    here = torch.tensor([[0.0, 0.0]])
    first = coverage.frontier(here)
    assert float(first.norm()) < 25.0  # nothing viewed: a cell next to the start
    coverage.viewed[0] = coverage.centres.norm(dim=-1) < 100.0  # the disc of radius 100 around the start seen
    # at (150, 0), outside the disc: an unviewed cell next to it
    goal = coverage.frontier(torch.tensor([[150.0, 0.0]]))
    assert not _viewed_at(coverage, 0, tuple(goal[0].tolist()))
    assert float((goal - torch.tensor([[150.0, 0.0]])).norm()) < 25.0
    far = Coverage(1, radius=500.0, cell=25.0, spread=200.0)
    far.viewed[0] = far.centres.norm(dim=-1) < 100.0
    # from the start, every unviewed cell is as far as the prior falls: the nearest ring is chosen
    assert 100.0 <= float(far.frontier(here).norm()) < 125.0


def test_frontier_prefers_the_wooded_middle_over_an_equally_near_edge():
    coverage = Coverage(1, radius=500.0, cell=25.0, spread=200.0)
    coverage.viewed[0] = True
    near_centre, near_edge = torch.tensor([112.5, 12.5]), torch.tensor([412.5, 12.5])
    for point in (near_centre, near_edge):
        coverage.viewed[0, (coverage.centres - point.double()).norm(dim=-1).argmin()] = False
    goal = coverage.frontier(torch.tensor([[262.5, 12.5]]))  # halfway between the two
    torch.testing.assert_close(goal[0], near_centre)


def test_no_frontier_once_everything_inside_was_viewed_and_reset_forgets_a_row():
    coverage = Coverage(2, radius=100.0, cell=25.0)
    coverage.viewed[:] = True
    assert torch.isnan(coverage.frontier(torch.zeros(2, 2))).all()
    coverage.reset([1])
    goal = coverage.frontier(torch.zeros(2, 2))
    assert torch.isnan(goal[0]).all() and torch.isfinite(goal[1]).all()
    assert float(goal[1].norm()) <= 100.0  # only cells inside the radius


@pytest.mark.parametrize("name,value", [("radius", 0.0), ("cell", -1.0), ("spread", 0.0), ("offset", 0.0)])
def test_bad_arguments_name_themselves(name, value):
    kwargs = {"radius": 100.0, name: value}
    with pytest.raises(ValueError, match=name):
        Coverage(1, **kwargs)


def test_bad_inputs_name_themselves():
    coverage = Coverage(2, radius=100.0)
    with pytest.raises(ValueError, match="position: expected shape"):
        coverage.frontier(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reach: expected shape"):
        coverage.mark(torch.zeros(2, 2), torch.ones(2, 2), torch.ones(2, 1), COS)
    with pytest.raises(ValueError, match="heading"):
        coverage.mark(torch.zeros(2, 2), torch.full((2, 2), math.nan), torch.ones(2), COS)
    with pytest.raises(TypeError, match="position"):
        coverage.frontier([[0.0, 0.0], [0.0, 0.0]])
