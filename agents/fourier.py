"""Grid-cell Fourier location codes: encode, decode, path-integrate and compare positions.

What a code is. A position ``x`` in ``R^dim`` is seen by ``J`` modules, each through the
``dim + 1`` unit vectors ``k_i`` of a regular simplex (rows of ``directions``, summing to zero).
Module ``j`` has frequency ``alpha_j = (pi / scale) * ratio**j`` (coarsest first; wavelength
``lambda_j = 2 pi / alpha_j``, so ``lambda_0 = 2 * scale``) and phase
``theta_ji = alpha_j <k_i, x> + phi_ji``. The code stores ``(cos theta_ji, sin theta_ji)``:
``(..., J, dim+1, 2)`` flattened to ``(..., location_dim)``, ``location_dim = 2 J (dim+1)``.
A displacement ``d`` rotates every pair by ``alpha_j <k_i, d>`` (path integration).

Why decoding needs lattice resolution. Each phase is known only modulo ``2 pi``: module ``j``
alone pins ``x`` down to a lattice of period ``lambda_j``. The coarsest module is unambiguous for
``|x| < scale`` (every ``|alpha_0 <k_i, x>| < pi``) but imprecise; fine modules are precise but
ambiguous. Decoding therefore runs coarse to fine: module ``j`` is read as the wrapped residual
between its phases and the phases predicted by the running estimate, so its integer ambiguity is
resolved by the coarser modules and each module refines the estimate. Each of the ``dim + 1``
residuals wraps on its own; their mean across directions is not a displacement (the ``k_i`` sum to
zero) and is projected out, which is what the pseudo-inverse ``K^+`` of the simplex does. The seed
wrapped the phases independently, projected, and then snapped every module to its lattice around
the coarsest reading with a per-pair ``linalg.solve``: independent wraps leave integer offsets
that do not sum to zero, ``K^+`` turns them into shifts of ``K^+ n / alpha_j`` that are not lattice
vectors of the module (its basis only spans sum-zero integer vectors), so rounding against that
basis cannot remove them; its ``atan2`` also carried a ``1e-6`` bias (``1e-6 / alpha_0`` world
units on the coarsest module). Here no per-pair solve exists at all.

Precision. ``alpha_j <k_i, x>`` is huge for fine modules far from the origin (``~1e5`` rad at
``|x| = 500``, scale 10), where float32 keeps only ~0.01 rad. Phases are therefore formed and
wrapped in float64 (in cycles, ``c - round(c)``) before the trigonometry in the working dtype.

What the pseudo-distance measures. Between codes ``a`` and ``b``, every module gives a reading
``d_j`` of the displacement (``(..., J, dim)``); ``pseudo_distance`` is
``|mean_j d_j|^2 + sum_j |d_j - mean|^2 / (J - 1)``: the squared length of the mean displacement
plus the across-module variance, which is zero for valid codes and grows when the modules
disagree about where the code is. For valid codes within ``scale`` of each other it is the
Euclidean distance of their positions.

Arguments and dtypes. Tensors must be finite (ValueError naming the argument). Floating inputs of
any dtype are cast to the dtype of the metric's buffers (the default dtype at construction;
``.double()`` for float64 work), and results come back in it: the rule of every agents module.
``scale`` and ``ratio`` must give frequencies that are normal numbers of that dtype.

Saving. ``state_dict`` holds the buffers and ``scale`` / ``ratio`` (extra state, exact);
``load_state_dict`` takes both from the loaded state (checked against its ``alphas``, or read from
``alphas`` when the state lacks them), so a metric restored from another one's state is that metric.
A buffer of another shape (another ``location_dim`` or ``dim``) is a ValueError naming the key.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from treeworld import checks
from treeworld.agents.distributions import ReferenceDistribution

DIMS = (1, 2, 3)
_TWO_PI = 2.0 * math.pi
_CHUNK_PAIRS = 1 << 16  # (rows, S) pairs per cross_distance block: keeps the chain in cache


def _safe_sqrt(squared: torch.Tensor) -> torch.Tensor:
    """sqrt that is exactly 0 at 0 with a zero (not NaN) gradient there."""
    positive = squared > 0
    root = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()
    return torch.where(positive, root, torch.zeros_like(root))


def simplex_directions(dim: int) -> torch.Tensor:
    """Unit vectors to the vertices of a regular simplex centred at 0, in float64.  # (dim+1, dim)

    Rows of the (Helmert) orthonormal basis of the sum-zero subspace of ``R^(dim+1)``, rescaled to
    unit length, so ``K^T K = (dim+1)/dim I`` and ``K K^+`` removes the mean over directions.
    """
    n = dim + 1
    basis = torch.zeros(n, dim, dtype=torch.float64)  # (dim+1, dim)
    for col in range(dim):
        k = col + 1
        basis[:k, col] = 1.0 / math.sqrt(k * (k + 1))
        basis[k, col] = -k / math.sqrt(k * (k + 1))
    return basis * math.sqrt(n / dim)


class FourierMetric(nn.Module):
    """Grid-cell location codes of ``J`` modules x ``dim + 1`` directions x (cos, sin).

    Args:
        location_dim: code length, a positive multiple of ``2 * (dim + 1)``; ``J = location_dim /
            (2 (dim + 1))`` modules.
        dim: physical dimension, 1, 2 or 3.
        scale: world units; positions and displacements with ``|x| < scale`` decode unambiguously
            (the coarsest wavelength is ``2 * scale``).
        ratio: ``>= 1``, the frequency ratio between successive modules (coarsest first).
        phases: optional per-module phase offsets in radians, ``(J,)`` or ``(J, dim + 1)``.

    Buffers: ``directions`` ``(dim+1, dim)``, ``directions_pinv`` ``(dim, dim+1)``, ``alphas``
    ``(J,)``, ``phases`` ``(J, dim+1)``. Every method takes any leading batch shape and finite
    floating tensors, cast to the buffers' dtype (results come back in it), on the buffers' device.
    ``load_state_dict`` restores ``scale`` and ``ratio`` with the buffers (module docstring).
    """

    def __init__(self, location_dim: int, dim: int = 2, scale: float = 10.0,
                 ratio: float = math.sqrt(2.0), phases: torch.Tensor | None = None) -> None:
        super().__init__()
        dim = checks.integer(dim, "dim")
        if dim not in DIMS:
            raise ValueError(f"dim: expected one of {DIMS}, got {dim!r}")
        block = 2 * (dim + 1)
        location_dim = checks.integer(location_dim, "location_dim")
        if location_dim <= 0 or location_dim % block:
            raise ValueError(f"location_dim: expected a positive multiple of 2*(dim+1)={block} "
                             f"for dim={dim}, got {location_dim}")
        self.location_dim = location_dim
        self.dim = dim
        self.num_modules = location_dim // block
        self.scale = checks.positive(scale, "scale")
        self.ratio = checks.positive(ratio, "ratio", minimum=1.0, strict=False)
        dtype = torch.get_default_dtype()

        if phases is None:
            phases = torch.zeros(self.num_modules, dim + 1, dtype=torch.float64)
        else:
            phases = self._check_phases(phases)
        for name, value in self._constants(dtype, torch.device("cpu")).items():
            self.register_buffer(name, value)
        self.register_buffer("phases", phases.to(dtype))  # (J, dim+1)
        self._chain_cache: tuple = (None, (), ())  # (dtype, sources, versions, carries, steps): see _chain_matrices

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The buffers fixed by ``dim``, ``scale`` and ``ratio``, built in float64 and cast to
        ``dtype``: ``directions`` (dim+1, dim), ``directions_pinv`` (dim, dim+1), ``alphas`` (J,)."""
        directions = simplex_directions(self.dim)
        built = {"directions": directions, "directions_pinv": torch.linalg.pinv(directions),
                 "alphas": self._frequencies(self.scale, self.ratio, dtype)}
        return {name: value.to(device=device, dtype=dtype) for name, value in built.items()}

    def _frequencies(self, scale: float, ratio: float, dtype: torch.dtype) -> torch.Tensor:
        """``alphas`` in float64, checked to be normal numbers of ``dtype`` (ValueError naming
        ``scale`` or ``ratio``).  # (J,)"""
        J = self.num_modules
        alphas = (math.pi / scale) * ratio ** torch.arange(J, dtype=torch.float64)
        info = torch.finfo(dtype)
        coarsest, finest = alphas[0].item(), alphas[-1].item()
        if not (math.isfinite(finest) and finest <= info.max):
            name = "scale" if coarsest > info.max else "ratio"
            raise ValueError(f"{name}: expected frequencies (pi / scale) * ratio**j, j < J={J} modules, <= "
                             f"{info.max:.6g} ({dtype}, the buffers' dtype), got up to {finest:.6g} for "
                             f"scale={scale}, ratio={ratio}")
        if coarsest < info.tiny:
            raise ValueError(f"scale: expected frequencies (pi / scale) * ratio**j >= {info.tiny:.6g} (normal "
                             f"numbers of {dtype}, the buffers' dtype), got {coarsest:.6g} for scale={scale}")
        return alphas

    def _check_phases(self, phases) -> torch.Tensor:
        if not isinstance(phases, torch.Tensor):
            raise TypeError(f"phases: expected a torch.Tensor or None, got {type(phases).__name__}")
        J, n = self.num_modules, self.dim + 1
        if tuple(phases.shape) not in ((J,), (J, n)):
            raise ValueError(f"phases: expected shape ({J},) or ({J}, {n}), got {tuple(phases.shape)}")
        phases = checks.finite_tensor(phases.detach().to(torch.float64), "phases")
        return phases[:, None].expand(J, n).clone() if phases.ndim == 1 else phases.clone()

    def _input(self, tensor, name: str, size: int, what: str, rows: bool = False) -> torch.Tensor:
        """A finite floating tensor of last dimension ``size`` (``(..., N, size)`` if ``rows``),
        cast to the buffers' dtype."""
        if rows:
            checks.matrix(tensor, size, name, what, rows="N")
        else:
            checks.last_dim(tensor, size, name, what)
        return checks.finite_tensor(tensor.to(self.alphas.dtype), name)  # after the cast: no overflow to inf

    def _apply(self, fn, recurse: bool = True):
        """``.to``/``.double()``/...: the frequencies and directions are rebuilt in the new dtype
        from ``scale`` and ``ratio`` (not the old dtype's rounded values widened), so a converted
        metric equals one built in that dtype and loads its own state."""
        super()._apply(fn, recurse)
        for name, value in self._constants(self.alphas.dtype, self.alphas.device).items():
            setattr(self, name, value)
        self._chain_cache = (None, (), ())
        return self

    # -- saving -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        """``scale`` and ``ratio`` as given: ``alphas`` holds them only to its dtype's precision."""
        return {"scale": self.scale, "ratio": self.ratio}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Check the buffers' shapes first (ValueError naming the key), then load them and take
        ``scale`` and ``ratio`` from the state: see the module docstring."""
        for name, buffer in self._buffers.items():
            theirs = state_dict.get(prefix + name)
            if theirs is None:
                continue  # a missing key: Module's rules (strict) apply
            if not isinstance(theirs, torch.Tensor) or theirs.shape != buffer.shape:
                got = f"shape {tuple(theirs.shape)}" if isinstance(theirs, torch.Tensor) else type(theirs).__name__
                raise ValueError(f"state_dict: '{prefix + name}' must have shape {tuple(buffer.shape)} "
                                 f"(location_dim={self.location_dim}, dim={self.dim}), got {got}")
            checks.finite_tensor(theirs, f"state_dict: '{prefix + name}'")
        extra_key = prefix + "_extra_state"
        alphas = state_dict.get(prefix + "alphas")
        attributes = None if alphas is None else self._scale_and_ratio(alphas, state_dict.get(extra_key), prefix)
        # The extra state is read here, not by Module: a state without it (buffers alone) still loads.
        state_dict = {key: value for key, value in state_dict.items() if key != extra_key}
        errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if attributes is not None and len(error_msgs) == errors:
            self.scale, self.ratio = attributes

    def _scale_and_ratio(self, alphas: torch.Tensor, extra, prefix: str) -> tuple[float, float]:
        """``scale`` and ``ratio`` of a state's ``alphas``: its extra state's (which must give these
        frequencies), else this metric's if they give them, else read from them (to the buffer's
        precision; with one module the ratio cannot be read and stays)."""
        J = self.num_modules
        stored = alphas.detach().to("cpu", torch.float64)
        tolerance = 4 * torch.finfo(alphas.dtype).eps

        def gives(scale: float, ratio: float) -> bool:
            expected = ((math.pi / scale) * ratio ** torch.arange(J, dtype=torch.float64)).to(alphas.dtype)
            return torch.allclose(expected.double(), stored, rtol=tolerance, atol=0.0)

        def mismatch(source: str) -> ValueError:
            return ValueError(f"state_dict: '{prefix}alphas' expected the frequencies (pi / scale) * ratio**j "
                              f"{source}, got {stored[:3].tolist()}...")

        if isinstance(extra, dict) and "scale" in extra and "ratio" in extra:
            scale = checks.positive(extra["scale"], f"state_dict: '{prefix}_extra_state' scale")
            ratio = checks.positive(extra["ratio"], f"state_dict: '{prefix}_extra_state' ratio", minimum=1.0,
                                    strict=False)
            if not gives(scale, ratio):
                raise mismatch(f"of scale={scale}, ratio={ratio} (its '{prefix}_extra_state')")
            return scale, ratio
        if gives(self.scale, self.ratio):
            return self.scale, self.ratio
        scale = math.pi / stored[0].item()
        ratio = (stored[-1] / stored[0]).item() ** (1.0 / (J - 1)) if J > 1 else self.ratio
        if not (stored[0] > 0 and ratio >= 1.0 and gives(scale, ratio)):
            raise mismatch("with pi / scale > 0 and ratio >= 1 (a geometric sequence)")
        return scale, ratio

    def extra_repr(self) -> str:
        return (f"location_dim={self.location_dim}, dim={self.dim}, modules={self.num_modules}, "
                f"scale={self.scale}, ratio={self.ratio}")

    # -- phases -------------------------------------------------------------------------------
    def _cycles(self, x: torch.Tensor) -> torch.Tensor:
        """Phase advance ``alpha_j <k_i, x> / 2 pi`` in float64 cycles, unwrapped.  # (..., J, dim+1)"""
        along = x.to(torch.float64) @ self.directions.to(torch.float64).T  # (..., dim+1)
        per_cycle = self.alphas.to(torch.float64) / _TWO_PI  # (J,)
        return along[..., None, :] * per_cycle[:, None]

    @staticmethod
    def _trig(cycles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of float64 cycles, wrapped first so the working dtype keeps full precision."""
        work = torch.promote_types(dtype, torch.float32)
        theta = (_TWO_PI * (cycles - cycles.round())).to(work)
        return theta.cos().to(dtype), theta.sin().to(dtype)

    def _angles(self, code: torch.Tensor) -> torch.Tensor:
        """Phase of every (cos, sin) pair, in cycles in [-1/2, 1/2].  # (..., J, dim+1)

        atan2 gets contiguous copies of the cosines and sines: on the stride-2 views of the pairs
        it falls back to a scalar loop about 8x slower (equal to within one float ulp).
        """
        work = torch.promote_types(code.dtype, torch.float32)
        cos, sin = code.to(work).unflatten(-1, (self.num_modules, self.dim + 1, 2)).unbind(-1)
        return torch.atan2(sin.contiguous(), cos.contiguous()) / _TWO_PI

    # -- the coarse-to-fine chain ------------------------------------------------------------
    @staticmethod
    def _chain_layout(*cycles: torch.Tensor) -> list[torch.Tensor]:
        """(..., J, dim+1) -> (J, dim+1, ...), batch dims right-aligned across the inputs."""
        ndim = max(c.ndim for c in cycles)
        return [c.reshape((1,) * (ndim - c.ndim) + c.shape).movedim((-2, -1), (0, 1)).contiguous()
                for c in cycles]

    def _readings(self, u_from: torch.Tensor, u_to: torch.Tensor) -> torch.Tensor:
        """Every module's reading ``d_j`` of the displacement ``from -> to``.  # (J, dim, *B)

        ``u_from``, ``u_to``: phases in cycles, ``(J, dim+1, ...)``, broadcastable to batch ``B``;
        readings in world units. The chain's step ``d_j = d_{j-1} + lambda_j K^+ (w_j - K d_{j-1} /
        lambda_j)`` (``w_j`` the wrapped residual of module ``j``'s phase difference ``v_j``
        against the running estimate's prediction) telescopes, since ``K^+ K = I``, to
        ``d_j = lambda_j K^+ (v_j - n_j)``: each module read alone once its integer turns ``n_j``
        are known. The turns are what runs coarse to fine (without autograd: they are integers),
        ``n_j = round(v_j - (lambda_{j-1} / lambda_j) K K^+ (v_{j-1} - n_{j-1}))``, each direction
        rounded on its own; ``K K^+`` drops the mean over directions, which is no displacement. The
        readings then come in one batched product, differentiable in the phases.
        """
        phase = u_to - u_from  # (J, dim+1, *B) cycles
        batch = phase.shape[2:]
        phase = phase.reshape(self.num_modules, self.dim + 1, -1)  # (J, dim+1, N)
        carries, steps = self._chain_matrices(u_to.dtype)
        with torch.no_grad():
            modules = phase.unbind(0)
            previous = modules[0].round()
            turns = [previous]
            for before, now, carry in zip(modules, modules[1:], carries.unbind(0)):
                previous = torch.addmm(now, carry, before - previous, alpha=-1.0).round_()
                turns.append(previous)
            turns = torch.stack(turns)  # (J, dim+1, N)
        return torch.bmm(steps, phase - turns).reshape(self.num_modules, self.dim, *batch)

    def _chain_matrices(self, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain's fixed matrices in dtype ``work``: the carries ``(lambda_{j-1} / lambda_j) K K^+``
        (J-1, dim+1, dim+1) and the readings ``lambda_j K^+`` (J, dim, dim+1), with ``K^+`` the float64
        pseudo-inverse of the directions as stored (the telescoping needs ``K^+ K = I`` to float64).
        Kept until the directions or frequencies change (a load, a dtype or device move: another
        tensor or an in-place edit); built outside inference mode, so a cache first filled there
        still serves autograd."""
        sources = (self.directions, self.alphas)
        versions = tuple(source._version for source in sources)
        cached = self._chain_cache
        if not (cached[0] == work and all(a is b for a, b in zip(cached[1], sources)) and cached[2] == versions):
            with torch.inference_mode(False):
                lengths = _TWO_PI / self.alphas.to(torch.float64)  # (J,)
                directions = self.directions.to(torch.float64)
                pinv = torch.linalg.pinv(directions)
                carries = ((lengths[:-1] / lengths[1:])[:, None, None] * (directions @ pinv)).to(work)
                self._chain_cache = (work, sources, versions, carries, (lengths[:, None, None] * pinv).to(work))
        return self._chain_cache[3], self._chain_cache[4]

    def _per_module(self, u_from: torch.Tensor, u_to: torch.Tensor, dtype: torch.dtype):
        per_module = self._readings(u_from, u_to).movedim((0, 1), (-2, -1))  # (..., J, dim)
        return per_module.to(dtype), per_module.mean(-2).to(dtype)

    def _moments(self, u_from: torch.Tensor, u_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared mean displacement and across-module variance, world units^2.  # (...), (...)

        The variance is taken around the mean (two passes), so nearly equal readings do not
        cancel catastrophically.
        """
        readings = self._readings(u_from, u_to)  # (J, dim, *B)
        batch = readings.shape[2:]
        readings = readings.reshape(self.num_modules, self.dim, -1)  # (J, dim, N)
        mean = readings.mean(0)  # (dim, N)
        spread = (readings - mean).square().sum((0, 1)) / max(self.num_modules - 1, 1)
        return mean.square().sum(0).reshape(batch), spread.reshape(batch)

    # -- public API ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code of positions ``x`` ``(..., dim)`` -> ``(..., location_dim)``."""
        x = self._input(x, "x", self.dim, "dim")
        cycles = self._cycles(x) + self.phases.to(torch.float64) / _TWO_PI  # (..., J, dim+1)
        cos, sin = self._trig(cycles, x.dtype)
        return torch.stack((cos, sin), dim=-1).flatten(-3)

    def decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions a code stands for: ``(per_module (..., J, dim), mean (..., dim))``.

        Unambiguous for positions with ``|x| < scale``; per-module readings agree for valid codes.
        """
        code = self._input(code, "code", self.location_dim, "location_dim")
        u = self._angles(code)  # (..., J, dim+1)
        origin, u = self._chain_layout(self.phases.to(u.dtype) / _TWO_PI, u)
        return self._per_module(origin, u, code.dtype)

    def displacement(self, code_from: torch.Tensor, code_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Displacement between codes: ``(per_module (..., J, dim), mean (..., dim))``.

        Exact for valid codes whose positions differ by less than ``scale``, wherever they are.
        """
        code_from = self._input(code_from, "code_from", self.location_dim, "location_dim")
        code_to = self._input(code_to, "code_to", self.location_dim, "location_dim")
        u_from, u_to = self._chain_layout(self._angles(code_from), self._angles(code_to))
        return self._per_module(u_from, u_to, code_to.dtype)

    def apply_displacement(self, code: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Path integration: rotate each (cos, sin) pair by ``alpha_j <k_i, delta>``.

        ``code`` ``(..., location_dim)``, ``delta`` ``(..., dim)`` (broadcast) -> ``(..., location_dim)``.
        """
        code = self._input(code, "code", self.location_dim, "location_dim")
        delta = self._input(delta, "delta", self.dim, "dim")
        return self._rotate(code, delta)

    def _rotate(self, code: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``apply_displacement`` without the checks, in the dtype of ``code``."""
        cos, sin = self._trig(self._cycles(delta), code.dtype)  # (..., J, dim+1)
        pairs = code.unflatten(-1, (self.num_modules, self.dim + 1, 2))
        c, s = pairs[..., 0], pairs[..., 1]
        return torch.stack((c * cos - s * sin, s * cos + c * sin), dim=-1).flatten(-3)

    def pseudo_distance(self, a: torch.Tensor, b: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """``|mean displacement|^2 + across-module variance`` (its root unless ``squared``).  # (...)"""
        a = self._input(a, "a", self.location_dim, "location_dim")
        b = self._input(b, "b", self.location_dim, "location_dim")
        mean_sq, spread = self._moments(*self._chain_layout(self._angles(a), self._angles(b)))
        result = mean_sq + spread
        result = result if squared else _safe_sqrt(result)
        return result.to(a.dtype)

    def cross_distance(self, a: torch.Tensor, b: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """Pseudo-distances of every pair: ``a`` ``(..., T, L)``, ``b`` ``(..., S, L)`` -> ``(..., T, S)``."""
        a = self._input(a, "a", self.location_dim, "location_dim", rows=True)
        b = self._input(b, "b", self.location_dim, "location_dim", rows=True)
        # (J, dim+1, ..., T, 1) and (J, dim+1, ..., 1, S)
        ua, ub = self._chain_layout(self._angles(a).unsqueeze(-3), self._angles(b).unsqueeze(-4))
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
        rows = max(1, _CHUNK_PAIRS // max(1, b.shape[-2] * batch))
        blocks = []
        for start in range(0, max(a.shape[-2], 1), rows):  # one (empty) block when T = 0
            mean_sq, spread = self._moments(ua[..., start:start + rows, :], ub)
            blocks.append(mean_sq + spread)
        result = torch.cat(blocks, dim=-2)
        result = result if squared else _safe_sqrt(result)
        return result.to(a.dtype)

    def sample(self, shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Random valid codes ``(*shape, location_dim)``: positions uniform in the ball of radius
        ``scale`` (where decoding is unambiguous), in the buffers' dtype and device.

        ``generator``: a CPU ``torch.Generator`` (``None``: fresh entropy); the positions are drawn
        on the CPU and then moved to the buffers' device.
        """
        shape = torch.Size((shape,) if isinstance(shape, numbers.Integral) else shape)
        like = dict(dtype=self.alphas.dtype, generator=checks.generator(generator))
        direction = torch.randn(shape + (self.dim,), **like)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        radius = self.scale * torch.rand(shape + (1,), **like) ** (1.0 / self.dim)
        return self.encode((radius * direction).to(self.alphas.device))

    def displacement_variance(self, delta_thetas: torch.Tensor) -> torch.Tensor:
        """Across-module variance of the displacement implied by per-module phase steps.

        ``delta_thetas`` ``(..., J * (dim+1))`` in radians (e.g. a learned path-integration step);
        module ``j``'s reading is resolved coarse to fine as in ``displacement``. Returns
        ``sum_j |d_j - mean|^2 / (J - 1)`` ``(...)``: zero when all modules agree on one physical
        displacement. The seed's scalar loss is ``.mean() / dim`` of this.
        """
        steps = self.num_modules * (self.dim + 1)
        delta_thetas = self._input(delta_thetas, "delta_thetas", steps, "J*(dim+1)")
        work = torch.promote_types(delta_thetas.dtype, torch.float32)
        u = (delta_thetas.to(work) / _TWO_PI).unflatten(-1, (self.num_modules, self.dim + 1))
        _, spread = self._moments(*self._chain_layout(u.new_zeros(u.shape[-2:]), u))
        return spread.to(delta_thetas.dtype)


class FourierCodeDistribution(ReferenceDistribution):
    """Codes a Gaussian step away from a reference: ``apply_displacement(reference, scale * u)``.

    ``u ~ N(0, I_dim)``, so the displacement has covariance ``scale^2 I`` and mean squared length
    ``dim * scale^2``. The samples live on the ``dim``-dimensional manifold of codes; ``log_prob``
    is the density there (change of variables with the Gram determinant):
    ``log N(delta; 0, scale^2 I) - 1/2 logdet(J^T J)`` with ``J = d code / d delta``
    ``(location_dim, dim)``. ``J^T J = K^T diag(w) K``, ``w_i = sum_j alpha_j^2 rho_ji^2`` (``rho``
    the reference's pair norms, 1 for valid codes), independent of ``delta``. The seed's version
    mixed cross terms between directions into this Gram matrix and does not match autograd.

    The limit. ``log_prob`` reads ``delta`` back as ``metric.displacement`` does, which places a
    step only while every ``|<k_i, delta>| < metric.scale``; a longer step wraps around to a nearby
    one (at ``scale = metric.scale / 2`` in 2-D, 11% of the samples did; a code 131 world units
    away at scale 1 got -18.4 where its density is about -8600). So ``scale`` must be
    ``<= metric.scale / WRAP_MARGIN`` (6): a sample then wraps with probability
    ``< 2 (dim + 1) Phi(-6) <= 8e-9``. ``log_prob`` is ``-inf`` where ``value`` is not the
    reference moved by a step it can place:

    - pair lengths other than the reference's (1 for valid codes: off the code manifold), or phases
      of no single step (each pair must be within ``sqrt(eps)`` of the reference's pair rotated by
      the step read back, relative to its length; ``eps`` of the metric's dtype, the check in
      float64);
    - a step beyond the decodable range: read back wrapped, its modules disagree (for an irrational
      ``ratio`` such as the default ``sqrt(2)``). With a commensurate ratio (e.g. an integer) or a
      single module the code map is periodic: such a code is also the code of a nearby step, and
      ``log_prob`` is the density of that nearest preimage alone.

    Args:
        metric: the ``FourierMetric``.
        reference: ``(..., location_dim)`` finite codes, cast to the metric's dtype.
        scale: ``> 0`` and ``<= metric.scale / WRAP_MARGIN``, world units, a number or a tensor
            broadcastable to the batch shape (ValueError naming ``scale`` otherwise).
    """

    WRAP_MARGIN = 6.0

    def __init__(self, metric: FourierMetric, reference: torch.Tensor, scale,
                 validate_args: bool | None = None) -> None:
        checks.instance(metric, FourierMetric, "metric")
        checks.last_dim(reference, metric.location_dim, "reference", "location_dim")
        self.metric = metric
        super().__init__(reference.to(metric.alphas.dtype), scale, metric.location_dim, validate_args)
        reference = self.reference
        bound = metric.scale / self.WRAP_MARGIN
        largest = self.scale.detach().max().item() if self.scale.numel() else 0.0
        if largest > bound * (1.0 + torch.finfo(self.scale.dtype).eps):
            wraps = (metric.dim + 1) * math.erfc(self.WRAP_MARGIN / math.sqrt(2.0))
            raise ValueError(f"scale: expected <= metric.scale / {self.WRAP_MARGIN:g} = {bound:.6g} (longer "
                             f"steps wrap past metric.scale={metric.scale:g} and log_prob cannot place them; at "
                             f"the bound a sample wraps with probability < {wraps:.1g}), got {largest:.6g}")
        pairs = reference.unflatten(-1, (metric.num_modules, metric.dim + 1, 2))
        alphas = metric.alphas.to(reference.dtype)
        weights = (pairs.square().sum(-1) * alphas[:, None].square()).sum(-2)  # (..., dim+1)
        K = metric.directions.to(reference.dtype)
        gram = torch.einsum("...i,id,ie->...de", weights, K, K)  # (..., dim, dim)
        self._half_log_gram = 0.5 * torch.linalg.slogdet(gram).logabsdet  # (...)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized codes ``(*sample_shape, *batch_shape, location_dim)``.

        ``generator``: a CPU ``torch.Generator`` (``None``: fresh entropy); the Gaussian steps are
        drawn on the CPU and then moved to the reference's device.
        """
        shape = torch.Size(sample_shape) + self.batch_shape + (self.metric.dim,)
        u = torch.randn(shape, dtype=self.reference.dtype, generator=checks.generator(generator))
        u = u.to(self.reference.device)
        return self.metric._rotate(self.reference, self.scale[..., None] * u)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Density of codes on the code manifold, ``-inf`` where the step cannot be placed (class
        docstring).  # (..., location_dim) -> (...)"""
        metric = self.metric
        checks.last_dim(value, metric.location_dim, "value", "location_dim")
        value = checks.finite_tensor(value, "value").to(self.reference.dtype)
        if self._validate_args:
            self._validate_sample(value)
        _, delta = metric._per_module(*metric._chain_layout(metric._angles(self.reference), metric._angles(value)),
                                      value.dtype)  # (..., dim)
        z = delta / self.scale[..., None]
        dim = metric.dim
        log_prob = (-0.5 * z.square().sum(-1) - dim * (0.5 * math.log(_TWO_PI) + self.scale.log())
                    - self._half_log_gram)
        return log_prob.masked_fill(~self._placed(value), -math.inf)

    @torch.no_grad()
    def _placed(self, value: torch.Tensor) -> torch.Tensor:
        """Whether ``value`` is the reference rotated by the step read back from it (float64).  # (...)"""
        metric, shape = self.metric, (self.metric.num_modules, self.metric.dim + 1, 2)
        reference, value64 = self.reference.detach().double(), value.detach().double()
        per_module, _ = metric._per_module(*metric._chain_layout(metric._angles(reference), metric._angles(value64)),
                                           torch.float64)
        moved = metric._rotate(reference, per_module[..., -1, :]).unflatten(-1, shape)  # the finest reading
        pairs = value64.unflatten(-1, shape)
        length = torch.maximum(reference.unflatten(-1, shape).norm(dim=-1), pairs.norm(dim=-1))
        gap = (pairs - moved).norm(dim=-1)
        return (gap <= math.sqrt(torch.finfo(value.dtype).eps) * length).flatten(-2).all(-1)
