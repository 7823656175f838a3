"""Topography vs MiniSom: fit a map on a fixed synthetic mixture, compare quality and wall time.

Equal work: both start from the same initial weights (random data rows), see every input once per
epoch in a shuffled order for the same number of epochs, and follow the same geometric sigma and
learning-rate schedules (MiniSom's decay functions are replaced by that schedule). MiniSom updates
once per input; ours once per mini-batch (the summed online updates, capped at the batch mean).
Both maps are scored by the same code (Topography.quantization_error / topographic_error).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from benchmarks.timing import median_seconds
from treeworld.agents.topography import Topography


def mixture(n: int, dim: int, generator: torch.Generator, components: int = 10, rank: int = 4) -> torch.Tensor:
    """n points from a mixture of rank-4 Gaussians (plus small isotropic noise) in dim dimensions."""
    centers = 2.0 * torch.randn(components, dim, generator=generator)  # (K, D)
    bases = torch.randn(components, dim, rank, generator=generator)  # (K, D, r)
    which = torch.randint(0, components, (n,), generator=generator)  # (n,)
    latent = torch.randn(n, rank, 1, generator=generator)  # (n, r, 1)
    noise = 0.1 * torch.randn(n, dim, generator=generator)
    return centers[which] + (bases[which] @ latent).squeeze(-1) + noise  # (n, D)


def geometric(start: float, end: float) -> Callable[[float, int, int], float]:
    """MiniSom decay function ``f(initial, t, T)`` with our schedule: start * (end/start)^(t/(T-1))."""
    return lambda initial, t, total: start * (end / start) ** (t / max(total - 1, 1))


def fit_minisom(data: torch.Tensor, init: torch.Tensor, height: int, width: int, epochs: int,
                sigma: tuple, lr: tuple, seed: int) -> tuple[float, np.ndarray]:
    from minisom import MiniSom

    som = MiniSom(height, width, data.shape[1], sigma=sigma[0], learning_rate=lr[0],
                  decay_function=geometric(*lr), random_seed=seed)
    som._sigma_decay_function = geometric(*sigma)  # MiniSom 2.3 accepts only named sigma decays
    som._weights = init.double().numpy().reshape(height, width, -1).copy()
    x = data.numpy()
    start = time.perf_counter()
    som.train(x, epochs * len(x), random_order=True)  # every row `epochs` times, shuffled
    seconds = time.perf_counter() - start
    return seconds, som.get_weights().reshape(height * width, -1)


def scores(data: torch.Tensor, weights: torch.Tensor, height: int, width: int) -> dict:
    som = Topography(data.shape[1], height, width)
    with torch.no_grad():
        som.weight.copy_(torch.as_tensor(weights, dtype=torch.float32))
    return {"quantization_error": som.quantization_error(data), "topographic_error": som.topographic_error(data)}


def ours(data, init, height, width, epochs, batch_size, sigma, lr, device, repeats) -> dict:
    som = Topography(data.shape[1], height, width).to(device)
    x = data.to(device)

    def fit():
        with torch.no_grad():
            som.weight.copy_(init.to(device))
        som.fit(x, epochs, batch_size, sigma=sigma, lr=lr, generator=torch.Generator().manual_seed(1))

    seconds = median_seconds(fit, repeats, warmup=1, device=device)
    return {"seconds": seconds, **scores(data, som.weight.detach().cpu(), height, width)}


def run(repeats: int, device: str, quick: bool) -> dict:
    n, dim, side, epochs, batch_size = (2_000, 16, 6, 1, 128) if quick else (100_000, 128, 20, 2, 1024)
    sigma, lr = (side / 2.0, 0.5), (0.5, 0.01)
    generator = torch.Generator().manual_seed(0)
    data = mixture(n, dim, generator)
    init = data[torch.randperm(n, generator=generator)[: side * side]].clone()
    setting = {"inputs": [n, dim], "map": [side, side], "epochs": epochs, "batch_size": batch_size,
               "sigma": sigma, "lr": lr, "schedule": "geometric per update, start -> end"}

    mine = ours(data, init, side, side, epochs, batch_size, sigma, lr, "cpu", repeats)
    ms_seconds, ms_weights = fit_minisom(data, init, side, side, epochs, sigma, lr, seed=1)
    theirs = {"seconds": ms_seconds, "runs": 1, **scores(data, ms_weights, side, side)}
    report = {
        "setting": setting,
        "ours_cpu": mine,
        "minisom": theirs,
        "note": ("MiniSom timed once (one run is minutes at full size); ours is the median of repeats. "
                 "Both maps scored by Topography's measures, which equal MiniSom's own (tested)."),
        "speedup": theirs["seconds"] / mine["seconds"],
        "qe_ratio": mine["quantization_error"] / theirs["quantization_error"],
        "te_difference": mine["topographic_error"] - theirs["topographic_error"],
    }
    report["meets_bar"] = bool(report["speedup"] >= 10 and report["qe_ratio"] <= 1.05
                               and report["te_difference"] <= 0.02)
    if str(device).startswith("cuda"):  # ours on the accelerator, at this map and at 5x its side
        big = 5 * side
        report[f"ours_{device}"] = {
            f"{side}x{side}": ours(data, init, side, side, epochs, batch_size, sigma, lr, device, repeats),
            f"{big}x{big}": ours(data, data[torch.randperm(n, generator=generator)[: big * big]].clone(), big, big,
                                 epochs, batch_size, (big / 2.0, 0.5), lr, device, repeats),
        }
    return report
