"""Topographic (self-organizing) map layer: a grid of units with weight vectors in latent space.

The seed (topography-layer.txt) asks whether its SOM-like layer is correct. In short: its loss is
the right one, but the layer around it is not.

- What the loss optimizes. ``sum_u h(bmu(z), u) ||z - w_u||^2`` with a Gaussian neighborhood
  ``h`` on the grid is the neighborhood-weighted quantization error. For a fixed best-matching unit
  its gradient in ``w_u`` is ``-2 h(bmu, u) (z - w_u)``: exactly Kohonen's update, and its
  stationary point over a data set is the batch-SOM fixed point ``w_u = sum h z / sum h``.
- Where gradients flow. Into the weights and into ``z`` (an encoder upstream is pulled toward its
  best unit's neighborhood). Not through the best-matching unit: ``argmin`` and the grid
  distances are piecewise constant, so no workaround is needed and none exists; the loss jumps
  where the winner changes (the SOM has no global energy function; Erwin et al. 1992).
- What was wrong. The grid coordinates were a plain tensor (left behind by ``.to(device)``); one
  ``p_norm`` was used both to normalize and as the distance (for p != 2 the "squared L2" is
  neither, and the grid neighborhood stops being Gaussian); sigma was fixed, so the map never
  anneals from global ordering to local fitting and stays contracted toward the data mean; and
  with normalized weights the loss ignores ``||w||``, so the author's sanity check (the weight norm
  changes) measures nothing the loss cares about.

Here the grid coordinates are a buffer, normalization is an explicit on/off choice with Euclidean
feature distances, and ``fit`` anneals sigma and the learning rate.

Best-matching units are exact. Squared distances come from one matmul,
``||z||^2 - 2 z.w + ||w||^2``, which in float32 loses everything below ``eps (||z||^2 + ||w||^2)``:
for inputs at 1e3 to 1e4 with spread 1e-2 that was all of it, and the old expansion picked the
wrong unit for most of them. Inputs and weights are therefore shifted by the weights' mean first
(a constant: distances do not change, and near the map the shift is exact), and the ranking of
the expansion is kept only where its rounding bound cannot change it: rows with a near-tie (or
inputs far from the map, where the bound is wide) are ranked by direct differences in float64.

Arguments and dtypes. Inputs must be finite (ValueError naming the argument); floating inputs of
any dtype are cast to the weights' dtype and results come back in it (the rule of every agents
module). ``state_dict`` records the grid (extra state); loading a state of another grid, or a
weight of another shape, is a ValueError naming the key.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from treeworld import checks

GRIDS = ("rectangular", "hexagonal")
# Adjacent units: the 8 surrounding units on a rectangular grid (as MiniSom counts them), the 6 on
# a hexagonal grid (unit spacing).
_NEIGHBOR_RADIUS = {"rectangular": math.sqrt(2.0), "hexagonal": 1.0}
_TOL = 1e-4
_CUTOFF = 30.0  # neighborhood truncation, in units of g^2 / (2 sigma^2)
_CHUNK_ELEMENTS = 1 << 22  # (chunk, U) distance blocks in the data-set measures


def _matmul_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a matmul in ``dtype``: coarser where float32 matmuls may run in TF32
    (``torch.set_float32_matmul_precision("high")``) or bfloat16 (``"medium"``)."""
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32:
        eps = max(eps, {"highest": 0.0, "high": 2.0 ** -10, "medium": 2.0 ** -7}.get(
            torch.get_float32_matmul_precision(), 2.0 ** -7))
    return eps


def _check_positive(value, name: str) -> float:
    """``checks.positive``, also taking a one-element tensor (a sigma or rate computed in torch)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return checks.positive(value, name)


def _check_schedule(pair, name: str, upper: float = math.inf) -> tuple[float, float]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name}: expected a (start, end) pair, got {pair!r}")
    start, end = (_check_positive(v, name) for v in pair)
    if max(start, end) > upper:
        raise ValueError(f"{name}: expected values in (0, {upper}], got {tuple(pair)}")
    return start, end


def grid_coordinates(height: int, width: int, grid: str = "rectangular") -> torch.Tensor:
    """Planar (row, column) positions of the units, row-major, unit spacing.  # (H*W, 2)

    On a hexagonal grid odd rows shift by half a unit and rows are sqrt(3)/2 apart, so each
    unit's six neighbors lie at distance 1.
    """
    rows = torch.arange(height, dtype=torch.float32).repeat_interleave(width)  # (U,)
    cols = torch.arange(width, dtype=torch.float32).repeat(height)  # (U,)
    if grid == "hexagonal":
        cols = cols + 0.5 * (rows % 2)
        rows = rows * (math.sqrt(3.0) / 2.0)
    return torch.stack([rows, cols], dim=1)


class Topography(nn.Module):
    """A ``height x width`` map of units, each a weight vector in a ``latent_dim`` space.

    Args:
        latent_dim: size D of inputs and unit weights.
        height, width: grid size; units are numbered row-major, U = height * width.
        grid: "rectangular" or "hexagonal".
        normalize: if True, inputs and weights are projected to the unit sphere before every
            distance (a cosine map); distances stay Euclidean.
        generator: a CPU torch.Generator (``None``: fresh entropy) for the N(0, 1/D) weight
            initialization.

    Attributes:
        weight: nn.Parameter  # (U, D)
        coords: buffer of grid positions  # (U, 2)
    """

    def __init__(self, latent_dim: int, height: int, width: int, *, grid: str = "rectangular",
                 normalize: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.latent_dim = checks.count(latent_dim, "latent_dim")
        self.height = checks.count(height, "height")
        self.width = checks.count(width, "width")
        if grid not in GRIDS:
            raise ValueError(f"grid: expected one of {GRIDS}, got {grid!r}")
        self.grid = grid
        self.normalize = bool(normalize)
        self.neighbor_radius = _NEIGHBOR_RADIUS[grid]
        weight = torch.randn(self.num_units, self.latent_dim, generator=checks.generator(generator))
        weight = weight / math.sqrt(self.latent_dim)
        self.weight = nn.Parameter(F.normalize(weight, dim=1) if normalize else weight)
        self.register_buffer("coords", grid_coordinates(self.height, self.width, grid), persistent=False)

    @property
    def num_units(self) -> int:
        return self.height * self.width

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, height={self.height}, width={self.width}, "
                f"grid={self.grid!r}, normalize={self.normalize}")

    # -------------------------------------------------------------------------------- saving
    def _geometry(self) -> dict:
        return {"height": self.height, "width": self.width, "grid": self.grid, "normalize": self.normalize}

    def get_extra_state(self) -> dict:
        """The grid (``height``, ``width``, ``grid``) and ``normalize``: ``weight`` alone cannot tell
        a 3x4 map from a 2x6 one."""
        return self._geometry()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Check ``weight``'s shape and the recorded grid first (ValueError naming the key). A state
        without the grid record (a bare ``weight``) loads on its shape alone."""
        shape = (self.num_units, self.latent_dim)
        theirs = state_dict.get(prefix + "weight")
        if theirs is not None:
            if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != shape:
                got = f"shape {tuple(theirs.shape)}" if isinstance(theirs, torch.Tensor) else type(theirs).__name__
                raise ValueError(f"state_dict: '{prefix}weight' must have shape {shape} (height={self.height}, "
                                 f"width={self.width}, latent_dim={self.latent_dim}), got {got}")
            checks.finite_tensor(theirs, f"state_dict: '{prefix}weight'")
        extra_key = prefix + "_extra_state"
        geometry = state_dict.get(extra_key)
        if isinstance(geometry, dict) and {k: geometry.get(k) for k in self._geometry()} != self._geometry():
            def describe(g: dict) -> str:
                return f"a {g.get('height')}x{g.get('width')} {g.get('grid')} map, normalize={g.get('normalize')}"
            raise ValueError(f"state_dict: '{prefix}weight' holds {describe(geometry)} (its '{extra_key}'); "
                             f"this one is {describe(self._geometry())}")
        # The extra state is read here, not by Module: a state without it still loads.
        state_dict = {key: value for key, value in state_dict.items() if key != extra_key}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ----------------------------------------------------------------------------- distances
    def codebook(self) -> torch.Tensor:
        """Unit weights as used in distances (normalized when ``normalize``).  # (U, D)"""
        return F.normalize(self.weight, dim=1) if self.normalize else self.weight

    def _check_inputs(self, z, name: str) -> torch.Tensor:
        """``z`` in the weights' dtype and device, checked finite after the cast (no overflow to inf)."""
        checks.float_tensor(z, name)
        if z.ndim < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"{name}: expected shape (..., {self.latent_dim}), got {tuple(z.shape)}")
        return checks.finite_tensor(z.to(self.weight.device, self.weight.dtype), name)

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        """Checked inputs in the weights' dtype and device, normalized when ``normalize``."""
        z = z.to(self.weight.device, self.weight.dtype)
        return F.normalize(z, dim=-1) if self.normalize else z

    def _inputs(self, z, name: str = "z") -> torch.Tensor:
        return self._prepare(self._check_inputs(z, name))

    @staticmethod
    def _centered(z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and weights shifted by the weights' mean (a constant, no gradient)."""
        center = w.detach().mean(0)
        return z - center, w - center

    def _feature_sq(self, z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared Euclidean distances by one matmul, around the weights' mean, and each input's
        ``reach`` ``||z_c|| + max ||w_c||`` (no gradient), which bounds their rounding (see
        ``_nearest``; rank units with it).  (N, D), (U, D) -> (N, U), (N,)
        """
        z, w = self._centered(z, w)
        zz, ww = (z * z).sum(-1, keepdim=True), (w * w).sum(-1)  # (N, 1), (U,)
        reach = (zz.detach().sqrt() + ww.detach().max().sqrt()).squeeze(-1)
        return (zz - 2.0 * z @ w.T + ww).clamp_min(0.0), reach

    @torch.no_grad()
    def _nearest(self, z: torch.Tensor, w: torch.Tensor, distances: tuple[torch.Tensor, torch.Tensor],
                 k: int = 1) -> torch.Tensor:
        """Each input's ``k`` nearest units, nearest first, exact.  (N, D), (U, D) -> (N, k) long

        ``distances``: ``_feature_sq(z, w)``, off by at most ``bound = (D + 4) eps reach^2``
        (``eps`` of the matmul's precision). Their ranking stands where no other unit comes within
        ``3 bound`` of the k-th value and the k values are that far apart; other rows (near-ties,
        inputs far from the map) are ranked over all units by direct differences in float64.
        """
        feature_sq, reach = distances
        if k == 1:
            values, best = feature_sq.min(-1, keepdim=True)  # (N, 1)
        else:
            values, best = feature_sq.topk(k, dim=-1, largest=False)  # (N, k) ascending
        slack = 3 * (w.shape[1] + 4) * _matmul_eps(feature_sq.dtype) * reach.square()  # (N,)
        certain = (feature_sq <= (values[:, -1] + slack)[:, None]).sum(-1) == k
        if k > 1:
            certain &= (values.diff(dim=-1) > slack[:, None]).all(-1)
        unsure = (~certain).nonzero().squeeze(-1)
        if len(unsure):
            best[unsure] = self._rank_exactly(z[unsure], w, k)
        return best

    @staticmethod
    def _rank_exactly(z: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` nearest units by direct differences in float64.  (N, D), (U, D) -> (N, k) long"""
        wide = w.detach().to(torch.promote_types(w.dtype, torch.float64))
        rows = max(1, _CHUNK_ELEMENTS // w.numel())
        picks = []
        for start in range(0, z.shape[0], rows):
            diff = z[start:start + rows, None, :].detach().to(wide.dtype) - wide  # (n, U, D)
            picks.append(diff.square().sum(-1).topk(k, dim=-1, largest=False).indices)
        return torch.cat(picks) if picks else torch.zeros(0, k, dtype=torch.long, device=w.device)

    def grid_sq(self, units: torch.Tensor) -> torch.Tensor:
        """Squared grid distances from the given units to every unit.  (...,) -> (..., U)"""
        rows, cols = self.coords[units].unsqueeze(-1).unbind(-2)  # (..., 1) each
        return (rows - self.coords[:, 0]).square() + (cols - self.coords[:, 1]).square()

    def neighborhood(self, units: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian ``exp(-g^2 / (2 sigma^2))`` of the grid distance g from the given units to every
        unit, zero beyond ``g^2 / (2 sigma^2) > 30`` (about 7.7 sigma; keeps float32 clear of slow
        subnormals).  (...,) -> (..., U)
        """
        sigma = _check_positive(sigma, "sigma")
        scaled = self.grid_sq(units) / (2.0 * sigma * sigma)
        return torch.exp(-scaled.clamp_max(_CUTOFF)).masked_fill_(scaled > _CUTOFF, 0.0)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared grid distances from each input's best unit to every unit, and squared feature
        distances from each input to every unit.  (..., D) -> ((..., U), (..., U))
        """
        z = self._inputs(z)
        flat, w = z.reshape(-1, self.latent_dim), self.codebook()
        distances = self._feature_sq(flat, w)
        feature_sq = distances[0]  # (N, U)
        grid_sq = self.grid_sq(self._nearest(flat, w, distances)[:, 0])  # (N, U), no gradient: argmin is discrete
        shape = (*z.shape[:-1], self.num_units)
        return grid_sq.reshape(shape), feature_sq.reshape(shape)

    def loss(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        """Mean over inputs of ``sum_u h(bmu, u) ||z - w_u||^2``, ``h = exp(-g^2 / (2 sigma^2))``."""
        sigma = _check_positive(sigma, "sigma")
        z, w = self._inputs(z).reshape(-1, self.latent_dim), self.codebook()
        distances = self._feature_sq(z, w)
        best = self._nearest(z, w, distances)[:, 0]  # (N,)
        return (self.neighborhood(best, sigma) * distances[0]).sum(-1).mean()

    @torch.no_grad()
    def bmu(self, z: torch.Tensor) -> torch.Tensor:
        """Index of each input's best-matching unit.  (..., D) -> (...,) long"""
        z = self._inputs(z)
        flat, w = z.reshape(-1, self.latent_dim), self.codebook()
        return self._nearest(flat, w, self._feature_sq(flat, w))[:, 0].reshape(z.shape[:-1])

    # ---------------------------------------------------------------------- data-set measures
    def _check_data(self, data) -> None:
        checks.float_tensor(data, "data")
        if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] != self.latent_dim:
            raise ValueError(f"data: expected shape (N, {self.latent_dim}) with N >= 1, got {tuple(data.shape)}")
        checks.finite_tensor(data, "data")

    def _chunks(self, data):
        self._check_data(data)
        size = max(1, _CHUNK_ELEMENTS // self.num_units)
        for start in range(0, data.shape[0], size):
            yield self._prepare(data[start:start + size])

    @torch.no_grad()
    def quantization_error(self, data: torch.Tensor) -> float:
        """Mean Euclidean distance from each input to its best unit.  data: (N, D)"""
        w, total = self.codebook(), 0.0
        for z in self._chunks(data):
            best = self._nearest(z, w, self._feature_sq(z, w))[:, 0]  # (n,)
            total += (z - w[best]).norm(dim=-1).sum().item()
        return total / data.shape[0]

    @torch.no_grad()
    def topographic_error(self, data: torch.Tensor) -> float:
        """Fraction of inputs whose two best units are not adjacent on the grid.  data: (N, D)"""
        if self.num_units < 2:
            raise ValueError("topographic_error: undefined for a map of one unit")
        w, errors = self.codebook(), 0
        for z in self._chunks(data):
            first, second = self._nearest(z, w, self._feature_sq(z, w), k=2).unbind(-1)
            gap = (self.coords[first] - self.coords[second]).norm(dim=-1)  # (n,)
            errors += int((gap > self.neighbor_radius + _TOL).sum())
        return errors / data.shape[0]

    @torch.no_grad()
    def neighbor_pairs(self) -> torch.Tensor:
        """Index pairs (a, b) of adjacent units, both directions.  # (E, 2) long"""
        rows = torch.arange(self.height, device=self.coords.device).repeat_interleave(self.width)
        cols = torch.arange(self.width, device=self.coords.device).repeat(self.height)
        pairs = []
        for dr, dc in [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]:
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < self.height) & (c >= 0) & (c < self.width)
            a, b = (rows * self.width + cols)[inside], (r * self.width + c)[inside]
            near = (self.coords[a] - self.coords[b]).norm(dim=-1) <= self.neighbor_radius + _TOL
            pairs.append(torch.stack([a[near], b[near]], dim=1))
        return torch.cat(pairs)

    @torch.no_grad()
    def umatrix(self) -> torch.Tensor:
        """Mean feature distance from each unit to its adjacent units.  # (H, W)"""
        w = self.codebook()
        a, b = self.neighbor_pairs().unbind(-1)
        gaps = (w[a] - w[b]).norm(dim=-1)  # (E,)
        total = torch.zeros(self.num_units, dtype=w.dtype, device=w.device).index_add_(0, a, gaps)
        count = torch.bincount(a, minlength=self.num_units).clamp_min(1)
        return (total / count).reshape(self.height, self.width)

    # ------------------------------------------------------------------------------ training
    @torch.no_grad()
    def fit(self, data: torch.Tensor, epochs: int, batch_size: int, *,
            sigma: tuple[float, float] | None = None, lr: tuple[float, float] = (0.5, 0.02),
            generator: torch.Generator | None = None,
            callback: Callable[[dict], None] | None = None) -> list[dict]:
        """Mini-batch SOM training with sigma and learning rate annealed geometrically per batch.

        Each batch applies the sum of its inputs' online Kohonen updates, ``lr sum_n h_nu (z_n - w_u)``,
        capped so that no unit moves past its neighborhood-weighted batch mean: unit u moves
        ``min(lr m_u, 1)`` of the way there, ``m_u = sum_n h_nu``. With ``batch_size=1`` this is
        exactly the online rule (MiniSom's); where ``lr m_u >= 1`` it is the classic batch-SOM step.

        Args:
            data: inputs  # (N, D), any device (batches are moved to the map's).
            epochs, batch_size: passes over the data and inputs per update.
            sigma: (start, end) neighborhood width in grid units; default (max(H, W) / 2, 0.5).
            lr: (start, end) learning rate in (0, 1].
            generator: a CPU torch.Generator (``None``: fresh entropy) for the shuffling; the
                permutations are drawn on the CPU and then moved to ``data``'s device.
            callback: called after each epoch with that epoch's record.

        Returns:
            One record per epoch: epoch, sigma and lr at its end, and quantization_error (mean
            distance to the best unit, measured on each batch before its update).
        """
        epochs = checks.count(epochs, "epochs")
        batch_size = checks.count(batch_size, "batch_size")
        sigma = _check_schedule((max(self.height, self.width) / 2.0, 0.5) if sigma is None else sigma, "sigma")
        lr = _check_schedule(lr, "lr", upper=1.0)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
        self._check_data(data)
        generator = checks.generator(generator)

        n = data.shape[0]
        steps_per_epoch = math.ceil(n / batch_size)
        last = max(epochs * steps_per_epoch - 1, 1)
        history = []
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(data.device)
            qe_sum = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
            for k in range(steps_per_epoch):
                frac = (epoch * steps_per_epoch + k) / last
                s = sigma[0] * (sigma[1] / sigma[0]) ** frac
                a = lr[0] * (lr[1] / lr[0]) ** frac
                batch = data[order[k * batch_size:(k + 1) * batch_size]]
                qe_sum += self._batch_step(self._prepare(batch), s, a)
            record = {"epoch": epoch + 1, "sigma": s, "lr": a, "quantization_error": qe_sum.item() / n}
            history.append(record)
            if callback is not None:
                callback(record)
        return history

    def _batch_step(self, z: torch.Tensor, sigma: float, lr: float) -> torch.Tensor:
        """One SOM update from a prepared batch ``(B, D)``; returns the batch's summed distance to
        the best unit (before the update)."""
        w = self.weight  # (U, D), updated in place under no_grad
        if self.normalize:  # the codebook the distances use (gradient steps leave the weights off the sphere)
            w.copy_(F.normalize(w, dim=1))
        bmu = self._nearest(z, w, self._feature_sq(z, w))[:, 0]  # (B,)
        distance = (z - w[bmu]).norm(dim=-1).sum()
        active, slot = torch.unique(bmu, return_inverse=True)  # (A,), (B,)
        sums = torch.zeros(len(active), self.latent_dim, dtype=z.dtype, device=z.device).index_add_(0, slot, z)
        counts = torch.bincount(slot, minlength=len(active)).to(z.dtype)  # (A,)
        h = self.neighborhood(active, sigma)  # (A, U)
        mass = h.T @ counts  # (U,)
        rate = torch.minimum(torch.full_like(mass, lr), 1.0 / mass)  # (U,), inf where mass == 0
        w.add_((h.T @ sums - mass[:, None] * w) * rate[:, None])
        if self.normalize:
            w.copy_(F.normalize(w, dim=1))
        return distance
