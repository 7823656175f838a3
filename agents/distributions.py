"""The shared shell of the samplers around a reference point (Fourier codes, percepts)."""
from __future__ import annotations

import torch
import torch.distributions as D

from treeworld import checks


def positive_scale(scale, name: str = "scale") -> torch.Tensor | float:
    """A ``scale`` argument: a number (``checks.positive``: finite, ``> 0``) or a floating-point
    tensor of finite values ``> 0``; returned as it is (numbers as ``float``)."""
    if not isinstance(scale, torch.Tensor):
        return checks.positive(scale, name)
    checks.finite_tensor(scale, name)
    if not bool((scale > 0).all()):
        raise ValueError(f"{name}: expected values > 0, got min {scale.min().item()}")
    return scale


class ReferenceDistribution(D.Distribution):
    """Events ``(size,)`` around ``reference`` ``(..., size)`` at a positive ``scale``.

    Batch shape: ``reference.shape[:-1]`` broadcast with ``scale``. Subclasses define ``rsample``
    and ``log_prob``; ``sample`` is ``rsample`` without gradients. Both take ``generator``: a CPU
    ``torch.Generator`` (``None``: fresh entropy, never torch's global RNG; see ``treeworld.checks.generator``);
    the draws happen on the CPU and then move to the reference's device.

    ``reference`` must be finite and ``scale`` finite and ``> 0`` (a number or a floating-point
    tensor), else ValueError naming the argument. Subclasses pass the reference already cast to
    their module's dtype; ``scale`` is cast to the reference's dtype.
    """

    arg_constraints = {"reference": D.constraints.real_vector, "scale": D.constraints.positive}
    support = D.constraints.real_vector
    has_rsample = True

    def __init__(self, reference: torch.Tensor, scale, size: int, validate_args: bool | None = None) -> None:
        self.reference = checks.finite_tensor(reference, "reference")
        self.scale = torch.as_tensor(positive_scale(scale), dtype=reference.dtype, device=reference.device)
        batch_shape = torch.broadcast_shapes(reference.shape[:-1], self.scale.shape)
        super().__init__(batch_shape, torch.Size((size,)), validate_args=validate_args)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)
