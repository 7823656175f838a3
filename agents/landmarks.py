"""Landmarks by object-vector coding, and loop closure against them (TEM agent, items 3 and 4).

What is here. ``LandmarkMap`` (an ``nn.Module``) holds a ``SpatialMemory`` of trees and, per
memory slot, side tensors ``(B, C)`` with what the agent knows about the tree in that slot.
``observe(belief, sight, sight_distance, heading, step)`` does, for every agent of a batch that
sees a tree:

1. Loop closure. ``memory.recall_location(sight, k)`` proposes up to ``k`` stored trees that
   looked the same (percept within the memory's ``percept_radius``). Each proposal ``m``
   predicts the agent's own code, ``m (-) o`` (``apply_displacement`` by ``-o``), with ``o`` the
   sighting's object vector (below). The innovation is the displacement from the belief code to
   that prediction, ``nu = FourierMetric.displacement(belief.code, m (-) o)`` (world units, exact
   within the metric's ``scale``). A proposal is consistent when ``nu^T S^-1 nu <= chi2_gate``
   (9.21: the 99% point of chi-square with 2 dof); the most consistent one (smallest statistic)
   is fused in displacement space, ``code <- code (+) K nu``, by one of two rules (``fusion``):
   ``"intersection"`` (the default) or ``"kalman"`` (both below). A look-alike tree far from where
   the belief puts the agent fails the gate and leaves the belief untouched.

Fusion. Every landmark is mapped from the belief of its time, so the errors of landmarks mapped
along one stretch of walk are correlated with each other and with the belief; keeping those
correlations is full EKF-SLAM (a ``(2C + 2)^2`` covariance per agent, too big for thousands of
batched agents). ``"kalman"`` keeps only each landmark's correlation with the current belief
(``shared``, below) and takes landmarks as independent of each other: on the TEM agent's walks
(noisy task, 32 validation worlds) its belief error exceeded 3 reported stds in 42-72% of the
steps (1.1% for a calibrated Gaussian). ``"intersection"`` fuses by split covariance
intersection (:func:`covariance_intersection`), consistent whatever the correlation of the parts
it is told may be correlated. Each error is split: the belief's into the odometry noise since the
belief last wrote a landmark or fused one (independent of every landmark; ``P_ind``) and the rest;
a landmark's into its sightings' noise (``cov_independent``: independent of everything else) and
the rest (the belief error it was mapped with). The belief takes the fusion of itself
(``(P - P_ind) I``, ``P_ind I``) with the landmark's prediction of its place (``cov -
cov_independent``, ``cov_independent + Sigma_t``), ``variance <- tr(C) / 2``, and keeps as
independent only its own odometry's share; the landmark is refined the same way against the
belief's prediction of it (``P I``, ``Sigma_t``). Sighting noise, the large lateral error of a tree
seen from afar, thus averages down over looks as in a Kalman filter, while the mapping errors
shared along a walk are never counted as news. On the walks above the belief error exceeded 3
reported stds in 1.4-2.4% of the steps, and its median was lower than with ``"kalman"`` (at 3,000
steps, both with the planner's relocalization: 5.8-6.6 against 7.9-9.1). A consistent std tells when a walk back to a precise landmark would pay
(``closure_variance``, the planner's relocalization). The gate
takes ``S = P I + cov + Sigma_t`` (no shared part).
2. Object-vector write. Where no loop was closed and no landmark is tracked (below), the tree is stored at ``g_t (+) o``
   (``apply_displacement`` of the belief code) with its sight percept (``memory.write``, whose
   novelty gate merges it into an entry of the same place and look, or stores a new one); the
   side tensors of the slot the write lands in are set (new entry) or folded in (merge).

The sighting's object vector. Sight reports the nearest tree in a cone of half-angle
``phi_m = acos(cone_cos)`` around the heading ``h`` and its exact distance ``r``; the bearing
``phi`` within the cone is unknown. Taking it uniform on ``[-phi_m, phi_m]``, the tree lies at
``o = r E[cos phi] h = r (sin phi_m / phi_m) h`` on average, with covariance
``r^2 (var_along h h^T + var_across h_perp h_perp^T)``, ``var_along = Var[cos phi]`` (tiny: the
arc is nearly perpendicular to ``h``) and ``var_across = E[sin^2 phi]``: anisotropic, precise
radially and spread laterally (std ``0.26 r`` for ``cone_cos = 0.9``). Every stored point
therefore lies within ``r sin(phi_m)`` laterally and ``r (E[cos phi] - cone_cos)`` radially of the
tree.

Uncertainties (the ``"kalman"`` rule). The belief is isotropic (``Belief.variance`` ``P`` per axis). A landmark keeps
its position covariance ``cov`` ``(2, 2)`` (the belief's at storage plus the sighting's: anisotropic)
and ``shared`` ``c``, the covariance per axis between its error and the agent's current belief
error. The innovation ``nu = e_l - e_t - n_t`` then has covariance ``S = (P - 2 c) I + cov +
Sigma_t`` (``Sigma_t`` the current sighting's) and the optimal gain on the belief is ``K = D S^-1``,
``D = P - c``; the posterior covariance ``P I - D^2 S^-1`` is anisotropic, and the belief keeps
its mean per axis (half the trace). For a landmark uncorrelated with the belief (``c = 0``) this
is the textbook update, ``K = P (P I + R)^-1`` with ``R`` the landmark's variance plus the
sighting's. Without ``c``, staring at a tree just stored would halve the variance every step (each
look taken as independent evidence) though the error has not changed; with it, the gain on a fresh
landmark is ``D S^-1`` with ``D`` the variance of the few steps of odometry since it was stored.

The fused landmark is refined too, by the same innovation (the joint Kalman update of belief and
landmark; correlations between landmarks are not kept): ``m <- m (+) (-E S^-1 nu)``,
``cov <- cov - E S^-1 E``, ``E = cov - c I``, and ``c <- c + tr(D S^-1 E) / 2``. The move is
applied to the entry's code with ``apply_displacement`` (``memory.codes`` of that slot, written in
place: ``SpatialMemory`` has no method to move an entry; a ``move(agents, slots, delta)`` would be
the small API for it). So a tree first seen from afar (lateral std ``0.26 r``) is pinned down by
later sightings from other directions, as the belief is by it.

Bookkeeping of ``c`` (isotropic, ``k`` = half the trace of ``K``): a new entry stores ``c = P``
(the belief error is all in it); path integration leaves ``c`` unchanged (the odometry noise is
new); a closure multiplies every other landmark's ``c`` by ``1 - k`` (the correction replaced that
much of the belief error). When used, ``c`` is clamped to ``[0, sqrt(P lambda_min(cov))]`` (the
joint covariance stays positive semi-definite).

Tracking. A consistent proposal whose landmark was last seen at most ``min_gap`` steps ago (the
agent is still looking at it, or just looked away) while the agent fused something within the last
``min_gap`` steps is *tracked*: recognised, its side tensors refreshed, nothing fused or written.
Consecutive looks at one tree are not independent evidence (the map, the belief and the bearing
errors of looks a step apart are correlated in ways the isotropic ``c`` does not capture); fusing
every look made the filter overconfident and the error larger in the walk test (median 8.1 against
5.8 with ``min_gap = 10``). A loop closes on the first look after a gap (a revisit), and a
landmark kept in view is fused again every ``min_gap`` steps: the odometry noise of those steps is
new error the look can correct. Without that, an agent standing at a tree to eat drifted by the
full odometry noise (0.5 per step on the noisy task) while staring at it: on 32 walks of 3,000
steps the median belief error fell from 14.4 to 7.8 units (90th percentile 43 to 13) with it.

Why a closed loop does not write the sighting. After a closure the corrected belief and the refined
landmark hold the sighting's information; writing ``g_t (+) o`` as well would count it twice. The
entry's side tensors (last seen, fruit, valence) are refreshed instead. The memory's eviction clock
(``refreshed``) is not: ``SpatialMemory`` has no way to refresh an entry without merging a new item
into it (a ``touch(slots)`` method would be the small API that needs).

Side tensors (buffers, ``(B, C)`` indexed by the memory's slots; ``C = memory.capacity``;
``cov_independent`` ``(B, C, 2, 2)``, and per agent ``independent`` and ``variance_after`` ``(B,)``,
the belief's independent variance and its variance after the last ``observe``):
``valence`` and ``fruit`` (the latest estimates given for the tree, NaN where none was given),
``last_seen`` (step, -1 for an empty slot), ``stored_at`` (step of the last write or merge),
``shared`` ``c``, ``cov`` ``(B, C, 2, 2)``, ``position`` ``(B, C, 2)`` (the slot's code decoded,
refreshed whenever ``observe`` changes the code, so readers need not decode every step), and
``last_closure`` ``(B,)`` (step of each agent's last loop closure, -1 for none). A slot follows ``memory.write``'s return value: a
new entry (the slot's ``counts`` is 1 after the write, also when it evicted an older entry)
resets them; a merge of ``n = counts`` items folds the new sighting in as the memory folds the
place (running mean of ``n`` items: ``cov <- ((n-1)^2 cov + 2 (n-1) c I + P I + Sigma_t) / n^2``,
``c <- ((n-1) c + P) / n``).

Arguments. ``sight`` ``(B, P)``, ``sight_distance`` ``(B,)`` or ``(B, 1)`` in ``[0, 1]`` (the
observation: distance / ``sight_range``; 0 means nothing in sight unless ``seen`` says otherwise),
``heading`` ``(B, 2)`` non-zero where a tree is seen (normalized here), ``step`` an int or ``(B,)``
integer tensor ``>= 0``; optional ``valence`` and ``fruit`` ``(B,)`` estimates for the seen tree
(the latest given is kept for the slot; None leaves a merged entry's as it was), ``seen`` ``(B,)``
bool. Wrong shapes, NaN / inf, out-of-range values: ValueError naming the argument, raised before
anything changes. ``observe`` runs without autograd (a filter step, not a training graph).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from treeworld import checks
from treeworld.agents.memory import SpatialMemory
from treeworld.agents.path_integration import Belief

#: 99% point of the chi-square distribution with 2 degrees of freedom.
CHI2_99_2DOF = 9.2103
#: How a consistent proposal is fused (module docstring).
FUSIONS = ("intersection", "kalman")


def _half_trace(m: torch.Tensor) -> torch.Tensor:
    """(...,) mean variance per axis of (..., 2, 2) covariances."""
    return m.diagonal(dim1=-2, dim2=-1).sum(-1) / 2.0


def _psd2(m: torch.Tensor) -> torch.Tensor:
    """Symmetric (..., 2, 2) matrices ``m`` raised by ``max(0, -lambda_min) I``: positive semi-definite
    (a difference of covariances, off by rounding)."""
    a, b, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 1]
    lowest = (a + d) / 2.0 - torch.sqrt(((a - d) / 2.0).square() + b.square())
    return m + (-lowest).clamp_min(0.0)[..., None, None] * torch.eye(2, dtype=m.dtype, device=m.device)


def _inverse2(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 2, 2) matrices in closed form."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = (a * d - b * c)[..., None, None]
    return torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2) / det


def covariance_intersection(A_dep: torch.Tensor, A_ind: torch.Tensor, B_dep: torch.Tensor, B_ind: torch.Tensor,
                            grid: int = 33) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split covariance intersection (Julier and Uhlmann 2001) of two estimates ``a``, ``b`` of one
    2-d point: each error is a dependent part (covariance ``*_dep``, any correlation with the other
    estimate) plus an independent one (``*_ind``), all ``(..., 2, 2)``. With ``P_a = A_dep / w +
    A_ind`` and ``P_b = B_dep / (1 - w) + B_ind``, the fused ``x = a + G (b - a)`` has covariance
    at most ``C = (P_a^-1 + P_b^-1)^-1``, ``G = C P_b^-1``, for every ``w`` in [0, 1] whatever the
    correlation; ``w`` is the point of a ``grid`` that minimises ``tr C`` (the grid costs
    optimality, never consistency). No dependent parts: the Kalman update; no independent parts:
    plain covariance intersection. Returns ``G``, ``C`` and ``M_a = C P_a^-1`` (``x = M_a a +
    G b``: an independent error ``Q`` of ``a`` or of ``b`` carries into ``x`` as ``M_a Q M_a^T`` or
    ``G Q G^T``), float64."""
    A_dep, A_ind, B_dep, B_ind = (m.double() for m in torch.broadcast_tensors(A_dep, A_ind, B_dep, B_ind))
    w = torch.linspace(0.0, 1.0, grid, dtype=torch.float64, device=A_dep.device)  # (grid,)
    # P^-1 = w (A_dep + w A_ind)^-1: defined at the ends of the grid (w = 1: b is left out); the
    # grid is searched entry by entry, (..., grid) tensors, and matrices formed at the chosen w only
    P_a_inv = _weighted_inverses(A_dep, A_ind, w)
    P_b_inv = _weighted_inverses(B_dep, B_ind, 1.0 - w)
    a, b, c, d = (p + q for p, q in zip(P_a_inv, P_b_inv))
    det = a * d - b * c
    best = (d / det + a / det).argmin(-1, keepdim=True)  # (..., 1): least tr C, C = (P_a^-1 + P_b^-1)^-1

    def pick(entries: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a, b, c, d = (e.gather(-1, best).squeeze(-1) for e in entries)
        return torch.stack((torch.stack((a, b), -1), torch.stack((c, d), -1)), -2)

    P_a_inv, P_b_inv = pick(P_a_inv), pick(P_b_inv)
    C = _inverse2(P_a_inv + P_b_inv)
    return C @ P_b_inv, C, C @ P_a_inv


def _weighted_inverses(dep: torch.Tensor, ind: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The entries ``(a, b, c, d)``, each ``(..., grid)``, of ``weight (dep + weight ind + 1e-9 I)^-1``
    for (..., 2, 2) ``dep``, ``ind`` and (grid,) ``weight``."""
    m00, m01, m10, m11 = (dep[..., None] + weight * ind[..., None]).flatten(-3, -2).unbind(-2)  # (..., grid) each
    m00, m11 = m00 + 1e-9, m11 + 1e-9
    det = m00 * m11 - m01 * m10
    return tuple(weight * (entry / det) for entry in (m11, -m01, -m10, m00))


def cone_moments(cone_cos: float) -> tuple[float, float, float]:
    """``(E[cos phi], Var[cos phi], E[sin^2 phi])`` for ``phi`` uniform on ``[-phi_m, phi_m]``,
    ``phi_m = acos(cone_cos)``: the mean radial factor and the radial / lateral variances per
    unit distance squared of a tree seen in the cone."""
    phi = math.acos(cone_cos)
    if phi == 0.0:
        return 1.0, 0.0, 0.0
    mean_cos = math.sin(phi) / phi
    mean_cos2 = 0.5 + math.sin(2.0 * phi) / (4.0 * phi)
    return mean_cos, max(mean_cos2 - mean_cos ** 2, 0.0), max(1.0 - mean_cos2, 0.0)


class LandmarkMap(nn.Module):
    """Trees stored by object-vector coding, and loop closure of the belief against them.

    Args:
        memory: the ``SpatialMemory`` of trees (a submodule); its ``location_metric`` must be a 2-d
            metric of the belief's code length, its ``percept_dim`` the sight's.
        sight_range: world units of ``sight_distance = 1`` (the world's ``sight_distance``, 100).
        cone_cos: the sight cone, ``cos`` of its half-angle (the world's ``sight_cos``, 0.9).
        k: proposals recalled per sighting (at most the memory's capacity).
        chi2_gate: ``> 0``, the consistency gate on ``nu^T S^-1 nu`` (default: 99%, 2 dof).
        min_gap: ``>= 0`` steps; a landmark last seen at most this many steps ago is tracked, not
            fused again (module docstring: consecutive looks are not independent evidence).

    See the module docstring for the buffers and the update.
    """

    def __init__(self, memory: SpatialMemory, sight_range: float = 100.0, cone_cos: float = 0.9, k: int = 4,
                 chi2_gate: float = CHI2_99_2DOF,
                 min_gap: int = 10, fusion: str = "intersection") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        self.memory = checks.instance(memory, SpatialMemory, "memory")
        if memory.location_metric.dim != 2:
            raise ValueError(f"memory: expected a 2-d location metric, got dim={memory.location_metric.dim}")
        self.sight_range = checks.positive(sight_range, "sight_range")
        self.cone_cos = checks.real(cone_cos, "cone_cos", low=-1.0, high=1.0, low_open=True)
        self.k = min(checks.count(k, "k"), memory.capacity)
        self.chi2_gate = checks.positive(chi2_gate, "chi2_gate")
        self.min_gap = checks.integer(min_gap, "min_gap", low=0)
        self.mean_cos, self.var_along, self.var_across = cone_moments(self.cone_cos)
        # Smallest recall weight of a proposal: percept distance within the memory's percept_radius.
        self.min_weight = math.exp(-memory.percept_radius ** 2 / (2.0 * memory.percept_scale ** 2))

        B, C = memory.batch_size, memory.capacity
        dtype, device = memory.codes.dtype, memory.codes.device
        self.register_buffer("valence", torch.full((B, C), math.nan, dtype=dtype, device=device))
        self.register_buffer("fruit", torch.full((B, C), math.nan, dtype=dtype, device=device))
        self.register_buffer("last_seen", torch.full((B, C), -1, dtype=torch.long, device=device))
        self.register_buffer("stored_at", torch.full((B, C), -1, dtype=torch.long, device=device))
        self.register_buffer("shared", torch.zeros(B, C, dtype=dtype, device=device))
        self.register_buffer("cov", torch.zeros(B, C, 2, 2, dtype=dtype, device=device))
        self.register_buffer("cov_independent", torch.zeros(B, C, 2, 2, dtype=dtype, device=device))
        self.register_buffer("independent", torch.zeros(B, dtype=dtype, device=device))
        self.register_buffer("variance_after", torch.zeros(B, dtype=dtype, device=device))
        self.register_buffer("last_closure", torch.full((B,), -1, dtype=torch.long, device=device))
        self.register_buffer("position", torch.zeros(B, C, 2, dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return (f"sight_range={self.sight_range}, cone_cos={self.cone_cos}, k={self.k}, "
                f"chi2_gate={self.chi2_gate}, fusion={self.fusion!r}")

    @property
    def batch_size(self) -> int:
        return self.memory.batch_size

    @property
    def metric(self):
        return self.memory.location_metric

    # ------------------------------------------------------------------------------ checking
    def _vector(self, value, name: str, optional: bool = False) -> torch.Tensor | None:
        """A finite floating ``(B,)`` (or ``(B, 1)``) tensor as ``(B,)`` float64."""
        if value is None and optional:
            return None
        B = self.batch_size
        checks.float_tensor(value, name)
        if tuple(value.shape) not in ((B,), (B, 1)):
            raise ValueError(f"{name}: expected shape ({B},) or ({B}, 1) (batch_size={B}), got {tuple(value.shape)}")
        checks.finite_tensor(value, name)
        return value.detach().reshape(B).to(device=self.memory.codes.device, dtype=torch.float64)

    def _check(self, belief, sight, sight_distance, heading, step, valence, fruit, seen):
        B, P = self.batch_size, self.memory.percept_dim
        device = self.memory.codes.device
        checks.instance(belief, Belief, "belief")
        if belief.batch_size != B:
            raise ValueError(f"belief: expected batch_size={B} (the memory's), got {belief.batch_size}")
        if belief.metric.location_dim != self.memory.location_dim or belief.metric.dim != 2:
            raise ValueError(f"belief: expected 2-d codes of location_dim={self.memory.location_dim} (the memory's), "
                             f"got dim={belief.metric.dim}, location_dim={belief.metric.location_dim}")
        checks.float_tensor(sight, "sight")
        if tuple(sight.shape) != (B, P):
            raise ValueError(f"sight: expected shape ({B}, {P}) (batch_size={B}, percept_dim={P}), "
                             f"got {tuple(sight.shape)}")
        checks.finite_tensor(sight, "sight")
        distance = self._vector(sight_distance, "sight_distance")
        if bool(((distance < 0) | (distance > 1)).any()):
            raise ValueError(f"sight_distance: expected values in [0, 1] (distance / sight_range), got "
                             f"{float(distance.min()):.6g} .. {float(distance.max()):.6g}")
        checks.float_tensor(heading, "heading")
        if tuple(heading.shape) != (B, 2):
            raise ValueError(f"heading: expected shape ({B}, 2) (batch_size={B}), got {tuple(heading.shape)}")
        checks.finite_tensor(heading, "heading")
        heading = heading.detach().to(device=device, dtype=torch.float64)
        if isinstance(step, torch.Tensor):
            if step.is_floating_point() or step.dtype == torch.bool or step.is_complex():
                raise ValueError(f"step: expected an int or an integer tensor, got {step.dtype}")
            if tuple(step.shape) not in ((), (B,)):
                raise ValueError(f"step: expected an int or shape ({B},) (batch_size={B}), got {tuple(step.shape)}")
            step = step.detach().to(device=device, dtype=torch.long).expand(B)
            if bool((step < 0).any()):
                raise ValueError(f"step: expected >= 0, got {int(step.min())}")
        else:
            step = torch.full((B,), checks.integer(step, "step", low=0), dtype=torch.long, device=device)
        valence = self._vector(valence, "valence", optional=True)
        fruit = self._vector(fruit, "fruit", optional=True)
        if seen is None:
            seen = distance > 0
        else:
            if not (isinstance(seen, torch.Tensor) and seen.dtype == torch.bool and tuple(seen.shape) == (B,)):
                got = f"{seen.dtype} {tuple(seen.shape)}" if isinstance(seen, torch.Tensor) else type(seen).__name__
                raise ValueError(f"seen: expected a bool tensor of shape ({B},), got {got}")
            seen = seen.to(device)
        norm = heading.norm(dim=-1)
        if bool((seen & (norm < 1e-6)).any()):
            raise ValueError("heading: expected non-zero heading vectors where a tree is seen, got a zero vector")
        heading = heading / norm.clamp_min(1e-6)[:, None]
        sight = sight.detach().to(device=device, dtype=self.memory.percepts.dtype)
        return sight, distance, heading, step, valence, fruit, seen

    # -------------------------------------------------------------------------------- sight
    def object_vector(self, sight_distance: torch.Tensor, heading: torch.Tensor):
        """Mean offset of the seen tree from the agent and its covariance: ``(B,)`` distances in
        world units and ``(B, 2)`` unit headings -> ``(B, 2)``, ``(B, 2, 2)`` (float64)."""
        r = sight_distance
        across = torch.stack((-heading[:, 1], heading[:, 0]), dim=-1)
        offset = (self.mean_cos * r)[:, None] * heading
        cov = (r.square() * self.var_along)[:, None, None] * heading[:, :, None] * heading[:, None, :] \
            + (r.square() * self.var_across)[:, None, None] * across[:, :, None] * across[:, None, :]
        return offset, cov

    # -------------------------------------------------------------------------------- observe
    @torch.no_grad()
    def observe(self, belief: Belief, sight: torch.Tensor, sight_distance: torch.Tensor, heading: torch.Tensor,
                step, *, valence: torch.Tensor | None = None, fruit: torch.Tensor | None = None,
                seen: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Close loops against the trees in sight, then store the trees not recognised.

        Updates ``belief.code`` and ``belief.variance`` in place for the agents that closed a loop.
        Returns per agent ``(B,)`` tensors: ``seen`` (bool), ``closed`` (a proposal was fused),
        ``gated`` (proposals with the same look existed but all failed the chi-square gate),
        ``tracked`` (a consistent proposal seen within ``min_gap`` steps: recognised, not fused),
        ``innovation`` ``(B, 2)`` (world units, of the best proposal; 0 where none), ``chi2`` (its
        statistic, inf where none), ``gain`` (the trace of ``K`` over 2, 0 where none closed),
        ``slot`` (the landmark fused or tracked, -1 for none) and ``written`` (the slot the sighting was
        stored in or merged into, -1 where not written).
        """
        sight, distance, heading, step, valence, fruit, seen = self._check(
            belief, sight, sight_distance, heading, step, valence, fruit, seen)
        memory, metric = self.memory, self.metric
        B, k, device = self.batch_size, self.k, sight.device
        rows = torch.arange(B, device=device)
        r = distance * self.sight_range
        offset, sight_cov = self.object_vector(r, heading)  # (B, 2), (B, 2, 2)
        code = belief.code.detach()
        P = belief.variance.detach().to(device=device, dtype=torch.float64)  # (B,)
        eye = torch.eye(2, dtype=torch.float64, device=device)
        independent = self._independent(P)  # (B,) the belief's odometry since the last write or closure

        # 1. Loop closure: proposals by look, each predicting the agent's code; gate; fuse the best.
        innovation = torch.zeros(B, 2, dtype=torch.float64, device=device)
        chi2 = torch.full((B,), math.inf, dtype=torch.float64, device=device)
        slot = torch.full((B,), -1, dtype=torch.long, device=device)
        closed = torch.zeros(B, dtype=torch.bool, device=device)
        gated = torch.zeros(B, dtype=torch.bool, device=device)
        tracked = torch.zeros(B, dtype=torch.bool, device=device)
        gain = torch.zeros(B, dtype=torch.float64, device=device)
        if bool(seen.any()) and bool(memory.valid.any()):
            codes, weights, slots = memory.recall_location(sight, k, return_slots=True)  # (B, k, L), (B, k), (B, k)
            usable = seen[:, None] & memory.valid.gather(1, slots) & (weights >= self.min_weight)
            if bool(usable.any()):
                safe = slots.clamp_min(0)
                predicted = metric.apply_displacement(codes, (-offset)[:, None, :].to(codes.dtype))  # (B, k, L)
                nu = metric.displacement(code[:, None, :].expand_as(predicted).to(predicted.dtype),
                                         predicted)[1].to(torch.float64)  # (B, k, 2)
                cov = self.cov[rows[:, None], safe].to(torch.float64)  # (B, k, 2, 2)
                shared = self.shared.gather(1, safe) if self.fusion == "kalman" else None
                c, D, S = self._innovation_terms(P, cov, shared, sight_cov[:, None])
                S_inv = torch.linalg.inv(S)
                stat = torch.einsum("bki,bkij,bkj->bk", nu, S_inv, nu)
                stat = stat.masked_fill(~usable, math.inf)
                best = stat.argmin(-1)  # (B,)
                best_stat = stat.gather(1, best[:, None]).squeeze(1)
                has = usable.any(-1)
                consistent = has & (best_stat <= self.chi2_gate)
                gated = has & ~consistent
                recent = step - self.last_seen[rows, slots[rows, best].clamp_min(0)] <= self.min_gap
                # a landmark in view is fused again once min_gap steps of odometry passed since the
                # agent's last fusion: that noise is new error, which the look can correct
                fused_lately = (self.last_closure >= 0) & (step - self.last_closure <= self.min_gap)
                tracked = consistent & recent & fused_lately
                closed = consistent & ~tracked
                chi2 = best_stat
                innovation = torch.where(has[:, None], nu[rows, best], innovation)
                slot = torch.where(consistent, slots[rows, best], slot)
                if bool(tracked.any()):  # recognised, seen moments ago: refresh the side tensors only
                    self._refresh(rows[tracked], slot[tracked], step[tracked], fruit, valence, tracked)
                if bool(closed.any()) and self.fusion == "intersection":
                    a, s = rows[closed], slot[closed]
                    cov_b = cov[rows, best]  # (B, 2, 2)
                    ind_b = self.cov_independent[rows, slot.clamp_min(0)].to(torch.float64)  # its sightings' share
                    # the belief: itself vs the landmark's prediction of it (innovation nu)
                    G, fused, M = self._meet(P, independent, cov_b, ind_b, sight_cov)
                    delta = torch.where(closed[:, None], torch.einsum("bij,bj->bi", G, innovation), 0.0)
                    gain = torch.where(closed, _half_trace(G), gain)
                    belief.code = torch.where(closed[:, None], metric.apply_displacement(belief.code, delta.to(belief.code.dtype)),
                                              belief.code)
                    belief.variance = torch.where(closed, _half_trace(fused).clamp_min(0.0), P).to(belief.variance.dtype)
                    own = independent[:, None, None] * eye
                    odometry = _half_trace(M @ own @ M.transpose(-1, -2)).clamp_min(0.0)
                    independent = torch.where(closed, odometry, independent)
                    self.last_closure = torch.where(closed, step, self.last_closure)
                    # the landmark: itself vs the belief's prediction of it (innovation -nu)
                    G, refined, M = covariance_intersection(_psd2(cov_b - ind_b), ind_b, P[:, None, None] * eye, sight_cov)
                    shift = -torch.einsum("bij,bj->bi", G, innovation)[closed]
                    memory.codes[a, s] = metric.apply_displacement(memory.codes[a, s], shift.to(memory.codes.dtype))
                    self._locate(a, s)
                    self.cov[a, s] = refined[closed].to(self.cov.dtype)
                    sighted = M @ ind_b @ M.transpose(-1, -2) + G @ sight_cov @ G.transpose(-1, -2)
                    self.cov_independent[a, s] = sighted[closed].to(self.cov.dtype)
                    self._refresh(a, s, step[closed], fruit, valence, closed)
                elif bool(closed.any()):
                    a, s = rows[closed], slot[closed]
                    Db, S_inv_b, cov_b, c_b = D[rows, best], S_inv[rows, best], cov[rows, best], c[rows, best]
                    K = Db[:, None, None] * S_inv_b  # (B, 2, 2)
                    delta = torch.einsum("bij,bj->bi", K, innovation)
                    delta = torch.where(closed[:, None], delta, torch.zeros_like(delta))
                    new_var = P - Db.square() * _half_trace(S_inv_b)
                    new_var = torch.where(closed, new_var.clamp_min(0.0), P)
                    gain = torch.where(closed, _half_trace(K), gain)
                    moved = metric.apply_displacement(belief.code, delta.to(belief.code.dtype))
                    belief.code = torch.where(closed[:, None], moved, belief.code)
                    belief.variance = new_var.to(belief.variance.dtype)
                    self.last_closure = torch.where(closed, step, self.last_closure)
                    # The fused landmark, refined by the same innovation (joint update).
                    E = cov_b - c_b[:, None, None] * eye  # Cov(e_l, nu)
                    ES = E @ S_inv_b  # (B, 2, 2)
                    shift = -torch.einsum("bij,bj->bi", ES, innovation)[closed]  # (M, 2)
                    cov_new = cov_b - ES @ E
                    cov_new = 0.5 * (cov_new + cov_new.transpose(-1, -2))
                    c_new = c_b + (Db[:, None, None] * S_inv_b @ E).diagonal(dim1=-2, dim2=-1).sum(-1) / 2.0
                    memory.codes[a, s] = metric.apply_displacement(memory.codes[a, s], shift.to(memory.codes.dtype))
                    self._locate(a, s)
                    self.cov[a, s] = cov_new[closed].to(self.cov.dtype)
                    # The correction replaced a fraction k of the belief error: the other landmarks share less.
                    decay = torch.where(closed, 1.0 - gain, torch.ones_like(gain))
                    self.shared.mul_(decay[:, None].to(self.shared.dtype))
                    self.shared[a, s] = c_new[closed].to(self.shared.dtype)
                    self._refresh(a, s, step[closed], fruit, valence, closed)

        # 2. Object-vector write of the trees not recognised, at the (uncorrected) belief (+) o.
        write = seen & ~closed & ~tracked
        written = torch.full((B,), -1, dtype=torch.long, device=device)
        if bool(write.any()):
            P_now = belief.variance.detach().to(device=device, dtype=torch.float64)
            tree = metric.apply_displacement(belief.code.detach(), offset.to(belief.code.dtype))
            written = memory.write(tree.to(memory.codes.dtype), sight, mask=write)
            w = rows[write]
            s = written[write]
            self._locate(w, s)
            n = memory.counts[w, s].to(torch.float64)  # items in the entry now
            old = n - 1.0
            fresh = n == 1
            scale = (old / n).square()
            shared_old = self.shared[w, s].to(torch.float64)
            added = (2.0 * old * shared_old + P_now[write])[:, None, None] * eye + sight_cov[write]  # (M, 2, 2)
            self.cov[w, s] = torch.where(
                fresh[:, None, None], P_now[write][:, None, None] * eye + sight_cov[write],
                scale[:, None, None] * self.cov[w, s].to(torch.float64) + added / n.square()[:, None, None]
            ).to(self.cov.dtype)
            self.shared[w, s] = torch.where(fresh, P_now[write], (old * shared_old + P_now[write]) / n
                                            ).to(self.shared.dtype)
            self.cov_independent[w, s] = torch.where(
                fresh[:, None, None], sight_cov[write],
                (scale[:, None, None] * self.cov_independent[w, s].to(torch.float64) + sight_cov[write] / n.square()[:, None, None])
            ).to(self.cov.dtype)
            independent = torch.where(write, 0.0, independent)
            self.stored_at[w, s] = step[write]
            self.last_seen[w, s] = step[write]
            nan = torch.full_like(n, math.nan)
            for name, value in (("fruit", fruit), ("valence", valence)):
                side = getattr(self, name)
                given = nan if value is None else value[write]
                # a new entry forgets the evicted tree's estimate; a merge keeps the old one unless given
                kept = torch.where(fresh, nan, side[w, s].to(torch.float64)) if value is None else given
                side[w, s] = kept.to(side.dtype)

        self.independent.copy_(independent)
        self.variance_after.copy_(belief.variance.detach().to(torch.float64))
        return {"seen": seen, "closed": closed, "gated": gated, "tracked": tracked,
                "innovation": innovation.to(code.dtype),
                "chi2": chi2, "gain": gain, "slot": slot, "written": written}

    @staticmethod
    def _innovation_terms(P: torch.Tensor, cov: torch.Tensor, shared: torch.Tensor | None, sight_cov) -> tuple:
        """For belief variance ``P`` (B,) and landmarks of covariance ``cov`` (B, k, 2, 2) sharing
        ``shared`` (B, k; None: nothing) with the belief, seen with covariance ``sight_cov``
        (broadcast to ``cov``): the clamped shared variance ``c`` (B, k), ``D = P - c`` (B, k) and the
        innovation covariance ``S`` (B, k, 2, 2) (module docstring), all float64."""
        eye = torch.eye(2, dtype=torch.float64, device=cov.device)
        if shared is None:
            c = torch.zeros(cov.shape[:-2], dtype=torch.float64, device=cov.device)
        else:
            floor = torch.linalg.eigvalsh(cov)[..., 0].clamp_min(0.0)  # (B, k)
            c = torch.minimum(shared.to(torch.float64).clamp_min(0.0), (P[:, None] * floor).sqrt())
        S = (P[:, None] - 2.0 * c)[..., None, None] * eye + cov + sight_cov
        S = S + 1e-9 * eye  # a noiseless sighting of a noiseless landmark: keep S invertible
        return c, P[:, None] - c, S

    @torch.no_grad()
    def closure_variance(self, variance: torch.Tensor, distance: float = 0.0,
                         agents: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) float64 belief variance per axis that a loop closure at each stored tree would
        leave, for a belief of ``variance`` (B,) looking at it from ``distance`` world units (the
        sighting's covariance averaged over headings); +inf for empty slots and for the agents
        not in ``agents`` ((B,) bool, default all: the others are not computed)."""
        P = self._vector(variance, "variance")
        if bool((P < 0).any()):
            raise ValueError("variance: expected values >= 0")
        distance = checks.real(distance, "distance", low=0.0)
        B = self.batch_size
        if agents is None:
            agents = torch.ones(B, dtype=torch.bool, device=P.device)
        elif not (isinstance(agents, torch.Tensor) and agents.dtype == torch.bool and tuple(agents.shape) == (B,)):
            raise ValueError(f"agents: expected a bool tensor of shape ({B},)")
        left = torch.full(tuple(self.memory.valid.shape), math.inf, dtype=torch.float64, device=P.device)
        which = agents[:, None] & self.memory.valid  # (B, C) the trees computed
        if not bool(which.any()):
            return left
        row = which.nonzero()[:, 0]  # (N,) their agents
        eye = torch.eye(2, dtype=torch.float64, device=P.device)
        sight = distance ** 2 * (self.var_along + self.var_across) / 2.0 * eye
        P_n, cov = P[row], self.cov[which].to(torch.float64)  # (N,), (N, 2, 2)
        if self.fusion == "intersection":
            chosen = _half_trace(self._meet(P_n, self._independent(P)[row], cov,
                                            self.cov_independent[which].to(torch.float64), sight)[1])
        else:
            c, D, S = self._innovation_terms(P_n, cov[:, None], self.shared[which][:, None], sight)
            chosen = (P_n[:, None] - D.square() * _half_trace(torch.linalg.inv(S)))[:, 0]
        left[which] = chosen.clamp_min(0.0)
        return left

    def _independent(self, P: torch.Tensor) -> torch.Tensor:
        """(B,) float64 the part of the belief variance ``P`` (B,) independent of every landmark's
        error: the odometry noise since the belief was last written from or fused."""
        return (self.independent + (P - self.variance_after).clamp_min(0.0)).clamp(max=P)

    @staticmethod
    def _meet(P: torch.Tensor, independent: torch.Tensor, cov: torch.Tensor, cov_independent: torch.Tensor,
              sight_cov) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`covariance_intersection` of the belief (variance ``P`` (N,), of which ``independent``
        (N,) independent) with a landmark's prediction of the agent's place (``cov`` (N, 2, 2), of
        which ``cov_independent`` its sightings', plus the sighting's ``sight_cov``): G, C, M."""
        eye = torch.eye(2, dtype=torch.float64, device=cov.device)
        return covariance_intersection((P - independent)[:, None, None] * eye, independent[:, None, None] * eye,
                                       _psd2(cov - cov_independent), cov_independent + sight_cov)

    def _refresh(self, agents, slots, step, fruit, valence, rows) -> None:
        """A recognised tree (agents[i], slots[i]) was seen at ``step`` (M,): its side tensors take
        the sighting's ``fruit`` and ``valence`` estimates (B,) of the ``rows`` (B,) bool mask, if given."""
        self.last_seen[agents, slots] = step
        for name, value in (("fruit", fruit), ("valence", valence)):
            if value is not None:
                side = getattr(self, name)
                side[agents, slots] = value[rows].to(side.dtype)

    def _locate(self, agents: torch.Tensor, slots: torch.Tensor) -> None:
        """Decode the codes of (agents[i], slots[i]) into ``position`` (after they changed)."""
        decoded = self.metric.decode(self.memory.codes[agents, slots])[1]
        self.position[agents, slots] = decoded.to(self.position.dtype)

    # ------------------------------------------------------------------------------ access
    @torch.no_grad()
    def reset(self, agents: list[int] | None = None) -> None:
        """Forget every landmark of all agents (``None``) or of the listed ones."""
        self.memory.reset(agents)  # checks the agents
        chosen = list(range(self.batch_size)) if agents is None else [int(a) for a in agents]
        self.valence[chosen] = math.nan
        self.fruit[chosen] = math.nan
        self.last_seen[chosen] = -1
        self.stored_at[chosen] = -1
        self.shared[chosen] = 0.0
        self.cov[chosen] = 0.0
        self.cov_independent[chosen] = 0.0
        self.independent[chosen] = 0.0
        self.variance_after[chosen] = 0.0
        self.last_closure[chosen] = -1
        self.position[chosen] = 0.0

    @torch.no_grad()
    def landmarks(self, agent: int = 0) -> dict[str, torch.Tensor]:
        """One agent's stored trees: ``slot`` ``(n,)``, ``position`` ``(n, 2)`` (decoded codes),
        ``percept`` ``(n, P)``, ``valence``, ``fruit``, ``last_seen``, ``cov`` ``(n, 2, 2)`` (the
        landmark's position covariance)."""
        agent = self.memory._check_agent(agent)
        slots = self.memory.valid[agent].nonzero().squeeze(-1)
        return {"slot": slots, "position": self.position[agent, slots], "percept": self.memory.percepts[agent, slots],
                "valence": self.valence[agent, slots], "fruit": self.fruit[agent, slots],
                "last_seen": self.last_seen[agent, slots],
                "cov": self.cov[agent, slots]}
