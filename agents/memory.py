"""Spatial memory of a TEM-style agent: percepts stored under location codes, per agent in a batch.

Each agent owns ``capacity`` preallocated slots holding a Fourier location code ``(L,)`` and a
percept ``(P,)``. Recall runs both ways:

- ``recall_percept(codes)``: what was seen here? Attention over stored entries with weights
  ``exp(-d^2 / (2 recall_scale^2))``, d the Fourier pseudo-distance (world units). A code dot
  product (a grid kernel on positions) shortlists ``candidates`` entries in one matmul; exact
  pseudo-distances are computed on the shortlist only.
- ``recall_location(percepts)``: where did I see this? The ``k`` entries nearest under the learned
  percept pseudometric, with their codes and kernel weights, to correct a drifting estimate.

Why the first stage scores coarse modules only. The dot product of two codes is a sum of one
grid kernel per module, ``sum_i cos(alpha_j <k_i, x - y>)``, which falls with distance only out to
half its wavelength and then oscillates. Fine modules (wavelengths below the distances that matter)
add nothing but that oscillation: with ``FourierMetric(120, scale=10)`` (finest wavelength 0.03)
the full dot product lost the nearest entry for about 1% of queries and recalled percepts off by
up to 0.5. The first stage therefore uses the leading modules whose wavelength is at least
``4 * reach`` (``reach = max(place_radius, 3 * recall_scale)``, beyond which the kernel weighs
less than 1% of a match): each of their kernels falls monotonically along every ray out to
``2 * reach`` and is nearly isotropic there (in the plane, up to sixth order in the distance),
and the exact pseudo-distances rerank the shortlist. Codes whose
modules are all that coarse (the 48-d, scale-512 codes of the benchmark) are scored in full, as
before; at least the coarsest module is always used.

Writes are novelty-gated: an item whose place is within ``place_radius`` of a stored entry with a
percept within ``percept_radius`` merges into it instead of taking a slot: the percept becomes the
running mean, and the code moves to the running mean place (by that fraction of the displacement
to the new items, ``FourierMetric.displacement`` / ``apply_displacement``), its pair lengths the
running mean of the pair lengths (1 for valid codes). Averaging the codes themselves instead
shortens the (cos, sin) pairs of fine modules towards 0 and scatters their phases, so the entry
stops being the code of any place.

Inputs. Codes and percepts must be finite (a ValueError naming the argument, raised before
anything changes); other floating dtypes are cast to the memory's dtype (float32 by default, in
which entries are stored anyway: a code's float32 rounding moves its place by ~1e-7 of the finest
wavelength), and results come in the memory's dtype.

Eviction rule: least recently refreshed first (the oldest last write or merge; ties to the entry
with fewer merged observations). Every revisit that sees the same thing refreshes an entry, so
places the agent keeps coming back to survive, while one-off sightings and percepts that have
since changed (a tree eaten bare stores a new entry at the same place) age out. It needs one
top-k selection over the slots per write, no extra hyperparameter, and recall stays read-only.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import nn

from treeworld import checks
from treeworld.agents.fourier import FourierMetric
from treeworld.agents.pseudometric import PseudoMetric
from treeworld.agents.topography import Topography

_INF = float("inf")
_CHUNK = 1 << 22  # score elements per block of queries (bounds the (B, q, C) temporaries)


class MapUnits(NamedTuple):
    """One agent's map layer: per unit a location code, a percept prototype and a grid position."""
    codes: torch.Tensor  # (U, L)
    percepts: torch.Tensor  # (U, P)
    coords: torch.Tensor  # (U, 2)


def _topk(scores: torch.Tensor, k: int, block: int = 32) -> torch.Tensor:
    """Indices of the k largest scores along the last axis, as ``scores.topk(k)`` but faster on long
    rows: the k largest lie in the k blocks of ``block`` columns with the largest maxima.  (..., C) -> (..., k)
    """
    n = scores.shape[-1] // block
    if n <= k:
        return scores.topk(k, dim=-1).indices
    head = n * block
    blocks = scores[..., :head].unflatten(-1, (n, block)).amax(-1).topk(k, dim=-1).indices  # (..., k)
    index = (blocks.unsqueeze(-1) * block + torch.arange(block, device=scores.device)).flatten(-2)  # (..., k*block)
    tail = torch.arange(head, scores.shape[-1], device=scores.device).expand(*scores.shape[:-1], -1)
    index = torch.cat([index, tail], dim=-1)  # the last partial block joins in full
    return index.gather(-1, scores.gather(-1, index).topk(k, dim=-1).indices)


#: The memory's scalar settings saved with its state (``place_radius`` ... ``percept_scale``).
RADII = ("place_radius", "percept_radius", "recall_scale", "percept_scale")


class SpatialMemory(nn.Module):
    """Preallocated (location code, percept) store for ``batch_size`` agents.

    Args:
        location_metric: FourierMetric of the codes (L = location_metric.location_dim).
        percept_metric: PseudoMetric of the percepts (P = percept_metric.vector_dim).
        capacity: slots per agent.
        batch_size: number of agents, each with its own independent memory.
        place_radius: world units; novelty gate on the Fourier pseudo-distance.
        percept_radius: pseudometric units; novelty gate on the percept distance.
        recall_scale: world units; width of the recall_percept kernel (default place_radius / 2:
            entries about place_radius apart then weigh exp(-2) of an exact match).
        percept_scale: pseudometric units; width of the recall_location kernel (default
            percept_radius).
        candidates: shortlist size of the dot-product first stage (scored with the modules of
            wavelength >= 4 * reach, see the module docstring).

    Buffers (B agents, C slots): codes (B, C, L), percepts (B, C, P), valid (B, C) bool,
    counts (B, C) observations merged per entry, refreshed (B, C) step of the last write or merge,
    clock (B,) write steps per agent. The metrics are submodules (saved and moved with it).
    """

    def __init__(self, location_metric: FourierMetric, percept_metric: PseudoMetric, capacity: int,
                 batch_size: int = 1, *, place_radius: float = 1.0, percept_radius: float = 0.25,
                 recall_scale: float | None = None, percept_scale: float | None = None,
                 candidates: int = 16):
        super().__init__()
        self.location_metric = checks.instance(location_metric, FourierMetric, "location_metric")
        self.percept_metric = checks.instance(percept_metric, PseudoMetric, "percept_metric")
        self.capacity = checks.count(capacity, "capacity")
        self.batch_size = checks.count(batch_size, "batch_size")
        self.place_radius = checks.positive(place_radius, "place_radius")
        self.percept_radius = checks.positive(percept_radius, "percept_radius")
        self.recall_scale = checks.positive(self.place_radius / 2 if recall_scale is None else recall_scale,
                                            "recall_scale")
        self.percept_scale = checks.positive(self.percept_radius if percept_scale is None else percept_scale,
                                             "percept_scale")
        self.candidates = checks.count(candidates, "candidates")
        self.location_dim = location_metric.location_dim
        self.percept_dim = percept_metric.vector_dim

        B, C, dtype = self.batch_size, self.capacity, torch.get_default_dtype()
        for name, held in (("location_metric", location_metric.alphas), ("percept_metric", percept_metric.embedding)):
            if held.dtype != dtype:
                raise ValueError(f"{name}: expected dtype {dtype} (torch's default, the memory's), got {held.dtype}; "
                                 "build the metrics and the memory under one default dtype (convert the memory "
                                 "as a whole with .to() after building it)")
        self.register_buffer("codes", torch.zeros(B, C, self.location_dim, dtype=dtype))
        self.register_buffer("percepts", torch.zeros(B, C, self.percept_dim, dtype=dtype))
        self.register_buffer("valid", torch.zeros(B, C, dtype=torch.bool))
        self.register_buffer("counts", torch.zeros(B, C, dtype=torch.long))
        self.register_buffer("refreshed", torch.zeros(B, C, dtype=torch.long))
        self.register_buffer("clock", torch.zeros(B, dtype=torch.long))
        # The map layer, attached by consolidate(): a Topography over [code, w * percept].
        self.topography: Topography | None = None
        self.percept_weight = 1.0
        self.register_buffer("map_weights", None)  # (B, U, L + P)
        self.register_buffer("map_ready", None)  # (B,) bool
        # recall_location's shortlist keys, kept in step with the percepts (see _percept_keys).
        self.register_buffer("_keys", None, persistent=False)  # (B, C, M) embedded percepts
        self.register_buffer("_keys_sq", None, persistent=False)  # (B, C) their squared norms
        self._keys_tag = None

    def extra_repr(self) -> str:
        return (f"batch_size={self.batch_size}, capacity={self.capacity}, location_dim={self.location_dim}, "
                f"percept_dim={self.percept_dim}, place_radius={self.place_radius}, "
                f"percept_radius={self.percept_radius}, candidates={self.candidates}")

    @property
    def size(self) -> torch.Tensor:
        """Stored entries per agent.  # (B,) long"""
        return self.valid.sum(-1)

    @property
    def reach(self) -> float:
        """World units out to which the first stage ranks entries by distance reliably:
        ``max(place_radius, 3 * recall_scale)`` (the novelty gate, and where the recall kernel
        falls to ~1% of a match)."""
        return max(self.place_radius, 3.0 * self.recall_scale)

    def _first_stage_columns(self) -> slice | torch.Tensor:
        """Code columns the first stage scores: the modules of wavelength ``>= 4 * reach``.

        A slice when they lead the code (always for a FourierMetric, whose modules run coarsest
        first), else an index tensor; the coarsest module when none is that coarse.
        """
        metric = self.location_metric
        block = 2 * (metric.dim + 1)
        wavelengths = [2.0 * math.pi / alpha for alpha in metric.alphas.tolist()]
        keep = [j for j, wavelength in enumerate(wavelengths) if wavelength >= 4.0 * self.reach]
        if not keep:
            keep = [max(range(len(wavelengths)), key=wavelengths.__getitem__)]
        if keep == list(range(len(keep))):
            return slice(0, len(keep) * block)
        columns = [j * block + c for j in keep for c in range(block)]
        return torch.tensor(columns, device=self.codes.device)

    # ------------------------------------------------------------------------------ checking
    def _check(self, tensor, name: str, size: int, what: str, max_items: int | None = None) -> torch.Tensor:
        """Validate ``(B, size)`` or ``(B, K, size)`` finite floats; returns the ``(B, K, size)`` view
        in the memory's dtype (a differentiable cast; values beyond its range are a ValueError)."""
        checks.float_tensor(tensor, name)
        if tensor.ndim not in (2, 3) or tensor.shape[0] != self.batch_size or tensor.shape[-1] != size:
            raise ValueError(f"{name}: expected shape ({self.batch_size}, {size}) or ({self.batch_size}, K, "
                             f"{size}) for batch_size={self.batch_size}, {what}={size}; got {tuple(tensor.shape)}")
        if max_items is not None and tensor.ndim == 3 and tensor.shape[1] > max_items:
            raise ValueError(f"{name}: expected at most capacity={max_items} items per agent, got {tensor.shape[1]}")
        checks.finite_tensor(tensor, name)
        dtype = self.codes.dtype
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name}: expected values within the range of {dtype} (the memory's dtype), "
                                 f"got magnitudes up to {float(tensor.detach().abs().max())} after the cast")
        return tensor if tensor.ndim == 3 else tensor.unsqueeze(1)

    def _check_agent(self, agent, name: str = "agent") -> int:
        agent = checks.integer(agent, name)
        if not 0 <= agent < self.batch_size:
            raise ValueError(f"{name}: expected 0 <= {name} < batch_size={self.batch_size}, got {agent}")
        return agent

    # ------------------------------------------------------------------------------- recall
    def _gather(self, store: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """store (B, C, ...), index (B, Q, k) -> (B, Q, k, ...)"""
        offset = self.capacity * torch.arange(self.batch_size, device=index.device)[:, None, None]
        picked = store.flatten(0, 1).index_select(0, (index + offset).flatten())
        return picked.unflatten(0, index.shape)

    @property
    def used_slots(self) -> int:
        """Leading slots that hold every stored entry of every agent: new entries take the lowest
        free slot, so the slots past the last stored entry of any agent are empty."""
        occupied = self.valid.any(0).nonzero()
        return int(occupied[-1]) + 1 if len(occupied) else 0

    def _scored_slots(self, k: int = 0) -> int:
        """:attr:`used_slots`, at least ``k`` (at most the capacity)."""
        return min(self.capacity, max(self.used_slots, k))

    def _top_slots(self, queries: torch.Tensor, keys: torch.Tensor, offset: torch.Tensor | None,
                   k: int) -> torch.Tensor:
        """The k slots with the largest scores ``queries @ keys + offset``, empty slots last.

        queries (B, Q, D), keys (B, D, C), offset (B, 1, C) or None -> (B, Q, k). New entries take
        the lowest free slot, so only the leading slots up to the last stored entry are scored, and
        masking is skipped when they are all occupied (always, for one agent).
        """
        n = self._scored_slots(k)
        keys = keys[..., :n]
        offset = None if offset is None else offset[..., :n]
        valid = self.valid[:, None, :n]  # (B, 1, n)
        if not valid.all():
            absent = torch.zeros_like(valid, dtype=keys.dtype).masked_fill_(~valid, -_INF)
            offset = absent if offset is None else offset + absent
        rows = max(1, _CHUNK // (self.batch_size * n))
        with torch.no_grad():
            return torch.cat([_topk(part @ keys if offset is None else torch.baddbmm(offset, part, keys), k)
                              for part in queries.split(rows, dim=1)], dim=1)

    def _shortlist(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate slots by the dot product of the coarse modules' codes, then exact squared
        pseudo-distances on them.

        codes (B, Q, L) -> slots (B, Q, k), dist_sq (B, Q, k) (inf at empty slots).
        """
        columns = self._first_stage_columns()
        queries, keys = codes.detach()[..., columns], self.codes[..., columns]
        slots = self._top_slots(queries, keys.transpose(1, 2), None, min(self.candidates, self.capacity))
        dist_sq = self.location_metric.pseudo_distance(codes.unsqueeze(2), self._gather(self.codes, slots),
                                                       squared=True)
        return slots, dist_sq.masked_fill(~self._gather(self.valid, slots), _INF)

    def recall_percept(self, codes: torch.Tensor, nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Percepts remembered at the given places, and how sure.

        codes (B, L) or (B, Q, L) -> percepts (B, [Q,] P), confidence (B, [Q,]) in [0, 1]: the
        kernel value of the nearest stored entry (0 for an empty memory). The percepts are the
        kernel-weighted mean of the entries (differentiable in codes) or, with ``nearest``, the
        nearest entry's own percept (a stored look, never a blend of two neighbours' looks; zeros
        for an empty memory).
        """
        single = codes.ndim == 2
        codes = self._check(codes, "codes", self.location_dim, "location_dim")
        slots, dist_sq = self._shortlist(codes)
        logits = -dist_sq / (2.0 * self.recall_scale ** 2)  # (B, Q, k), -inf at empty slots
        best = logits.max(-1).values  # (B, Q)
        if nearest:
            logits = torch.where((logits == best.unsqueeze(-1)) & (logits > -math.inf), 0.0, -math.inf)
        attention = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all -inf rows -> 0
        percepts = torch.einsum("bqk,bqkp->bqp", attention, self._gather(self.percepts, slots))  # (B, Q, P)
        confidence = best.exp()
        return (percepts.squeeze(1), confidence.squeeze(1)) if single else (percepts, confidence)

    def recall_location(self, percepts: torch.Tensor, k: int = 4, return_slots: bool = False):
        """The ``k`` stored places whose percepts are nearest under the percept pseudometric.

        percepts (B, P) or (B, Q, P) -> codes (B, [Q,] k, L), weights (B, [Q,] k): kernel values
        ``exp(-d^2 / (2 percept_scale^2))`` nearest first, 0 for empty slots (normalize them to
        average the places); with ``return_slots`` also the slots (B, [Q,] k) they are stored in.
        """
        k = checks.count(k, "k")
        if k > self.capacity:
            raise ValueError(f"k: expected <= capacity={self.capacity}, got {k}")
        single = percepts.ndim == 2
        percepts = self._check(percepts, "percepts", self.percept_dim, "percept_dim")
        with torch.no_grad():  # shortlist by 2 <E x, E y> - ||E y||^2 = ||E x||^2 - ||E (x - y)||^2
            keys, keys_sq = self._percept_keys()
            wide = max(k, min(self.candidates, self.capacity))
            queries = self.percept_metric.embed(percepts)  # (B, Q, M)
            slots = self._top_slots(2.0 * queries, keys.transpose(1, 2), -keys_sq[:, None, :], wide)
        dist_sq = self._percept_distances(percepts, queries, slots)
        dist_sq = dist_sq.masked_fill(~self._gather(self.valid, slots), _INF)
        nearest, order = dist_sq.topk(k, dim=-1, largest=False)  # (B, Q, k), exact
        slots = slots.gather(-1, order)
        weights = torch.exp(-nearest / (2.0 * self.percept_scale ** 2))
        codes = self._gather(self.codes, slots)  # (B, Q, k, L)
        out = (codes, weights, slots) if return_slots else (codes, weights)
        return tuple(x.squeeze(1) for x in out) if single else out

    def _percept_distances(self, percepts: torch.Tensor, queries: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Squared percept pseudo-distances from percepts (B, Q, P), embedded as queries (B, Q, M),
        to the stored slots (B, Q, k) -> (B, Q, k). Without autograd, from the cached keys
        (``||E x - E y||``: no product with E per pair); with it, through the pseudometric, so
        gradients reach the percepts and the embedding."""
        if torch.is_grad_enabled() and (percepts.requires_grad or self.percept_metric.embedding.requires_grad):
            return self.percept_metric.pseudo_distance(percepts.unsqueeze(2), self._gather(self.percepts, slots),
                                                       squared=True)
        # ||q - k||^2 = ||q||^2 - 2 <q, k> + ||k||^2, the products over the scored slots in one batched
        # matmul (gathering k-d keys per pair cost more than all of them); empty slots are masked by the caller
        keys, keys_sq = self._percept_keys()
        queries = queries.detach()
        n = self._scored_slots(int(slots.max()) + 1 if slots.numel() else 0)
        dots = (queries @ keys[:, :n].transpose(1, 2)).gather(-1, slots)  # (B, Q, k)
        norms = keys_sq.gather(1, slots.flatten(1)).view_as(slots)
        return (queries.square().sum(-1, keepdim=True) - 2.0 * dots + norms).clamp_min(0.0)

    def _keys_version(self) -> tuple:
        """Identity and in-place version of the percepts and the embedding the keys derive from."""
        embedding = self.percept_metric.embedding
        return (self.percepts.data_ptr(), self.percepts._version, embedding.data_ptr(), embedding._version)

    def _percept_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored percepts through the pseudometric's embedding (B, C, M) and their squared norms
        (B, C): the shortlist keys of recall_location. Kept in step by the memory's own writes
        (only the changed slots are re-embedded) and recomputed whenever the percepts or the
        embedding changed otherwise (an optimizer step, a load)."""
        if self._keys_tag != self._keys_version():
            self._keys = self.percept_metric.embed(self.percepts)
            self._keys_sq = self._keys.square().sum(-1)
            self._keys_tag = self._keys_version()
        return self._keys, self._keys_sq

    def _rekey(self, fresh: bool, agents: torch.Tensor, slots: torch.Tensor) -> None:
        """After the memory changed the percepts of (agents[i], slots[i]): re-embed those slots if
        the keys were ``fresh`` before the change (else they are recomputed on the next recall)."""
        if fresh:
            keys = self.percept_metric.embed(self.percepts[agents, slots])
            self._keys[agents, slots] = keys
            self._keys_sq[agents, slots] = keys.square().sum(-1)
            self._keys_tag = self._keys_version()

    # -------------------------------------------------------------------------------- write
    @torch.no_grad()
    def write(self, codes: torch.Tensor, percepts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Store (code, percept) items, merging those already stored near the same place.

        codes (B, L) or (B, K, L), percepts (B, [K,] P), mask (B, [K]) bool (False: skip). Items
        of one call are gated against the entries stored before the call, not against each
        other. Codes and percepts must be finite, masked-out items too (ValueError before anything
        changes). Returns the slot each item was stored in or merged into, -1 where skipped.  # (B, [K])
        """
        single = codes.ndim == 2
        codes = self._check(codes, "codes", self.location_dim, "location_dim", max_items=self.capacity)
        percepts = self._check(percepts, "percepts", self.percept_dim, "percept_dim")
        if percepts.shape[1] != codes.shape[1]:
            raise ValueError(f"percepts: expected {codes.shape[1]} items per agent like codes, "
                             f"got {percepts.shape[1]}")
        B, K = codes.shape[:2]
        if mask is None:
            mask = torch.ones(B, K, dtype=torch.bool, device=codes.device)
        elif not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
                  and mask.shape == codes.shape[:1 + (not single)]):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask: expected a bool tensor of shape {(B,) if single else (B, K)}, got {got}")
        mask = mask.reshape(B, K)
        codes, percepts = codes.to(self.codes.dtype), percepts.to(self.percepts.dtype)
        fresh_keys = self._keys_tag == self._keys_version()
        self.clock += mask.any(-1)
        rows = torch.arange(B, device=codes.device)[:, None].expand(B, K)  # (B, K)

        # Novelty gate: the nearest shortlisted entry close in place and in percept.
        slots, place_sq = self._shortlist(codes)  # (B, K, k)
        percept_sq = self._percept_distances(percepts, self.percept_metric.embed(percepts), slots)
        match = (place_sq <= self.place_radius ** 2) & (percept_sq <= self.percept_radius ** 2)
        nearest = place_sq.masked_fill(~match, _INF).argmin(-1, keepdim=True)
        target = slots.gather(-1, nearest).squeeze(-1)  # (B, K)
        merged = mask & match.any(-1)
        new = mask & ~merged
        self._merge(rows[merged], target[merged], codes[merged], percepts[merged])

        # New items take free slots first, then the least recently refreshed (fewest merges).
        taken = int(new.sum(-1).max())
        if taken:
            index = torch.arange(self.capacity, device=codes.device)
            key = torch.where(self.valid, self.refreshed * (1 << 31) + self.counts.clamp_max((1 << 31) - 1),
                              index - self.capacity)  # (B, C), free slots negative and first
            free = key.topk(taken, dim=-1, largest=False).indices  # (B, taken)
            rank = (new.cumsum(-1) - 1).clamp(0, taken - 1)  # (B, K)
            target = torch.where(new, free.gather(-1, rank), target)
            b, s = rows[new], target[new]
            self.codes[b, s] = codes[new]
            self.percepts[b, s] = percepts[new]
            self.valid[b, s] = True
            self.counts[b, s] = 1
            self.refreshed[b, s] = self.clock[b]
        target = target.masked_fill(~mask, -1)
        self._rekey(fresh_keys, rows[mask], target[mask])
        return target.squeeze(1) if single else target

    def _merge(self, agents: torch.Tensor, slots: torch.Tensor, codes: torch.Tensor, percepts: torch.Tensor) -> None:
        """Fold codes[i] and percepts[i] into the entries (agents[i], slots[i]).  # (M,), (M,), (M, L), (M, P)

        Percepts become running means. Codes move to the running mean place: by ``n / (old + n)``
        of the mean displacement to the entry's ``n`` new items (readings of the displacement are
        exact within the metric's ``scale``, and merged items lie within ``place_radius``), with
        each (cos, sin) pair's length the running mean of the pair lengths, so valid codes stay
        valid (unit pairs, no drift over many merges) and decode to the mean of what was merged.
        """
        if len(agents) == 0:
            return
        metric = self.location_metric
        flat, group = torch.unique(agents * self.capacity + slots, return_inverse=True)  # (G,), (M,)
        b, s = flat // self.capacity, flat % self.capacity
        n = torch.bincount(group, minlength=len(flat))  # (G,)
        old = self.counts[b, s]
        total = (old + n).to(codes.dtype)[:, None]  # (G, 1)

        added = torch.zeros(len(flat), percepts.shape[-1], dtype=percepts.dtype, device=percepts.device)
        added.index_add_(0, group, percepts)
        self.percepts[b, s] = (self.percepts[b, s] * old[:, None] + added) / total

        stored = self.codes[b, s]  # (G, L)
        _, delta = metric.displacement(stored[group], codes)  # (M, dim)
        step = torch.zeros(len(flat), metric.dim, dtype=delta.dtype, device=delta.device).index_add_(0, group, delta)
        moved = metric.apply_displacement(stored, step / total).to(stored.dtype).unflatten(-1, (-1, 2))  # (G, L/2, 2)
        length = torch.zeros(len(flat), moved.shape[1], dtype=codes.dtype, device=codes.device)
        length.index_add_(0, group, codes.unflatten(-1, (-1, 2)).norm(dim=-1))
        length = (stored.unflatten(-1, (-1, 2)).norm(dim=-1) * old[:, None] + length) / total  # (G, L/2)
        scale = length / moved.norm(dim=-1).clamp_min(torch.finfo(moved.dtype).tiny)  # a zero pair stays zero
        self.codes[b, s] = (moved * scale[..., None]).flatten(-2)
        self.counts[b, s] = old + n
        self.refreshed[b, s] = self.clock[b]

    @torch.no_grad()
    def reset(self, agents: list[int] | None = None) -> None:
        """Forget everything (``agents=None``) or the listed agents' entries and maps."""
        chosen = list(range(self.batch_size)) if agents is None else [self._check_agent(a, "agents") for a in agents]
        fresh_keys = self._keys_tag == self._keys_version()
        for name in ("codes", "percepts", "valid", "counts", "refreshed", "clock"):
            getattr(self, name)[chosen] = 0
        if fresh_keys:  # zero percepts embed to zero keys
            self._keys[chosen], self._keys_sq[chosen] = 0.0, 0.0
            self._keys_tag = self._keys_version()
        if self.map_ready is not None:
            self.map_ready[chosen] = False

    def entries(self, agent: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One agent's stored entries: codes (n, L), percepts (n, P)."""
        agent = self._check_agent(agent)
        keep = self.valid[agent]
        return self.codes[agent, keep], self.percepts[agent, keep]

    # ---------------------------------------------------------------------------- map layer
    def _attach(self, topography: Topography, percept_weight: float) -> None:
        shape = (self.batch_size, topography.num_units, topography.latent_dim)
        self.topography = topography
        self.percept_weight = percept_weight
        self.map_weights = torch.zeros(shape, dtype=self.codes.dtype, device=self.codes.device)
        self.map_ready = torch.zeros(self.batch_size, dtype=torch.bool, device=self.codes.device)

    def consolidate(self, topography: Topography, agent: int | None = None, *, epochs: int = 10,
                    batch_size: int = 256, sigma: tuple[float, float] | None = None,
                    lr: tuple[float, float] = (0.5, 0.02), percept_weight: float = 1.0,
                    generator: torch.Generator | None = None) -> Topography:
        """Fit (first time) or update the map layer of one agent or all over their stored entries.

        The map is a Topography over features ``[code, percept_weight * percept]`` (its
        latent_dim must be L + P); each agent keeps its own unit weights, a new map starts from
        random stored entries. Fit arguments go to ``Topography.fit``; for an update pass a small
        sigma. Returns the topography, holding the last fitted agent's weights.

        ``generator``: a CPU ``torch.Generator`` (``None``: fresh entropy) for the starting entries
        and the shuffling; the draws happen on the CPU and then move to the memory's device.
        """
        checks.instance(topography, Topography, "topography")
        expected = self.location_dim + self.percept_dim
        if topography.latent_dim != expected or topography.normalize:
            raise ValueError(f"topography: expected latent_dim=location_dim+percept_dim={expected} and "
                             f"normalize=False, got latent_dim={topography.latent_dim}, "
                             f"normalize={topography.normalize}")
        # Checked here, before the map is reset or the topography's weights are touched (fit checks
        # them again, with its own rules, e.g. lr <= 1).
        epochs = checks.count(epochs, "epochs")
        batch_size = checks.count(batch_size, "batch_size")
        for name, schedule in [("lr", lr)] + ([] if sigma is None else [("sigma", sigma)]):
            if not isinstance(schedule, (tuple, list)) or len(schedule) != 2:
                raise TypeError(f"{name}: expected a (start, end) pair, got {schedule!r}")
            for value in schedule:
                value = checks.positive(value.item() if isinstance(value, torch.Tensor) and value.numel() == 1
                                        else value, name)
                if name == "lr" and value > 1:
                    raise ValueError(f"lr: expected values <= 1, got {value}")
        percept_weight = checks.positive(percept_weight, "percept_weight")
        generator = checks.generator(generator)
        agents = range(self.batch_size) if agent is None else [self._check_agent(agent)]
        for b in agents:
            if not self.valid[b].any():
                raise ValueError(f"agent: agent {b} has no stored entries to consolidate")
        if (topography is not self.topography or percept_weight != self.percept_weight
                or self.map_weights.shape[1] != topography.num_units):
            self._attach(topography, percept_weight)
        for b in agents:
            codes, percepts = self.entries(b)
            features = torch.cat([codes, percept_weight * percepts], dim=-1)  # (n, L + P)
            with torch.no_grad():
                if self.map_ready[b]:
                    start = self.map_weights[b]
                else:
                    picks = torch.randint(len(features), (topography.num_units,), generator=generator)
                    start = features[picks.to(features.device)]
                topography.weight.copy_(start)
            topography.fit(features, epochs, batch_size, sigma=sigma, lr=lr, generator=generator)
            self.map_weights[b] = topography.weight.detach()
            self.map_ready[b] = True
        return topography

    def map_units(self, agent: int = 0) -> MapUnits:
        """One agent's map layer: unit codes (U, L), percept prototypes (U, P), grid coords (U, 2)."""
        agent = self._check_agent(agent)
        if self.map_ready is None or not self.map_ready[agent]:
            raise RuntimeError(f"map_units: agent {agent} has no map layer; call consolidate() first")
        weights = self.map_weights[agent]
        return MapUnits(weights[:, :self.location_dim], weights[:, self.location_dim:] / self.percept_weight,
                        self.topography.coords)

    # ------------------------------------------------------------------------------- saving
    def get_extra_state(self) -> dict:
        spec = None
        if self.topography is not None:
            t = self.topography
            spec = {"height": t.height, "width": t.width, "grid": t.grid, "percept_weight": self.percept_weight}
        return {"map": spec, "radii": {name: getattr(self, name) for name in RADII}}

    def set_extra_state(self, state: dict) -> None:
        """The recall and merge radii as saved (a state without them keeps this memory's); the map
        geometry is rebuilt in _load_from_state_dict, before the tensors load."""
        radii = state.get("radii") if isinstance(state, dict) else None
        for name, value in (radii or {}).items():
            if name in RADII:
                setattr(self, name, checks.positive(value, f"state_dict: '_extra_state' {name}"))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Check the whole state first, then rebuild the map geometry and load.

        Every tensor of the memory, its map and its metrics is checked against the shape this
        memory expects (ValueError naming the key, e.g. another capacity, batch_size, code length
        or metric rank) and for finite values, and the metrics' own checks run on copies of them,
        before anything changes: a state that fails leaves the memory as it was, also when it is
        loaded as part of a larger module. Then the map geometry is rebuilt, so that
        load_state_dict, also of a module holding this memory, restores everything.
        """
        spec = state_dict.get(prefix + "_extra_state", {}).get("map")
        context = (f"batch_size={self.batch_size}, capacity={self.capacity}, location_dim={self.location_dim}, "
                   f"percept_dim={self.percept_dim}")
        B, C = self.batch_size, self.capacity
        required = {"codes": (B, C, self.location_dim), "percepts": (B, C, self.percept_dim), "valid": (B, C),
                    "counts": (B, C), "refreshed": (B, C), "clock": (B,)}
        optional = {}
        if spec is not None:
            units, latent = spec["height"] * spec["width"], self.location_dim + self.percept_dim
            optional.update({"map_weights": (B, units, latent), "map_ready": (B,),
                             "topography.weight": (units, latent)})
        for child in ("location_metric", "percept_metric"):
            for key, value in getattr(self, child).state_dict().items():
                if isinstance(value, torch.Tensor):
                    optional[f"{child}.{key}"] = tuple(value.shape)
        for key, shape in {**required, **optional}.items():
            theirs = state_dict.get(prefix + key)
            if theirs is None and key in optional:
                continue  # missing: Module's rules (strict) apply
            if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != shape:
                got = ("nothing" if theirs is None else f"shape {tuple(theirs.shape)}"
                       if isinstance(theirs, torch.Tensor) else type(theirs).__name__)
                raise ValueError(f"state_dict: '{prefix + key}' must have shape {shape} ({context}), got {got}")
            if theirs.is_floating_point():
                checks.finite_tensor(theirs, f"state_dict: '{prefix + key}'")
        for child in ("location_metric", "percept_metric"):  # their own checks, on copies
            metadata = getattr(state_dict, "_metadata", None) or {}
            copy.deepcopy(getattr(self, child))._load_from_state_dict(
                state_dict, f"{prefix}{child}.", metadata.get(f"{prefix}{child}", {}), strict, [], [], [])
        if spec is None:
            self.topography, self.map_weights, self.map_ready = None, None, None
        else:
            latent = self.location_dim + self.percept_dim
            geometry = Topography(latent, spec["height"], spec["width"], grid=spec["grid"],
                                  generator=torch.Generator())
            self._attach(geometry.to(self.codes.device), spec["percept_weight"])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
