"""Coverage: which places of its own frame an agent has looked at, and the frontier to explore next.

A grid of ``G x G`` square cells of side ``cell`` centred on the agent's start (the origin of its
frame), ``(B, G * G)`` bool (flattened, x-major) per batch of B agents. A cell is *viewed* once its centre was in the
sight cone (``cos(angle to heading) >= cone_cos``) no farther than what sight reached: the tree in
sight's distance when one is seen (sight shows only the nearest tree in the cone, so what lies
behind it is still unknown), else the sight range; the cell the agent stands in is viewed too.
Places are believed positions, so the grid drifts with the belief.

The frontier: the unviewed cell inside ``radius`` of the start with the best
``exp(-|c|^2 / (2 spread^2)) / (|c - p| + offset)``, a prior density of trees falling as a
Gaussian of std ``spread`` around the start (in the world, trees scatter around the arena centre,
where agents start) over the distance from the agent ``p``: the nearest promising unknown place.
Without that prior a nearest-frontier explorer walked the empty side of a world as readily as the
wooded one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from treeworld import checks


class Coverage(nn.Module):
    """Viewed cells ``(B, G * G)`` of B agents' frames (a buffer: saved with its owner).

    Args:
        num_agents: ``B``.
        radius: half-width of the grid and the farthest frontier from the start (world units).
        cell: side of a cell (world units).
        spread: std of the prior density of trees around the start (world units).
        offset: added to the distance in the frontier score (world units).
    """

    def __init__(self, num_agents: int, radius: float, cell: float = 25.0, spread: float = 200.0,
                 offset: float = 20.0):
        super().__init__()
        self.num_agents = checks.count(num_agents, "num_agents")
        self.radius = checks.positive(radius, "radius")
        self.cell = checks.positive(cell, "cell")
        self.spread = checks.positive(spread, "spread")
        self.offset = checks.positive(offset, "offset")
        self.side = side = 2 * math.ceil(self.radius / self.cell)  # cells per axis
        axis = (torch.arange(side, dtype=torch.float64) - side / 2 + 0.5) * self.cell
        centres = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (G*G, 2)
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("inside", centres.norm(dim=-1) <= self.radius, persistent=False)
        self.register_buffer("log_prior", -centres.square().sum(-1) / (2 * self.spread ** 2), persistent=False)
        self.register_buffer("viewed", torch.zeros(self.num_agents, side * side, dtype=torch.bool))

    @staticmethod
    def _check(tensor, name: str, shape: tuple[int, ...]) -> None:
        checks.float_tensor(tensor, name)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
        checks.finite_tensor(tensor, name)

    def reset(self, rows) -> None:
        """Forget what rows ``rows`` (a list of ints, or a (B,) bool mask) have viewed."""
        self.viewed[rows] = False

    @torch.no_grad()
    def mark(self, position: torch.Tensor, heading: torch.Tensor, reach: torch.Tensor, cone_cos: float) -> None:
        """View the cells in each agent's sight: ``position`` (B, 2) believed, ``heading`` (B, 2) unit
        (zero: no cone), ``reach`` (B,) how far sight reached (world units)."""
        self._check(position, "position", (self.num_agents, 2))
        self._check(heading, "heading", (self.num_agents, 2))
        self._check(reach, "reach", (self.num_agents,))
        # only the window of cells around each agent that sight can reach (K = W^2 cells, not all)
        span = math.ceil(float(reach.max()) / self.cell) + 1
        steps = torch.arange(-span, span + 1, device=self.viewed.device)
        cell = torch.floor(position.double() / self.cell + self.side / 2).long()  # (B, 2) the agent's
        ix, iy = cell[:, 0, None, None] + steps[:, None], cell[:, 1, None, None] + steps  # (B, W, 1), (B, 1, W)
        on_grid = ((ix >= 0) & (ix < self.side) & (iy >= 0) & (iy < self.side)).flatten(1)  # (B, K)
        index = (ix.clamp(0, self.side - 1) * self.side + iy.clamp(0, self.side - 1)).flatten(1)
        offset = self.centres[index] - position.double()[:, None]  # (B, K, 2)
        distance = offset.norm(dim=-1)
        along = (offset * heading.double()[:, None]).sum(-1)
        in_cone = (along >= cone_cos * distance) & (distance <= reach.double()[:, None])
        seen = (in_cone | (distance <= self.cell / math.sqrt(2))) & on_grid
        rows = torch.arange(self.num_agents, device=self.viewed.device)[:, None].expand_as(index)
        self.viewed[rows[seen], index[seen]] = True

    @torch.no_grad()
    def frontier(self, position: torch.Tensor) -> torch.Tensor:
        """(B, 2) the frontier cell to explore for agents at ``position`` (B, 2); nan rows when
        every cell inside ``radius`` was viewed."""
        self._check(position, "position", (self.num_agents, 2))
        # float32: the (B, G * G) scores are most of a frontier's cost, and a cell is 25 units wide
        centres, here = self.centres.float(), position.float()
        distance = ((centres[:, 0] - here[:, :1]).square() + (centres[:, 1] - here[:, 1:]).square()).sqrt()  # (B, G*G)
        score = self.log_prior.float() - torch.log(distance + self.offset)
        score = score.masked_fill(self.viewed | ~self.inside, -math.inf)
        best, cell = score.max(dim=-1)
        goal = self.centres[cell].to(position.dtype)
        return torch.where(torch.isfinite(best)[:, None], goal, torch.full_like(goal, math.nan))
