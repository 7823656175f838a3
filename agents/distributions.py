"""The shared shell of the samplers around a reference point (Fourier codes, percepts)."""
from __future__ import annotations

import torch
import torch.distributions as D


class ReferenceDistribution(D.Distribution):
    """Events ``(size,)`` around ``reference`` ``(..., size)`` at a positive ``scale``.

    Batch shape: ``reference.shape[:-1]`` broadcast with ``scale``. Subclasses define ``rsample``
    and ``log_prob``; ``sample`` is ``rsample`` without gradients. Both take ``generator``: a CPU
    ``torch.Generator`` (``None``: fresh entropy, never torch's global RNG; see ``treeworld.checks.generator``);
    the draws happen on the CPU and then move to the reference's device.
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
