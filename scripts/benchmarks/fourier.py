"""FourierMetric throughput: cross_distance vs the seed notebook's formulation, encode, apply_displacement.

cross_distance: T queries against S codes (location_dim 120, dim 2, scale 10) placed within
0.45 * scale of a point 280 world units from the origin, so every separation is below scale and
the true distance is the Euclidean distance of the (float32) positions. The seed's formulation
(angles by atan2 of sin/cos products with its 1e-6, K^+ per module, then a per-pair
torch.linalg.solve against each module's lattice basis to snap it to the coarsest reading) runs on
the first ``seed_queries`` queries of the same data (pairs/s is per pair; the full 1M pairs would
take minutes). Errors are max |distance - true| over the pairs each method computed; ours is also
reported on the seed's subset.
"""
from __future__ import annotations

import math
import statistics

import torch
from benchmarks.timing import median_seconds

from treeworld.agents import FourierMetric

LOCATION_DIM, DIM, SCALE = 120, 2, 10.0
CENTER = (250.0, -125.0)


def _seed_cross_distance(metric: FourierMetric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The seed's pseudo-distance for all pairs: per-pair lattice solves.  # (T, L), (S, L) -> (T, S)"""
    J, n, d = metric.num_modules, metric.dim + 1, metric.dim
    alphas, pinv = metric.alphas, metric.directions_pinv  # (J,), (d, d+1)
    generators = torch.cat([torch.eye(d), -torch.ones(1, d)]).to(alphas)  # (d+1, d): e_i - e_last
    lattice = (2 * math.pi / alphas)[:, None, None] * (pinv @ generators)  # (J, d, d)
    pa = a.unflatten(-1, (J, n, 2))[:, None]  # (T, 1, J, d+1, 2)
    pb = b.unflatten(-1, (J, n, 2))[None]  # (1, S, J, d+1, 2)
    sine = pb[..., 1] * pa[..., 0] - pb[..., 0] * pa[..., 1]
    cosine = pb[..., 0] * pa[..., 0] + pb[..., 1] * pa[..., 1]
    dtheta = torch.atan2(sine, cosine + 1e-6)  # (T, S, J, d+1)
    base = (dtheta @ pinv.T) / alphas[:, None]  # (T, S, J, d)
    offsets = torch.linalg.solve(lattice, (base[..., :1, :] - base)[..., None]).round()  # per pair
    deltas = base + (lattice @ offsets).squeeze(-1)
    mean = deltas.mean(-2)
    variance = (deltas - mean[..., None, :]).square().sum(-1).mean(-1) * J / (J - 1)
    return (mean.square().sum(-1) + variance + 1e-12).sqrt()


def _positions(count: int, generator: torch.Generator) -> torch.Tensor:
    angle = 2 * math.pi * torch.rand(count, generator=generator)
    radius = 0.45 * SCALE * torch.rand(count, generator=generator).sqrt()
    return torch.tensor(CENTER) + radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)


def _interleaved(ours, seed, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of each, timed alternately so a busy machine slows both alike."""
    ours(), seed()  # warm-up
    times = [(median_seconds(ours, 1, warmup=0, device=device), median_seconds(seed, 1, warmup=0, device=device))
             for _ in range(repeats)]
    return statistics.median(t for t, _ in times), statistics.median(t for _, t in times)


def _measure(device: str, repeats: int, quick: bool) -> dict:
    queries, codes, seed_queries, batch = (8, 256, 4, 1024) if quick else (256, 4096, 16, 65536)
    generator = torch.Generator().manual_seed(0)
    metric = FourierMetric(LOCATION_DIM, dim=DIM, scale=SCALE).to(device)
    xa, xb = _positions(queries, generator), _positions(codes, generator)
    truth = torch.cdist(xa.double(), xb.double())  # (T, S)
    a, b = metric.encode(xa.to(device)), metric.encode(xb.to(device))
    ours = metric.cross_distance(a, b).cpu().double()
    seed = _seed_cross_distance(metric, a[:seed_queries], b).cpu().double()
    ours_s, seed_s = _interleaved(lambda: metric.cross_distance(a, b),
                                  lambda: _seed_cross_distance(metric, a[:seed_queries], b), repeats, device)
    ours_rate, seed_rate = queries * codes / ours_s, seed_queries * codes / seed_s

    positions = (torch.randn(batch, DIM, generator=generator) * 200).to(device)
    steps = torch.randn(batch, DIM, generator=generator).to(device)
    code = metric.encode(positions)
    encode_s = median_seconds(lambda: metric.encode(positions), repeats, device=device)
    apply_s = median_seconds(lambda: metric.apply_displacement(code, steps), repeats, device=device)
    return {
        "cross_distance": {
            "queries": queries, "codes": codes, "location_dim": LOCATION_DIM, "seed_queries": seed_queries,
            "ours_pairs_per_s": ours_rate, "seed_pairs_per_s": seed_rate, "ratio": ours_rate / seed_rate,
            "ours_max_error": (ours - truth).abs().max().item(),
            "ours_max_error_on_seed_pairs": (ours[:seed_queries] - truth[:seed_queries]).abs().max().item(),
            "seed_max_error": (seed - truth[:seed_queries]).abs().max().item(),
        },
        "encode_positions_per_s": batch / encode_s,
        "apply_displacement_codes_per_s": batch / apply_s,
        "batch": batch,
    }


def run(repeats: int, device: str, quick: bool) -> dict:
    """CPU figures always (one thread, set by the driver); ``device``'s as well when it is not the CPU."""
    report = {"cpu": _measure("cpu", repeats, quick)}
    if device != "cpu":
        report[device] = _measure(device, repeats, quick)
    return report
