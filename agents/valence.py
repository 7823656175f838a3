"""Valence: a learned readout on percepts of how good a tree's fruit is to eat.

Learned, not given. Nothing here knows the vocabulary, the kinds or which of them are poisonous:
the readout sees percepts and the outcomes of eating (the sign of the health change after an
eat), and learns online which directions of percept space predict poison.

The model: Bayesian probit regression on the normalized percept, learned by assumed density
filtering (closed form, no SGD, no learning rate). The latent score of a percept ``x`` is
``f = w . phi(x)``, with ``phi(x) = (x / ||x||, 1)`` (the unit percept and a bias feature, so the
base rate of poison is learned too), and ``P(edible | f) = Phi(f)``. The prior on ``w`` is
Gaussian, ``N(0, diag(prior_var, ..., prior_var, bias_var))``; the posterior stays Gaussian,
held in natural parameters: ``precision`` ``(D + 1, D + 1)`` and ``shift = precision @ mean``.
An eat with outcome ``y`` in {-1, +1} is one probit site; its exact moment match against the
current posterior of ``f`` (``N(mu, s)``) is a Gaussian site of precision
``tau = c / (1 - s c)`` and shift ``(mu c + y lambda / sqrt(1 + s)) / (1 - s c)``, with
``z = y mu / sqrt(1 + s)``, ``lambda = N(z) / Phi(z)``, ``c = lambda (lambda + z) / (1 + s)``
(written this way, nothing is divided by ``s``, and ``0 <= tau < 1``). Sites only ever add PSD
terms to the precision, so it stays symmetric positive definite over any number of updates, and
the result does not depend on a learning rate.

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

One shared readout. Edibility is a property of the kind, the same for every agent and every
world, so the readout is shared knowledge: one model, updated with the eats of all B agents of a
batch (``update`` takes any number of rows, e.g. the agents that ate this step, flattened), and
never reset between episodes: a poisonous kind learned in one world stays poisonous in the next.
It is saved with the agent (``state_dict``: ``precision``, ``shift``, the ``eats`` counter and the
adaptation's ``seen_sum`` and ``seen_count``;
exact round trip). The
rows of one ``update`` call are moment-matched against the same current posterior and added
together (the parallel form of the filter; with one row it is the sequential filter exactly), so
the result does not depend on the order of the agents in the batch.

Inputs and dtypes. Percepts must be finite with last dimension ``percept_dim``; outcomes must be
exactly -1 or +1 (ValueError naming the argument, raised before anything changes). A zero
percept ("nothing seen") keeps a zero percept feature. Floating inputs of any dtype are cast to
the module's dtype (float32 unless built otherwise, or ``.double()``), and results come back in
it; the posterior is solved in float64 internally: the mean weights and the
covariance are kept in a cache keyed on the identity and in-place version of ``precision`` and
``shift``, solved by Cholesky on the first prediction after a change (an update, a
``load_state_dict``, an outside edit; a few ms at D = 384), so equal states predict equally and
the cache cannot go stale; a percept then costs two (D+1)-products.
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


class ValenceReadout(nn.Module):
    """Online Bayesian probit readout of valence from percepts, shared by all agents.

    Args:
        percept_dim: ``D``, the percept size (384 for the MiniLM vocabulary).
        prior_var: ``> 0``, prior variance of each percept weight (the latent score of an unknown
            unit percept has prior std about ``sqrt(prior_var)``). Larger learns the sign from
            fewer eats; 16 gets 100% on unseen names and fruit counts after 3 eats per kind.
        bias_var: ``> 0``, prior variance of the bias weight.
        dtype: dtype of the stored posterior and of results.
    """

    def __init__(self, percept_dim: int, prior_var: float = 16.0, bias_var: float = 1.0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.percept_dim = checks.count(percept_dim, "percept_dim")
        self.prior_var = checks.positive(prior_var, "prior_var")
        self.bias_var = checks.positive(bias_var, "bias_var")
        checks.instance(dtype, torch.dtype, "dtype")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
        diag = torch.full((self.percept_dim + 1,), 1.0 / self.prior_var, dtype=torch.float64)
        diag[-1] = 1.0 / self.bias_var
        self.register_buffer("precision", torch.diag(diag).to(dtype=dtype, device=device))
        self.register_buffer("shift", torch.zeros(self.percept_dim + 1, dtype=dtype, device=device))
        self.register_buffer("eats", torch.zeros((), dtype=torch.int64, device=device))
        # Sensory adaptation: the sum and count of the unit percepts shown to adapt() (float64).
        self.register_buffer("seen_sum", torch.zeros(self.percept_dim, dtype=torch.float64, device=device))
        self.register_buffer("seen_count", torch.zeros((), dtype=torch.int64, device=device))
        self._posterior_cache: tuple | None = None  # (key, mean (D+1,), covariance (D+1, D+1))

    # ----------------------------------------------------------------------------------- helpers
    def _features(self, percepts, name: str) -> torch.Tensor:
        """(..., D) percepts -> (n, D + 1) float64 features (adapted unit percept, 1)."""
        x = self._unit(percepts, name) - self.center()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)

    def _unit(self, percepts, name: str) -> torch.Tensor:
        """(..., D) percepts -> (n, D) float64 unit rows (zero rows stay zero)."""
        checks.last_dim(percepts, self.percept_dim, name, "percept_dim")
        checks.finite_tensor(percepts, name)
        x = percepts.detach().to(device=self.precision.device, dtype=torch.float64).reshape(-1, self.percept_dim)
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    def center(self) -> torch.Tensor:
        """(D,) float64 the adaptation centre: ``sum / (count + 1)`` of the unit percepts seen (0 before any)."""
        return self.seen_sum / (self.seen_count.double() + 1.0)

    @torch.no_grad()
    def adapt(self, percepts: torch.Tensor) -> None:
        """Sensory adaptation: fold ``(..., D)`` percepts (e.g. every sight) into the centre."""
        x = self._unit(percepts, "percepts")
        self.seen_sum.add_(x.sum(0))
        self.seen_count.add_(len(x))

    def _posterior_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (self.precision, self.shift))

    def _posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``(D+1,)`` and covariance ``(D+1, D+1)`` of the weights, float64, cached."""
        if self._posterior_cache is None or self._posterior_cache[0] != self._posterior_key():
            chol = torch.linalg.cholesky(self.precision.double())
            mean = torch.cholesky_solve(self.shift.double()[:, None], chol)[:, 0]
            self._posterior_cache = (self._posterior_key(), mean, torch.cholesky_inverse(chol))
        return self._posterior_cache[1:]

    def _latent(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent score of each feature row (float64)."""
        mean, covariance = self._posterior()
        return features @ mean, ((features @ covariance) * features).sum(-1)

    # -------------------------------------------------------------------------------------- API
    def predict(self, percepts: torch.Tensor) -> Valence:
        """``(..., D)`` percepts -> ``Valence(mean (...,), std (...,))``: expected outcome in (-1, 1)
        and its posterior std (epistemic, in valence units)."""
        shape = percepts.shape[:-1] if isinstance(percepts, torch.Tensor) else None
        features = self._features(percepts, "percepts")
        with torch.no_grad():
            mu, var = self._latent(features)
            mean = 2.0 * torch.special.ndtr(mu / torch.sqrt(1.0 + var)) - 1.0
            nodes, weights = (torch.as_tensor(a, dtype=torch.float64, device=mu.device) for a in _QUADRATURE)
            value = 2.0 * torch.special.ndtr(mu[:, None] + var.sqrt()[:, None] * nodes) - 1.0  # (n, Q)
            second = value.square() @ weights
            std = (second - mean.square()).clamp_min(0.0).sqrt()
        out = self.precision.dtype
        return Valence(mean.to(out).reshape(shape), std.to(out).reshape(shape))

    def latent(self, percepts: torch.Tensor) -> Valence:
        """``(..., D)`` percepts -> posterior mean and std of the latent probit score ``f``."""
        shape = percepts.shape[:-1] if isinstance(percepts, torch.Tensor) else None
        features = self._features(percepts, "percepts")
        with torch.no_grad():
            mu, var = self._latent(features)
        out = self.precision.dtype
        return Valence(mu.to(out).reshape(shape), var.sqrt().to(out).reshape(shape))

    def update(self, percepts: torch.Tensor, outcomes: torch.Tensor) -> None:
        """Learn from eats: ``percepts`` ``(..., D)`` of the trees eaten, ``outcomes`` ``(...)`` the
        sign of the health change, -1 (poison) or +1 (edible)."""
        features = self._features(percepts, "percepts")
        checks.instance(outcomes, torch.Tensor, "outcomes")
        if outcomes.is_floating_point():
            checks.finite_tensor(outcomes, "outcomes")
        if tuple(outcomes.shape) != tuple(percepts.shape[:-1]):
            raise ValueError(f"outcomes: expected shape {tuple(percepts.shape[:-1])} (the percepts' leading "
                             f"shape), got {tuple(outcomes.shape)}")
        y = outcomes.detach().to(self.precision.device).reshape(-1).double()
        if not bool(((y == 1) | (y == -1)).all()):
            raise ValueError("outcomes: expected only -1 (poison) or +1 (edible), got "
                             f"{sorted(set(y.tolist()) - {1.0, -1.0})[:5]}")
        if y.numel() == 0:
            return
        with torch.no_grad():
            mu, s = self._latent(features)
            root = torch.sqrt(1.0 + s)
            z = y * mu / root
            lam = torch.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - torch.special.log_ndtr(z))
            c = lam * (lam + z) / (1.0 + s)
            keep = 1.0 - s * c  # s' / s, in (0, 1]
            tau = c / keep
            gain = (mu * c + y * lam / root) / keep
            precision = self.precision.double() + (features.T * tau) @ features
            shift = self.shift.double() + features.T @ gain
            self.precision.copy_(0.5 * (precision + precision.T))
            self.shift.copy_(shift)
            self.eats.add_(y.numel())

    def extra_repr(self) -> str:
        return f"percept_dim={self.percept_dim}, prior_var={self.prior_var}, bias_var={self.bias_var}"
