"""A learned, rank-deficient pseudometric for percepts and a Gaussian sampler around a percept.

The metric. A learnable embedding ``E`` ``(M, N)`` (``M = metric_rank <= N = vector_dim``) maps a
percept difference to ``R^M``: ``d(x, y) = ||E (x - y)|| / scale``. It is a pseudometric: percepts
that differ only along the null space of ``E`` (irrelevant distinctions) are at distance 0.

The left inverse. ``E^+ = E^T (E E^T + tau I_M)^{-1}`` ``(N, M)``, Tikhonov-regularized: in the
singular basis of ``E`` it scales by ``s / (s^2 + tau) <= 1 / (2 sqrt(tau))``, so it stays finite
for any ``E`` (zero, rank-deficient, huge), and ``E E^+ = I`` up to ``tau / s^2``.

The sampler. ``z = reference + scale * beta * E^+ v``, ``v ~ N(0, I_M)``. Then
``E (z - reference) ~= scale * beta * v``, whose norm is ``scale * beta * chi_M``; with
``beta = 1 / E[chi_M] = Gamma(M/2) / (sqrt(2) Gamma((M+1)/2))`` the mean pseudo-distance of a
sample to its reference, in units of ``scale``, is 1 (exactly as ``tau -> 0``; Tikhonov shrinks it
by at most ``tau / s_min^2``). The seed's ``sqrt(2)/2 (M/N)^2`` was found empirically for one kind
of ``E`` and a diagonal-rescaled inverse; it does not carry over to other ``E``, ``M`` or ``N``.

The density. Samples live on the ``M``-dimensional affine subspace ``reference + range(E^+)``;
the density there (change of variables with the Gram determinant of ``A = scale * beta * E^+``) is
``log N(v; 0, I_M) - 1/2 logdet(A^T A)``, with ``v = A^# (z - reference)`` recovered by the exact
left inverse of ``A`` on its range, ``U diag((s^2 + tau) / s) V^T / (scale beta)``, and
``1/2 logdet((E^+)^T E^+) = sum log(s / (s^2 + tau))`` (``E = U diag(s) V^T``). These factors
depend on ``E`` alone: they are cached per value of ``E`` and recomputed when it changes. The
density needs ``E`` of full row rank (else the log-determinant is ``-inf``).

Arguments and dtypes. Tensors must be finite, and ``scale`` finite and ``> 0`` (ValueError naming
the argument). Floating inputs of any dtype are cast to the embedding's dtype and results come
back in it (``.double()`` for float64 work): the rule of every agents module.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from treeworld import checks
from treeworld.agents.distributions import ReferenceDistribution, positive_scale


class _Factors(NamedTuple):
    left_inverse: torch.Tensor  # (N, M): E^+ = E^T (E E^T + tau I)^{-1}
    recover: torch.Tensor  # (M, N): exact left inverse of E^+ on its range
    half_logdet: torch.Tensor  # (): 1/2 logdet((E^+)^T E^+)


def _check_scale(scale, dtype: torch.dtype) -> torch.Tensor | float:
    """A finite positive number, or a tensor of them cast to ``dtype``."""
    scale = positive_scale(scale)
    return scale.to(dtype) if isinstance(scale, torch.Tensor) else scale


class PseudoMetric(nn.Module):
    """Learned rank-deficient pseudometric ``d(x, y) = ||E (x - y)|| / scale`` on ``R^vector_dim``.

    Args:
        vector_dim: ``N``, the percept dimension.
        metric_rank: ``M``, ``1 <= M <= N``, the rank of the embedding.
        tau: ``> 0``, the Tikhonov term of the left inverse.
        generator: a CPU ``torch.Generator`` (``None``: fresh entropy) that draws the initial ``E``
            ``(M, N)`` from ``N(0, 1/N)`` (so ``E E^T ~= I``).
    """

    def __init__(self, vector_dim: int, metric_rank: int, tau: float = 1e-3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.vector_dim = checks.count(vector_dim, "vector_dim")
        self.metric_rank = checks.count(metric_rank, "metric_rank")
        if self.metric_rank > self.vector_dim:
            raise ValueError(f"metric_rank: expected <= vector_dim={self.vector_dim}, got {self.metric_rank}")
        self.tau = checks.positive(tau, "tau")
        initial = torch.randn(self.metric_rank, self.vector_dim, generator=checks.generator(generator))
        initial = initial / math.sqrt(self.vector_dim)
        self.embedding = nn.Parameter(initial)  # (M, N)
        self._cache: tuple[tuple, torch.Tensor, _Factors] | None = None
        self._identity: tuple = (None, None, False)  # (E, its version and layout, whether E = I): see embed

    def extra_repr(self) -> str:
        return f"vector_dim={self.vector_dim}, metric_rank={self.metric_rank}, tau={self.tau}"

    def _input(self, tensor, name: str, rows: bool = False) -> torch.Tensor:
        """A finite floating tensor ``(..., N)`` (``(..., rows, N)`` if ``rows``), in E's dtype."""
        if rows:
            checks.matrix(tensor, self.vector_dim, name, "vector_dim")
        else:
            checks.last_dim(tensor, self.vector_dim, name, "vector_dim")
        return checks.finite_tensor(tensor.to(self.embedding.dtype), name)  # after the cast: no overflow to inf

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``E x`` without autograd, for unchecked inputs in E's dtype: ``(..., N) -> (..., M)``, a
        new tensor. An identity ``E`` (a Euclidean metric) is not multiplied: the test is redone
        only when ``E`` changed."""
        E = self.embedding.detach()
        key = (E._version, E.shape, E.dtype, E.device)
        held, held_key, identity = self._identity
        if held is not self.embedding or held_key != key:  # the parameter itself, not its address
            identity = E.shape[0] == E.shape[1] and torch.equal(E, torch.eye(len(E), dtype=E.dtype, device=E.device))
            self._identity = (self.embedding, key, identity)
        return x.detach().clone() if identity else x.detach() @ E.T

    def pseudo_distance(self, x: torch.Tensor, y: torch.Tensor, squared: bool = False, scale=None) -> torch.Tensor:
        """``||E (x - y)|| / scale`` (squared if asked): ``(..., N)``, ``(..., N)`` -> ``(...)``."""
        x, y = self._input(x, "x"), self._input(y, "y")
        distance = torch.linalg.vector_norm((x - y) @ self.embedding.T, dim=-1)  # (...)
        if scale is not None:
            distance = distance / _check_scale(scale, distance.dtype)
        return distance.square() if squared else distance

    def cross_distance(self, x: torch.Tensor, y: torch.Tensor, squared: bool = False, scale=None) -> torch.Tensor:
        """All pairs: ``x`` ``(..., T, N)``, ``y`` ``(..., S, N)`` -> ``(..., T, S)``."""
        x, y = self._input(x, "x", rows=True), self._input(y, "y", rows=True)
        ex, ey = x @ self.embedding.T, y @ self.embedding.T  # (..., T, M), (..., S, M)
        distance = torch.cdist(ex, ey, compute_mode="donot_use_mm_for_euclid_dist")  # exact, not |a|^2+|b|^2-2ab
        if scale is not None:
            distance = distance / _check_scale(scale, distance.dtype)
        return distance.square() if squared else distance

    def _factors(self) -> _Factors:
        """Left inverse, its exact inverse and half log-determinant; cached per value of E.

        From the SVD ``E = U diag(s) V^T`` in float64. While autograd tracks ``E`` they are
        recomputed so gradients reach it; each distribution keeps its own.
        """
        E = self.embedding
        key = (self.tau, E.dtype, E.device, E.shape)
        tracking = torch.is_grad_enabled() and E.requires_grad
        if not tracking and self._cache is not None and self._cache[0] == key and torch.equal(self._cache[1], E):
            return self._cache[2]
        U, s, Vh = torch.linalg.svd(E.to(torch.float64), full_matrices=False)  # (M, M), (M,), (M, N)
        s = s * (s > s.amax() * max(E.shape) * torch.finfo(s.dtype).eps)  # rounding noise is rank 0
        gain = s / (s.square() + self.tau)  # <= 1 / (2 sqrt(tau)): finite for any E
        left_inverse = (Vh.T * gain) @ U.T  # (N, M)
        recover = (U / gain) @ Vh  # (M, N); needs full row rank
        half_logdet = gain.log().sum()
        factors = _Factors(left_inverse.to(E.dtype), recover.to(E.dtype), half_logdet.to(E.dtype))
        if not tracking:
            self._cache = (key, E.detach().clone(), factors)
        return factors

    def left_inverse(self) -> torch.Tensor:
        """Tikhonov-regularized left inverse ``E^T (E E^T + tau I)^{-1}``, finite for any E.  # (N, M)"""
        return self._factors().left_inverse

    def distribution(self, reference: torch.Tensor, scale) -> "LowRankGaussian":
        """Gaussian around ``reference`` ``(..., N)`` with mean pseudo-distance ``scale``."""
        return LowRankGaussian(self, reference, scale)


class LowRankGaussian(ReferenceDistribution):
    """``z = reference + scale * beta * E^+ v``, ``v ~ N(0, I_M)``: see the module docstring.

    Batch shape: ``reference.shape[:-1]`` broadcast with ``scale``; event shape ``(N,)``. The
    reference (finite) is cast to the embedding's dtype, and so are ``log_prob``'s values.
    """

    def __init__(self, metric: PseudoMetric, reference: torch.Tensor, scale,
                 validate_args: bool | None = None) -> None:
        checks.instance(metric, PseudoMetric, "metric")
        checks.last_dim(reference, metric.vector_dim, "reference", "vector_dim")
        self.metric = metric
        super().__init__(reference.to(metric.embedding.dtype), scale, metric.vector_dim, validate_args)
        self._factors = metric._factors()
        M = metric.metric_rank
        self.beta = math.exp(math.lgamma(M / 2) - math.lgamma((M + 1) / 2)) / math.sqrt(2.0)  # 1 / E[chi_M]

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized samples ``(*sample_shape, *batch_shape, N)``.

        ``generator``: a CPU ``torch.Generator`` (``None``: fresh entropy); ``v`` is drawn on the
        CPU and then moved to the reference's device.
        """
        shape = torch.Size(sample_shape) + self.batch_shape + (self.metric.metric_rank,)
        v = torch.randn(shape, dtype=self.reference.dtype, generator=checks.generator(generator))
        v = v.to(self.reference.device)
        step = v @ self._factors.left_inverse.to(v.dtype).T  # (..., N)
        return self.reference + (self.beta * self.scale)[..., None] * step

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Density on the sampler's ``M``-dimensional subspace.  # (..., N) -> (...)"""
        checks.last_dim(value, self.metric.vector_dim, "value", "vector_dim")
        value = checks.finite_tensor(value, "value").to(self.reference.dtype)
        if self._validate_args:
            self._validate_sample(value)
        width = self.beta * self.scale  # (...)
        v = ((value - self.reference) @ self._factors.recover.to(value.dtype).T) / width[..., None]  # (..., M)
        M = self.metric.metric_rank
        return (-0.5 * v.square().sum(-1) - 0.5 * M * math.log(2.0 * math.pi)
                - M * width.log() - self._factors.half_logdet)
