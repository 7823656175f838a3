"""Path integration and the location belief of a TEM-style agent (the first slice of the TEM agent).

What is here. ``Belief`` holds, per agent of a batch of ``B``, a Fourier location code ``g_t``
``(B, L)`` and a position variance ``variance`` ``(B,)``. ``Belief.step(motion)`` path-integrates,
``g_t = PI(g_{t-1}, motion_t)``, through a ``PathIntegrator`` (an ``nn.Module``:
``forward(code (B, L), motion (B, dim)) -> code (B, L)``) and grows the variance. Two integrators:

- ``ExactPathIntegration(metric)``: ``metric``'s block rotation by ``alpha_j <k_i, motion>``
  (``FourierMetric.apply_displacement``).
- ``LearnedPathIntegration(metric)``: the same rotation, but through learned parameters: every
  module's lattice directions ``W_j`` ``(dim+1, dim)`` (phase velocities ``alpha_j W_j``, radians
  per world unit) and an odometry correction ``C`` ``(dim, dim)``; the phase steps are
  ``theta_j = alpha_j W_j C motion``. Initialised at ``W_j = K`` (the metric's simplex directions)
  and ``C = I`` it *is* the exact integrator; it is differentiable in ``W`` and ``C`` for the
  self-supervised training of a later issue. ``implied_displacements(motion)`` ``(B, J, dim)``
  gives each module's reading ``K^+ W_j C motion`` of the step, the hook of a consistency loss
  (the modules must agree on one displacement). Why ``W_j`` in units of ``alpha_j`` rather than raw
  velocities: the frequencies span ``ratio^(J-1)`` (2048 for the default metric), so raw velocities
  would mix magnitudes from 0.003 to 12 in one parameter; this way every entry starts at unit scale
  and the float64 phase arithmetic reproduces the exact integrator bit for bit at initialisation.

The default metric (``default_metric``): ``FourierMetric(location_dim=150, dim=2, scale=1024,
ratio=sqrt(2))``, ``J = 25`` modules, wavelengths ``2048 / sqrt(2)^j`` from 2048 down to 0.5 world
units. Why:

- Coarsest: ``lambda_0 = 2 * scale = 2048 > 2 * 1000``. The arena is a disc of radius 500; a code
  decodes unambiguously while every ``|<k_i, x>| < scale``, so every position within 1024 of the
  origin (the whole square ``[-500, 500]^2`` included, corners at 707), and ``displacement`` reads
  any step between two arena points (at most 1000 long) exactly. The power of two makes every other
  wavelength an exact power of two (2048, 1024, ..., 1, 0.5).
- Finest: ``lambda_24 = 0.5`` world units, so the finest module turns through a full cycle in half
  a unit: a phase error of 0.1 rad (noise a learned integrator or a memory correction may leave) is
  0.008 units, and float32 rounding (~1e-7 rad) is ~1e-8 units. Decoding over the arena is exact to
  3e-5 units in float32, the rounding of a float32 coordinate near 500 (the tests check < 1e-3).
- ``ratio = sqrt(2)``: the package default, as in grid cells; irrational, so codes of no place
  (beyond ``scale``) show up as disagreement between modules instead of aliasing silently, and
  each module has a wide margin (``pi / ratio`` rad of phase error) to resolve the next one's
  ambiguity. 25 modules of 6 numbers each give ``L = 150``.

Precision. Phase steps are formed and wrapped in float64 (as ``FourierMetric`` does) and the
rotation runs in the code's dtype. float32 is enough: 10,000 noiseless steps of length <= 5 across
the arena leave the decoded position within 1e-4 units of the summed motion (3e-12 for a metric
built under a float64 default dtype; ~1e-6 for a float32 one moved by ``.double()``, whose
directions stay float32-rounded) and
the (cos, sin) pair lengths within 1e-4 of 1 (rounding only; decoding reads angles, so lengths do not
matter; nothing renormalises them).

Variance: per step, not per unit moved. The world's odometry (``treeworld.sensors.odometry``) adds
Gaussian noise of std ``motion_noise`` per axis once every step, whatever the step's length (after
the gain and rotation bias). So each step adds exactly ``step_variance = motion_noise^2`` (per
axis; ``(motion_noise / motion_gain)^2`` once the gain is corrected: ``odometry_step_variance``),
and after ``n`` steps ``variance = variance_0 + n * step_variance`` per axis, i.e.
``E|position() - x|^2 = 2 * variance``: the exact error variance of integrating that odometry. A
rate per unit moved (``motion_noise^2 / max_step``) would match it only for full-length steps: it
under-reports shorter steps by ``max_step / length`` and a standing agent (whose odometry is still
noisy) not at all. At a steady speed the variance grows linearly with the distance travelled.

Arguments, dtypes, devices. Every public method checks its tensors (ValueError naming the argument
for a wrong shape or a NaN / inf; TypeError for a non-floating tensor), then casts them to the
module's dtype and device (those of the metric's buffers; ``.to()`` / ``.double()`` move the whole
module); results come back in them. ``Belief`` keeps the autograd graph through its steps (so a
rollout can be trained through); call ``detach()`` to cut it, or step under ``torch.no_grad()``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from treeworld import checks
from treeworld.agents.fourier import FourierMetric

_TWO_PI = 2.0 * math.pi

#: The default metric's settings (module docstring): J = 25 modules, wavelengths 2048 ... 0.5.
DEFAULT_LOCATION_DIM = 150
DEFAULT_SCALE = 1024.0
DEFAULT_RATIO = math.sqrt(2.0)


def default_metric(dim: int = 2) -> FourierMetric:
    """The world's location metric (module docstring), in the default dtype.

    ``dim`` 2 (the tree world) gives ``FourierMetric(150, 2, 1024, sqrt(2))``; other dims keep
    ``J = 25`` modules, ``location_dim = 50 (dim + 1)``.
    """
    J = DEFAULT_LOCATION_DIM // 6
    return FourierMetric(2 * J * (dim + 1), dim=dim, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO)


def odometry_step_variance(motion_noise: float, motion_gain: float = 1.0) -> float:
    """Variance per axis per step of the true motion given a (gain-corrected) observed one.

    The world observes ``motion_gain * R(motion_rotation) motion + N(0, motion_noise^2 I)``; once
    the gain and rotation are undone the noise is ``N(0, (motion_noise / motion_gain)^2 I)``.
    """
    motion_noise = checks.real(motion_noise, "motion_noise", low=0.0)
    motion_gain = checks.positive(motion_gain, "motion_gain")
    return (motion_noise / motion_gain) ** 2


def _as_input(tensor, name: str, shape: tuple[int, ...], described: str, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` checked to be a finite floating tensor of ``shape`` (``described`` in the message),
    cast to the dtype and device of ``like`` (a differentiable cast)."""
    checks.float_tensor(tensor, name)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {described}, got {tuple(tensor.shape)}")
    checks.finite_tensor(tensor, name)
    if tensor.dtype != like.dtype:
        tensor = tensor.to(like.dtype)
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}: expected values within the range of {like.dtype} (the module's dtype), "
                             f"got magnitudes up to {float(tensor.detach().abs().max()):.6g} before the cast")
    return tensor.to(like.device)


def _rotate_pairs(metric: FourierMetric, code: torch.Tensor, cycles: torch.Tensor) -> torch.Tensor:
    """Rotate every (cos, sin) pair of ``code`` ``(B, L)`` by ``2 pi cycles`` ``(B, J, dim+1)``
    (float64, unwrapped; wrapped before the trigonometry) -> ``(B, L)`` in the code's dtype."""
    cos, sin = FourierMetric._trig(cycles, code.dtype)
    pairs = code.unflatten(-1, (metric.num_modules, metric.dim + 1, 2))
    c, s = pairs[..., 0], pairs[..., 1]
    return torch.stack((c * cos - s * sin, s * cos + c * sin), dim=-1).flatten(-3)


class PathIntegrator(nn.Module):
    """``g_t = PI(g_{t-1}, motion_t)``: ``forward(code (B, L), motion (B, dim)) -> code (B, L)``.

    Subclasses implement ``integrate`` (same shapes, inputs already checked and cast); ``forward``
    checks and casts (module docstring). ``metric``: the ``FourierMetric`` of the codes, a submodule.
    """

    def __init__(self, metric: FourierMetric) -> None:
        super().__init__()
        self.metric = checks.instance(metric, FourierMetric, "metric")

    @property
    def location_dim(self) -> int:
        return self.metric.location_dim

    @property
    def dim(self) -> int:
        return self.metric.dim

    def check_inputs(self, code, motion) -> tuple[torch.Tensor, torch.Tensor]:
        """``code`` ``(B, L)`` and ``motion`` ``(B, dim)`` checked and cast (module docstring)."""
        L, dim, like = self.location_dim, self.dim, self.metric.alphas
        checks.float_tensor(code, "code")
        if code.ndim != 2:
            raise ValueError(f"code: expected shape (B, {L}) (B agents, location_dim={L}), got {tuple(code.shape)}")
        B = code.shape[0]
        code = _as_input(code, "code", (B, L), f"(B, {L}) (B agents, location_dim={L})", like)
        motion = _as_input(motion, "motion", (B, dim), f"({B}, {dim}) (B={B} agents of code, dim={dim})", like)
        return code, motion

    def forward(self, code: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """The codes after ``motion``: ``(B, L)``, ``(B, dim)`` -> ``(B, L)``."""
        return self.integrate(*self.check_inputs(code, motion))

    def integrate(self, code: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """``forward`` without the checks: ``(B, L)``, ``(B, dim)`` in the module's dtype -> ``(B, L)``."""
        raise NotImplementedError


class ExactPathIntegration(PathIntegrator):
    """The metric's own rotation: every pair turns by ``alpha_j <k_i, motion>`` (no parameters)."""

    def integrate(self, code: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return _rotate_pairs(self.metric, code, self.metric._cycles(motion))


class LearnedPathIntegration(PathIntegrator):
    """Phase steps ``theta_j = alpha_j W_j C motion`` through learned ``W`` and ``C`` (module docstring).

    Parameters, in the metric's dtype and device: ``lattice`` ``W`` ``(J, dim+1, dim)``, every
    module's directions in units of its frequency (initialised to the metric's simplex directions
    ``K``), and ``correction`` ``C`` ``(dim, dim)``, applied to the observed motion first
    (initialised to the identity; an odometry ``motion_obs = M motion`` is undone by ``C = M^-1``).
    At initialisation ``forward`` equals ``ExactPathIntegration``'s.
    """

    def __init__(self, metric: FourierMetric) -> None:
        super().__init__(metric)
        J, n, dim = metric.num_modules, metric.dim + 1, metric.dim
        like = metric.alphas
        self.lattice = nn.Parameter(metric.directions.detach().clone().expand(J, n, dim).clone())
        self.correction = nn.Parameter(torch.eye(dim, dtype=like.dtype, device=like.device))

    @property
    def velocities(self) -> torch.Tensor:
        """Phase velocities ``alpha_j W_j`` in radians per world unit.  # (J * (dim+1), dim)"""
        return (self.metric.alphas[:, None, None] * self.lattice).flatten(0, 1)

    def _corrected(self, motion: torch.Tensor) -> torch.Tensor:
        """``C motion`` in float64.  # (B, dim)"""
        return motion.to(torch.float64) @ self.correction.to(torch.float64).T

    def _cycles(self, motion: torch.Tensor) -> torch.Tensor:
        """Phase steps in float64 cycles, unwrapped.  # (B, dim) -> (B, J, dim+1)"""
        along = torch.einsum("bd,jid->bji", self._corrected(motion), self.lattice.to(torch.float64))
        return along * (self.metric.alphas.to(torch.float64) / _TWO_PI)[:, None]

    def integrate(self, code: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return _rotate_pairs(self.metric, code, self._cycles(motion))

    def phase_steps(self, motion: torch.Tensor) -> torch.Tensor:
        """Phase steps ``theta = alpha_j W_j C motion`` in radians, unwrapped.  # (B, dim) -> (B, J * (dim+1))

        The layout ``FourierMetric.displacement_variance`` takes.
        """
        motion = self._check_motion(motion)
        return (_TWO_PI * self._cycles(motion)).flatten(-2).to(motion.dtype)

    def implied_displacements(self, motion: torch.Tensor) -> torch.Tensor:
        """Each module's reading of the step: ``K^+ W_j C motion``.  # (B, dim) -> (B, J, dim)

        ``theta_j / alpha_j`` projected onto displacements by the simplex's pseudo-inverse ``K^+``
        (unwrapped: one step turns a module by a known, continuous amount). All ``J`` readings equal
        ``C motion`` at initialisation; their spread across modules is the consistency loss of the
        training to come. Differentiable in ``lattice`` and ``correction``.
        """
        motion = self._check_motion(motion)
        corrected = motion @ self.correction.T  # (B, dim)
        along = torch.einsum("bd,jid->bji", corrected, self.lattice)  # (B, J, dim+1)
        return along @ self.metric.directions_pinv.T  # (B, J, dim)

    @torch.no_grad()
    def module_maps(self) -> torch.Tensor:
        """Each module's linear map from observed to believed step: ``implied_displacements`` of the
        unit steps.  # (J, dim, dim), column k the reading of unit step k"""
        eye = torch.eye(self.dim, dtype=self.metric.alphas.dtype, device=self.metric.alphas.device)
        return self.implied_displacements(eye).permute(1, 2, 0)

    @torch.no_grad()
    def odometry_map(self) -> dict[str, float]:
        """How the integrator reads a step, averaged over modules: the mean of ``module_maps`` as
        ``gain`` (sqrt of |det|), ``rotation`` (radians, the angle of its first column) and ``spread``
        (largest deviation of a module's map from the mean). Exact lattice and identity correction:
        1, 0, 0; a calibrated integrator under ``motion_gain`` g and ``motion_rotation`` r reads
        1 / g and -r."""
        maps = self.module_maps()
        mean = maps.mean(0)
        return {"gain": math.sqrt(abs(torch.linalg.det(mean.double()).item())),
                "rotation": math.atan2(mean[1, 0].item(), mean[0, 0].item()),
                "spread": (maps - mean).abs().max().item()}

    def _check_motion(self, motion) -> torch.Tensor:
        """``motion`` ``(B, dim)``, any ``B``, checked and cast."""
        checks.float_tensor(motion, "motion")
        B = motion.shape[0] if motion.ndim == 2 else "B"
        return _as_input(motion, "motion", (B, self.dim), f"(B, {self.dim}) (dim={self.dim})", self.metric.alphas)


def _row_index(rows, batch_size: int, device: torch.device) -> torch.Tensor:
    """``rows`` (None: all; a bool mask ``(B,)``; distinct indices) as an index ``(N,)``, in the given order."""
    if rows is None:
        return torch.arange(batch_size, device=device)
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    array = np.asarray(rows)
    if array.dtype == np.bool_:
        if array.shape != (batch_size,):
            raise ValueError(f"rows: expected a bool mask of shape ({batch_size},) (batch_size={batch_size}), "
                             f"got shape {array.shape}")
        array = np.flatnonzero(array)
    elif array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"rows: expected None, a bool mask ({batch_size},) or a 1-d sequence of row indices, "
                         f"got {array.dtype} of shape {array.shape}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= batch_size):
        raise ValueError(f"rows: expected indices in [0, {batch_size}) (batch_size={batch_size}), "
                         f"got {array.min()} .. {array.max()}")
    if len(np.unique(array)) != len(array):
        raise ValueError(f"rows: expected distinct row indices, got {array.tolist()}")
    return torch.as_tensor(array, device=device)


class Belief(nn.Module):
    """Where ``B`` agents think they are: codes ``(B, L)`` and position variances ``(B,)``.

    Args:
        integrator: the ``PathIntegrator`` (a submodule; its metric is ``self.metric``).
        batch_size: ``B`` agents.
        step_variance: ``>= 0``, world units^2 per axis added by every step (module docstring:
            ``odometry_step_variance(motion_noise, motion_gain)`` for the world's odometry).

    Buffers (not saved in ``state_dict``: an episode's state): ``code`` ``(B, L)``, ``variance``
    ``(B,)`` per axis (``sigma = sqrt(variance)``). A new belief has every agent at the origin with
    variance 0, the agent's own frame.
    """

    def __init__(self, integrator: PathIntegrator, batch_size: int, step_variance: float = 0.0) -> None:
        super().__init__()
        self.integrator = checks.instance(integrator, PathIntegrator, "integrator")
        self.batch_size = checks.count(batch_size, "batch_size")
        self.step_variance = checks.real(step_variance, "step_variance", low=0.0)
        like = self.metric.alphas
        origin = self.metric.encode(like.new_zeros(self.batch_size, self.metric.dim))
        self.register_buffer("code", origin, persistent=False)  # (B, L)
        self.register_buffer("variance", like.new_zeros(self.batch_size), persistent=False)  # (B,)

    @property
    def metric(self) -> FourierMetric:
        return self.integrator.metric

    @property
    def sigma(self) -> torch.Tensor:
        """Position std per axis, world units.  # (B,)"""
        return self.variance.sqrt()

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}, step_variance={self.step_variance}"

    def reset(self, rows=None, start_code: torch.Tensor | None = None, position: torch.Tensor | None = None,
              variance=0.0) -> None:
        """Restart the chosen agents; the others keep their codes and variances untouched.

        Args:
            rows: ``None`` (all ``B``), a bool mask ``(B,)`` or distinct row indices ``(N,)``.
            start_code: ``(N, L)`` or ``(L,)`` (broadcast) codes to start from, or
            position: ``(N, dim)`` or ``(dim,)`` positions to start from (encoded); neither: the
                origin, both: ValueError.
            variance: ``>= 0`` per axis, a number or ``(N,)``.
        """
        like = self.metric.alphas
        index = _row_index(rows, self.batch_size, like.device)
        N, L, dim = len(index), self.metric.location_dim, self.metric.dim
        if start_code is not None and position is not None:
            raise ValueError("start_code: expected start_code or position (or neither: the origin), got both")
        if start_code is not None:
            code = self._broadcast(start_code, "start_code", N, L, f"({N}, {L}) or ({L},) (N={N} rows, "
                                                                  f"location_dim={L})")
        else:
            if position is None:
                position = like.new_zeros(N, dim)
            position = self._broadcast(position, "position", N, dim, f"({N}, {dim}) or ({dim},) (N={N} rows)")
            code = self.metric.encode(position)
        if isinstance(variance, torch.Tensor):
            variance = self._broadcast(variance, "variance", N, None, f"({N},) or () (N={N} rows)")
            if bool((variance < 0).any()):
                raise ValueError(f"variance: expected >= 0, got {float(variance.min()):.6g}")
        else:
            variance = like.new_full((N,), checks.real(variance, "variance", low=0.0))
        self.code = self.code.index_put((index,), code)
        self.variance = self.variance.index_put((index,), variance)

    def _broadcast(self, tensor, name: str, N: int, size: int | None, described: str) -> torch.Tensor:
        """``tensor`` ``(N, size)`` or ``(size,)`` (``(N,)`` or ``()`` when ``size`` is None), checked,
        cast and expanded to ``(N, size)`` / ``(N,)``."""
        checks.float_tensor(tensor, name)
        full, single = ((N,), ()) if size is None else ((N, size), (size,))
        shape = tuple(tensor.shape)
        if shape not in (full, single):
            raise ValueError(f"{name}: expected shape {described}, got {shape}")
        return _as_input(tensor, name, shape, described, self.metric.alphas).expand(full)

    def step(self, motion: torch.Tensor) -> torch.Tensor:
        """Path-integrate every agent's ``motion`` ``(B, dim)`` and add ``step_variance``; returns the
        new codes ``(B, L)``."""
        B, dim = self.batch_size, self.metric.dim
        motion = _as_input(motion, "motion", (B, dim), f"({B}, {dim}) (batch_size={B}, dim={dim})",
                           self.metric.alphas)
        self.code = self.integrator(self.code, motion)
        self.variance = self.variance + self.step_variance
        return self.code

    def position(self) -> torch.Tensor:
        """Decoded positions of the codes.  # (B, dim)"""
        return self.metric.decode(self.code)[1]

    def detach(self) -> "Belief":
        """Cut the autograd graph behind ``code`` and ``variance`` (values unchanged); returns self."""
        self.code = self.code.detach()
        self.variance = self.variance.detach()
        return self
