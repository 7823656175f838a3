"""The shared shell of the samplers around a reference point (Fourier codes, percepts)."""
from __future__ import annotations

import torch
import torch.distributions as D


class ReferenceDistribution(D.Distribution):
    """Events ``(size,)`` around ``reference`` ``(..., size)`` at a positive ``scale``.

    Batch shape: ``reference.shape[:-1]`` broadcast with ``scale``. Subclasses define ``rsample``
    (taking a ``generator``) and ``log_prob``; ``sample`` is ``rsample`` without gradients.
    """

    arg_constraints = {"reference": D.constraints.real_vector, "scale": D.constraints.positive}
    support = D.constraints.real_vector
    has_rsample = True

    def __init__(self, reference: torch.Tensor, scale, size: int, validate_args: bool | None = None) -> None:
        self.reference = reference
        self.scale = torch.as_tensor(scale, dtype=reference.dtype, device=reference.device)
        batch_shape = torch.broadcast_shapes(reference.shape[:-1], self.scale.shape)
        super().__init__(batch_shape, torch.Size((size,)), validate_args=validate_args)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)
