"""SpatialMemory recall latency: a batch of queries against a full memory of one agent.

Entries are distinct places uniform in the default arena (radius 500) with random unit percepts
(384-d, like the shipped vocabulary); half the queries revisit stored places, half are anywhere.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from benchmarks.timing import median_seconds
from treeworld.agents.fourier import FourierMetric
from treeworld.agents.memory import SpatialMemory
from treeworld.agents.pseudometric import PseudoMetric

CHUNK = 1000  # items per write while filling


def disc(n: int, radius: float, generator: torch.Generator) -> torch.Tensor:
    """n points uniform in a disc.  # (n, 2)"""
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    r = radius * torch.rand(n, generator=generator).sqrt()
    return torch.stack([r * angle.cos(), r * angle.sin()], dim=-1)


def filled(entries: int, percept_dim: int,
           generator: torch.Generator) -> tuple[SpatialMemory, torch.Tensor, torch.Tensor, float]:
    """A memory holding ``entries`` items, their places and percepts, and the fill time (s)."""
    memory = SpatialMemory(FourierMetric(48, scale=512.0), PseudoMetric(percept_dim, 32, generator=generator), entries)
    places = disc(entries, 500.0, generator)
    percepts = F.normalize(torch.randn(entries, percept_dim, generator=generator), dim=-1)
    codes = memory.location_metric.encode(places)
    start = time.perf_counter()
    for i in range(0, entries, CHUNK):
        memory.write(codes[None, i:i + CHUNK], percepts[None, i:i + CHUNK])
    return memory, places, percepts, time.perf_counter() - start


def latency(memory: SpatialMemory, places: torch.Tensor, percepts: torch.Tensor, queries: int,
            device: str, repeats: int, generator: torch.Generator) -> dict:
    memory = memory.to(device)
    revisit = torch.randint(len(places), (queries // 2,), generator=generator)
    spots = torch.cat([places[revisit], disc(queries - len(revisit), 500.0, generator)])
    codes = memory.location_metric.encode(spots.to(device))[None]  # (1, Q, L)
    looks = percepts[torch.randint(len(percepts), (queries,), generator=generator)].to(device)[None]  # (1, Q, P)
    with torch.no_grad():
        return {
            "recall_percept_ms": 1e3 * median_seconds(lambda: memory.recall_percept(codes), repeats, device=device),
            "recall_location_ms": 1e3 * median_seconds(lambda: memory.recall_location(looks), repeats, device=device),
        }


def run(repeats: int, device: str, quick: bool) -> dict:
    sizes, queries, percept_dim = ((1_000, 2_000), 64, 64) if quick else ((10_000, 100_000), 256, 384)
    generator = torch.Generator().manual_seed(0)
    report = {"setting": {"queries": queries, "location_dim": 48, "percept_dim": percept_dim, "metric_rank": 32,
                          "candidates": 16, "agents": 1, "fill_chunk": CHUNK}}
    for entries in sizes:
        memory, places, percepts, fill = filled(entries, percept_dim, generator)
        row = {"fill_seconds": fill, "cpu": latency(memory, places, percepts, queries, "cpu", repeats, generator)}
        if str(device).startswith("cuda"):
            row[device] = latency(memory, places, percepts, queries, device, repeats, generator)
        report[f"entries_{entries}"] = row
    report["meets_bar"] = report[f"entries_{sizes[0]}"]["cpu"]["recall_percept_ms"] <= 20.0 if not quick else None
    return report
