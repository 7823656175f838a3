"""Valence: a learned readout on percepts of how good a tree's fruit is to eat.

Learned, not given. Nothing here knows the vocabulary, the kinds or which of them are poisonous:
the readout sees percepts and the outcomes of eating (the sign of the health change after an
eat), and learns online which directions of percept space predict poison.

The model: Bayesian probit regression on the normalized percept, learned by assumed density
filtering (closed form, no SGD, no learning rate). The latent score of a percept ``x`` is
``f = w . phi(x)``, with ``phi(x) = (x / ||x||, 1)`` (the unit percept and a bias feature, so the
base rate of poison is learned too), and ``P(edible | f) = Phi(f)``. The prior on ``w`` is
Gaussian, ``N(0, P)`` with ``P = diag(prior_var, ..., prior_var, bias_var)``; the posterior stays
Gaussian: ``weight_mean`` ``(D + 1,)`` and a covariance held in factor form,
``cov = P - H^T H`` (``weight_factor`` ``H``, one row per site learned, float64; ``covariance()``
writes it out). An eat with outcome ``y`` in {-1, +1} is one probit site; its exact moment match
against the current posterior of ``f`` (``N(mu, s)``) is a Gaussian site of precision
``tau = c / (1 - s c)`` and shift ``(mu c + y lambda / sqrt(1 + s)) / (1 - s c)``, with
``z = y mu / sqrt(1 + s)``, ``lambda = N(z) / Phi(z)``, ``c = lambda (lambda + z) / (1 + s)``
(written this way, nothing is divided by ``s``, and ``0 <= tau < 1``). The ``k`` sites of one
update, rows ``F`` ``(k, D + 1)``, enter the moments by the Woodbury identity (no ``(D + 1)``-cube
solve): with ``G = sqrt(tau) F``, ``cov' = cov - cov G^T (I + G cov G^T)^{-1} G cov`` and
``mean' = mean + cov' F^T (shift - tau F mean)``; for one site these are the textbook ADF steps
``mean' = mean + y lambda / sqrt(1 + s) cov f`` and ``cov' = cov - c (cov f)(cov f)^T``. Each site
lowers the variance of ``f`` along its own row (``s' = s / (1 + tau s) > 0``), and the result does
not depend on a learning rate. The low-rank term is ``N^T N`` with ``N = L^{-1} G cov`` (``L`` the
Cholesky factor of the ``k x k`` inner matrix): its ``k`` rows are appended to ``H``.

Why a factor. A readout that has learned ``m`` sites is read in ``O(m D)`` per percept instead of
``O(D^2)``: an agent's readout has seen a few dozen eats in an episode, far fewer than ``D + 1 =
385``, and reading B dense covariances every step was most of a batched agent's step. ``H`` never
needs more than ``D + 1`` rows (``H^T H`` is a ``(D + 1)``-square PSD matrix): when a readout's rows
would pass ``D + 1 + spare_rows``, they are compressed to the ``R`` of their QR decomposition
(``R^T R = H^T H``, at most ``D + 1`` rows), so memory and reads never exceed ``1 + spare_rows /
(D + 1)`` times the dense form's, and the QR (``O(D^3)``) runs at most once per ``spare_rows`` sites.

Sensory adaptation. Sentence embeddings share a large common direction (any two MiniLM percepts
have a cosine well above 0), so on raw unit percepts one poisonous bite lowers the valence of every
tree, and six edible bites of other kinds then pull a tasted poisonous kind back above 0 (measured:
+0.29). The features are therefore the unit percept minus the running mean of the unit percepts
the readout was shown by ``adapt`` (the agent shows it every sight: statistics of its own
experience, nothing of the vocabulary), renormalized: ``phi(x) = (u - c) / ||u - c||`` with
``u = x / ||x||`` and ``c = sum(u) / (count + 1)`` (0 before anything was seen, so an unadapted
readout is the plain one). With it the same bites leave the poisonous kind at -0.6 and untasted
kinds near 0 with a wide std. The centre keeps moving slowly as experience grows; the posterior is
not recomputed for it (its early eats were scored against an earlier centre). Limit: a readout
shown only one look centres it to nearly 0, so that look's noise decides its valence until other
looks have been seen (in the world the agent sees many trees from the first steps).

Why linear on the unit percept generalizes across fruit counts and names. A sight percept is
``normalize(e_kind + e_name + e_phrase)``: the kind, the tree's name and its fruit phrase add up.
A linear score is the sum of their scores. Phrases and names occur with both outcomes (every
kind bears every fruit count; a name belongs to a tree of any kind), so their weights are driven
to what the outcome does not depend on, while a kind's direction carries its outcome; a few eats
of a kind therefore fix the sign for its other trees and fruit counts. Percept noise (0.02 per
component) moves the score by ``0.02 ||w||``, small next to the kind's contribution.

Outputs. ``predict`` gives the mean valence ``E[2 Phi(f) - 1] = 2 Phi(mu / sqrt(1 + s)) - 1`` in
``(-1, 1)`` (the expected health-change sign of a bite, under the posterior ``f ~ N(mu, s)``) and
``std``, the posterior standard deviation of that valence ``2 Phi(f) - 1`` (48-node Gauss-Hermite
quadrature over ``f``): epistemic uncertainty in valence units, in ``[0, 1)``, near 1 for a
percept unlike anything tasted and falling as eats agree, so a planner can weigh a first bite of
an unknown kind (e.g. an optimistic ``mean + k std``). The posterior std of the latent score
itself is a poor measure of it: one eat tells only the sign of ``f``, so a tree tasted three times
still has a wide one-sided posterior on ``f`` though its sign is nearly sure; ``latent`` returns
``(mu, sqrt(s))`` for whoever wants it. The mean already shrinks towards 0 under uncertainty.

Known limit (measured on the MiniLM table, 3 eats of each of 5 kinds): names and fruit phrases are
directions too, and a tree's unseen name or fruit count is as untasted as an unseen kind. The
valence std of an untasted kind is therefore only about 1.2-1.3 times that of a tasted kind seen
under a new name and fruit count (per kind 0.63-0.79 against 0.45-0.72); it separates cleanly
only as eats accumulate over many names and fruit counts (across episodes), which pins names and
phrases down as irrelevant. The sign, in contrast, generalizes at once (100% on unseen names and
fruit counts of the tasted kinds in that setting).

One shared readout, or many. Edibility is a property of the kind, the same for every agent and
every world, so a readout is knowledge that is never reset between episodes: a poisonous kind
learned in one world stays poisonous in the next. A module holds ``count`` independent readouts
(stacked states, a leading axis ``R``): every call takes ``readouts``, the readout of each row
(default: readout 0). One readout updated with the eats of all B agents of a batch is shared
knowledge; one per agent gives B independent learners at the cost of batched array work, with no
Python loop over readouts. A readout's state: ``weight_mean``, ``weight_factor`` and
``factor_rank`` (its rows in use; a bank's factors share one row count, the rest are zeros), the
``eats`` counter and the adaptation's ``seen_sum`` and ``seen_count`` (``state_dict``: exact round
trip, whatever the row count; predictions read the state and nothing else). The rows of one
``update`` call are moment-matched against the current posterior of their own readout and added
together (the parallel form of the filter; with one row it is the sequential filter exactly), so
the result does not depend on the order of the agents in the batch.

Inputs and dtypes. Percepts must be finite with last dimension ``percept_dim``; outcomes must be
exactly -1 or +1 and ``readouts`` integers in ``[0, count)`` (ValueError naming the argument,
raised before anything changes). A zero percept ("nothing seen") keeps a zero percept feature.
Floating inputs of any dtype are accepted; the work is float64 and results come back in ``dtype``
(float32 unless built otherwise). Cost: a prediction reads the factor rows in use once (``m (D + 1)``
float64 for the largest rank ``m`` among the readouts read; at most 1.4 MB per readout at D = 384);
rows of the same readout share that read.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from treeworld import checks

_EPS = 1e-12
_nodes, _weights = np.polynomial.hermite_e.hermegauss(48)  # probabilists' Gauss-Hermite: E over N(0, 1)
_QUADRATURE = (_nodes, _weights / _weights.sum())


class Valence(NamedTuple):
    mean: torch.Tensor  # (...,) expected outcome in (-1, 1)
    std: torch.Tensor  # (...,) posterior std of the valence (predict) or of the latent score (latent)


def _layout(owners: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Lay rows out per readout: the readouts used ``(U,)`` (all ``count`` of them when more than a
    quarter are, so that their states are read in place rather than copied), each row's group
    ``(n,)`` in them and place ``(n,)`` in its group, and the largest group ``K``."""
    used, group, sizes = torch.unique(owners, return_inverse=True, return_counts=True)
    if 4 * len(used) > count:  # reading every state beats copying a quarter of them
        used, group = torch.arange(count, device=owners.device), owners
        sizes = torch.bincount(owners, minlength=count)
    order = torch.argsort(group, stable=True)
    place = torch.empty_like(group)
    place[order] = torch.arange(len(group), device=owners.device) - (torch.cumsum(sizes, 0) - sizes)[group[order]]
    return used, group, place, int(sizes.max()) if len(group) else 0


class ValenceReadout(nn.Module):
    """Online Bayesian probit readouts of valence from percepts: ``count`` independent ones.

    Args:
        percept_dim: ``D``, the percept size (384 for the MiniLM vocabulary).
        prior_var: ``> 0``, prior variance of each percept weight (the latent score of an unknown
            unit percept has prior std about ``sqrt(prior_var)``). Larger learns the sign from
            fewer eats; 16 gets 100% on unseen names and fruit counts after 3 eats per kind.
        bias_var: ``> 0``, prior variance of the bias weight.
        count: ``R``, the number of independent readouts (1: one shared by every caller).
        spare_rows: ``>= 1``, the factor rows a readout may hold past ``D + 1`` before they are
            compressed (module docstring).
        dtype: dtype of results (the state and the work are float64).
    """

    def __init__(self, percept_dim: int, prior_var: float = 16.0, bias_var: float = 1.0, count: int = 1,
                 spare_rows: int = 64, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.percept_dim = checks.count(percept_dim, "percept_dim")
        self.prior_var = checks.positive(prior_var, "prior_var")
        self.bias_var = checks.positive(bias_var, "bias_var")
        self.count = checks.count(count, "count")
        self.spare_rows = checks.count(spare_rows, "spare_rows")
        checks.instance(dtype, torch.dtype, "dtype")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
        self.result_dtype = dtype
        R, D = self.count, self.percept_dim
        prior = torch.full((D + 1,), self.prior_var, dtype=torch.float64, device=device)
        prior[-1] = self.bias_var
        self.register_buffer("prior_variance", prior, persistent=False)  # the diagonal of P
        self.register_buffer("weight_mean", torch.zeros(R, D + 1, dtype=torch.float64, device=device))
        self.register_buffer("weight_factor", torch.zeros(R, 0, D + 1, dtype=torch.float64, device=device))
        self.register_buffer("factor_rank", torch.zeros(R, dtype=torch.int64, device=device))
        self.register_buffer("eats", torch.zeros(R, dtype=torch.int64, device=device))
        # Sensory adaptation: the sum and count of the unit percepts shown to adapt().
        self.register_buffer("seen_sum", torch.zeros(R, D, dtype=torch.float64, device=device))
        self.register_buffer("seen_count", torch.zeros(R, dtype=torch.int64, device=device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """The factor's row count is the saved one; a rank outside it is an error."""
        factor = state_dict.get(prefix + "weight_factor")
        if isinstance(factor, torch.Tensor) and factor.dim() == 3:
            self.weight_factor = self.weight_factor.new_zeros(len(self.weight_factor), factor.shape[1],
                                                              self.weight_factor.shape[2])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        rows = self.weight_factor.shape[1]
        if not error_msgs and not bool(((self.factor_rank >= 0) & (self.factor_rank <= rows)).all()):
            error_msgs.append(f"{prefix}factor_rank: expected ranks in [0, {rows}] (the factor's rows), got "
                              f"{int(self.factor_rank.min())}..{int(self.factor_rank.max())}")

    # ----------------------------------------------------------------------------------- helpers
    def _unit(self, percepts, name: str) -> torch.Tensor:
        """(..., D) percepts -> (n, D) float64 unit rows (zero rows stay zero)."""
        checks.last_dim(percepts, self.percept_dim, name, "percept_dim")
        checks.finite_tensor(percepts, name)
        x = percepts.detach().to(device=self.weight_mean.device, dtype=torch.float64).reshape(-1, self.percept_dim)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    def _owners(self, readouts, shape: torch.Size) -> torch.Tensor:
        """``readouts`` (shape) -> (n,) long readout index per row; None: readout 0 for every row."""
        device = self.weight_mean.device
        if readouts is None:
            return torch.zeros(math.prod(shape), dtype=torch.long, device=device)
        checks.instance(readouts, torch.Tensor, "readouts")
        if readouts.dtype.is_floating_point or readouts.dtype.is_complex or readouts.dtype == torch.bool:
            raise TypeError(f"readouts: expected an integer tensor, got {readouts.dtype}")
        if tuple(readouts.shape) != tuple(shape):
            raise ValueError(f"readouts: expected shape {tuple(shape)} (the percepts' leading shape), "
                             f"got {tuple(readouts.shape)}")
        owners = readouts.reshape(-1).to(device=device, dtype=torch.long)
        if len(owners) and (int(owners.min()) < 0 or int(owners.max()) >= self.count):
            raise ValueError(f"readouts: expected indices in [0, {self.count}), got "
                             f"{int(owners.min())}..{int(owners.max())}")
        return owners

    def _inputs(self, percepts, readouts) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """Checked inputs -> (n, D + 1) float64 features (adapted unit percept, 1), (n,) owners and
        the rows' shape."""
        x = self._unit(percepts, "percepts")
        shape = percepts.shape[:-1]
        owners = self._owners(readouts, shape)
        seen = x.abs().amax(dim=-1, keepdim=True) > 0  # a zero percept keeps a zero feature: the bias alone
        x = torch.where(seen, x - self.center()[owners], 0.0)
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1), owners, shape

    def center(self) -> torch.Tensor:
        """(R, D) float64 the adaptation centres: ``sum / (count + 1)`` of the unit percepts seen (0 before any)."""
        return self.seen_sum / (self.seen_count.double() + 1.0)[:, None]

    def covariance(self) -> torch.Tensor:
        """(R, D+1, D+1) float64 the posterior covariances written out: ``P - H^T H``."""
        return torch.diag(self.prior_variance) - self.weight_factor.mT @ self.weight_factor

    def _factors(self, used: torch.Tensor) -> torch.Tensor:
        """(U, m, D+1) the factor rows of readouts ``used`` (U,), ``m`` their largest rank (a view
        of the stored tensor when all are used)."""
        m = int(self.factor_rank[used].max()) if len(used) else 0
        return self.weight_factor[:, :m] if len(used) == self.count else self.weight_factor[used, :m]

    def _latent(self, features: torch.Tensor, owners: torch.Tensor, project: bool = False) -> tuple[torch.Tensor, ...]:
        """Posterior mean and variance (n,) of the latent score of feature rows (n, D+1) under
        readouts ``owners`` (n,), and the rows' layout (``_layout``) with, if ``project``, ``F cov``
        per group ``(U, K, D+1)`` for an update."""
        used, group, place, K = _layout(owners, self.count)
        mu = (features * self.weight_mean[owners]).sum(-1)
        if len(used) == 1:  # one readout: its rows in order, no copy
            padded = features[None]
        else:
            padded = features.new_zeros(len(used), K, features.shape[-1])
            padded[group, place] = features
        factor = self._factors(used)
        reduced = torch.bmm(padded, factor.mT)  # (U, K, m): F H^T
        rows = reduced[0] if len(used) == 1 else reduced[group, place]
        var = ((features.square() * self.prior_variance).sum(-1) - rows.square().sum(-1)).clamp_min(0.0)  # (rounding)
        if not project:
            return mu, var, (used, group, place)
        projected = padded * self.prior_variance - torch.bmm(reduced, factor)  # (U, K, D+1): F P - F H^T H
        return mu, var, (used, group, place, padded, projected)

    @property
    def capacity(self) -> int:
        """The most factor rows a readout holds: ``D + 1 + spare_rows`` (past it they are compressed)."""
        return self.percept_dim + 1 + self.spare_rows

    def _append(self, used: torch.Tensor, group: torch.Tensor, place: torch.Tensor, rows: torch.Tensor) -> None:
        """Append factor rows (n, D+1), row ``i`` to readout ``used[group[i]]`` at its rank +
        ``place[i]``; a readout whose rows would pass ``D + 1 + spare_rows`` is compressed to the
        ``R`` of the QR of its rows (``R^T R = H^T H``)."""
        start = self.factor_rank[used]
        end = start + torch.bincount(group, minlength=len(used))
        over = end > self.capacity
        self._reserve(int(end[~over].max()) if bool((~over).any()) else 0)
        fits = ~over[group]
        self.weight_factor[used[group[fits]], start[group[fits]] + place[fits]] = rows[fits]
        self.factor_rank[used[~over]] = end[~over]
        for u in over.nonzero().flatten().tolist():
            readout = int(used[u])
            stacked = torch.cat([self.weight_factor[readout, :int(start[u])], rows[group == u]])
            compressed = torch.linalg.qr(stacked, mode="r").R  # (D + 1, D + 1)
            self._reserve(len(compressed))
            self.weight_factor[readout] = 0.0
            self.weight_factor[readout, :len(compressed)] = compressed
            self.factor_rank[readout] = len(compressed)

    def _reserve(self, rows: int) -> None:
        """Grow the factor's row count to at least ``rows`` (in steps of 16: growth copies the bank)."""
        have = self.weight_factor.shape[1]
        if rows > have:
            grown = min(self.capacity, max(rows, have + 16))
            extra = self.weight_factor.new_zeros(len(self.weight_factor), grown - have, self.weight_factor.shape[2])
            self.weight_factor = torch.cat([self.weight_factor, extra], dim=1)

    # -------------------------------------------------------------------------------------- API
    @torch.no_grad()
    def adapt(self, percepts: torch.Tensor, readouts: torch.Tensor | None = None) -> None:
        """Sensory adaptation: fold ``(..., D)`` percepts (e.g. every sight) into the centres of
        ``readouts`` ``(...)`` (default: readout 0)."""
        x = self._unit(percepts, "percepts")
        owners = self._owners(readouts, percepts.shape[:-1])
        self.seen_sum.index_add_(0, owners, x)
        self.seen_count.index_add_(0, owners, torch.ones_like(owners))

    @torch.no_grad()
    def predict(self, percepts: torch.Tensor, readouts: torch.Tensor | None = None) -> Valence:
        """``(..., D)`` percepts judged by ``readouts`` ``(...)`` (default: readout 0) ->
        ``Valence(mean (...,), std (...,))``: expected outcome in (-1, 1) and its posterior std
        (epistemic, in valence units)."""
        features, owners, shape = self._inputs(percepts, readouts)
        mu, var, _ = self._latent(features, owners)
        mean = 2.0 * torch.special.ndtr(mu / torch.sqrt(1.0 + var)) - 1.0
        nodes, weights = (torch.as_tensor(a, dtype=torch.float64, device=mu.device) for a in _QUADRATURE)
        value = 2.0 * torch.special.ndtr(mu[:, None] + var.sqrt()[:, None] * nodes) - 1.0  # (n, Q)
        std = (value.square() @ weights - mean.square()).clamp_min(0.0).sqrt()
        return Valence(mean.to(self.result_dtype).reshape(shape), std.to(self.result_dtype).reshape(shape))

    @torch.no_grad()
    def latent(self, percepts: torch.Tensor, readouts: torch.Tensor | None = None) -> Valence:
        """``(..., D)`` percepts -> posterior mean and std ``(...)`` of the latent probit score ``f``."""
        features, owners, shape = self._inputs(percepts, readouts)
        mu, var, _ = self._latent(features, owners)
        return Valence(mu.to(self.result_dtype).reshape(shape), var.sqrt().to(self.result_dtype).reshape(shape))

    @torch.no_grad()
    def update(self, percepts: torch.Tensor, outcomes: torch.Tensor, readouts: torch.Tensor | None = None) -> None:
        """Learn from eats: ``percepts`` ``(..., D)`` of the trees eaten, ``outcomes`` ``(...)`` the
        sign of the health change, -1 (poison) or +1 (edible), ``readouts`` ``(...)`` the readout
        each eat teaches (default: readout 0)."""
        features, owners, shape = self._inputs(percepts, readouts)
        checks.instance(outcomes, torch.Tensor, "outcomes")
        if outcomes.is_floating_point():
            checks.finite_tensor(outcomes, "outcomes")
        if tuple(outcomes.shape) != tuple(shape):
            raise ValueError(f"outcomes: expected shape {tuple(shape)} (the percepts' leading "
                             f"shape), got {tuple(outcomes.shape)}")
        y = outcomes.detach().to(self.weight_mean.device).reshape(-1).double()
        if not bool(((y == 1) | (y == -1)).all()):
            raise ValueError("outcomes: expected only -1 (poison) or +1 (edible), got "
                             f"{sorted(set(y.tolist()) - {1.0, -1.0})[:5]}")
        if y.numel() == 0:
            return
        mu, s, (used, group, place, padded, projected) = self._latent(features, owners, project=True)
        root = torch.sqrt(1.0 + s)
        z = y * mu / root
        lam = torch.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - torch.special.log_ndtr(z))
        c = lam * (lam + z) / (1.0 + s)
        keep = 1.0 - s * c  # s' / s, in (0, 1]
        root_tau, residual = (torch.zeros(padded.shape[:2], dtype=torch.float64, device=y.device) for _ in range(2))
        root_tau[group, place] = (c / keep).sqrt()
        residual[group, place] = y * lam / (root * keep)  # the site's shift minus tau mu
        g_cov = root_tau[..., None] * projected  # (U, K, D+1): G cov, with G = sqrt(tau) F
        inner = torch.eye(padded.shape[1], dtype=torch.float64, device=y.device) + g_cov @ (root_tau[..., None] * padded).mT
        half = torch.linalg.solve_triangular(torch.linalg.cholesky(inner), g_cov, upper=False)  # L^-1 G cov
        # cov F^T r is (F cov)^T r; cov' F^T r takes off the same low-rank term as cov'
        pulled = (residual[:, None, :] @ projected)[:, 0] - (half.mT @ (half @ (residual[:, None, :] @ padded).mT))[..., 0]
        self.weight_mean.index_add_(0, used, pulled)
        self._append(used, group, place, half[group, place])  # cov' = cov - half^T half
        self.eats.index_add_(0, owners, torch.ones_like(owners))

    def extra_repr(self) -> str:
        return (f"percept_dim={self.percept_dim}, prior_var={self.prior_var}, bias_var={self.bias_var}, "
                f"count={self.count}")
