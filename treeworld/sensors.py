"""What the agent perceives: smell, sight, motion, heading and health, for B worlds at once.

Both percept sensors factor through small tables built once from the vocabulary
(:class:`PerceptTables`), never through per-tree vectors: smell scatters kernel weights onto the
kind and name rows and multiplies once by the table; sight gathers one precomputed row, the
normalized percept of (kind, name, fruit count), or a zero row when nothing is seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from treeworld.backend import copy_array, device_of, from_numpy, namespace, scatter_add_rows
from treeworld.config import WorldConfig
from treeworld.vocabulary import Vocabulary
from treeworld.world import Array, WorldState


@dataclass(frozen=True)
class PerceptTables:
    """The vocabulary rows the sensors read, on one backend.

    ``smell`` (K + P, D): kind rows then the ``name_pool`` name rows (K = 16 kinds, P = pool).
    ``sight`` (K * P * F + 1, D): normalize(e_kind + e_name + e_phrase) for every kind, pooled
    name and fruit count (F = 6), then a zero row for "nothing seen".
    """

    smell: Array
    sight: Array

    @staticmethod
    def build(config: WorldConfig, vocabulary: Vocabulary, backend: str = "numpy", device: str | None = None):
        table = vocabulary.table
        kinds = table[:vocabulary.num_kinds]  # (K, D)
        names = table[vocabulary.name_offset:vocabulary.name_offset + config.name_pool]  # (P, D)
        phrases = table[vocabulary.phrase_offset:]  # (F, D)
        combos = kinds[:, None, None] + names[None, :, None] + phrases[None, None, :]  # (K, P, F, D)
        combos = combos.reshape(-1, vocabulary.dim)
        combos /= np.linalg.norm(combos, axis=1, keepdims=True)
        sight = np.concatenate([combos, np.zeros((1, vocabulary.dim), np.float32)])
        smell = np.concatenate([kinds, names])
        return PerceptTables(smell=from_numpy(smell.astype(np.float32), backend, device),
                             sight=from_numpy(sight.astype(np.float32), backend, device))


def observe(config: WorldConfig, tables: PerceptTables, state: WorldState, motion: Array | None = None,
            squeeze: bool = False) -> dict[str, Array]:
    """Observations of B worlds; ``tables`` from :meth:`PerceptTables.build` on the state's backend.

    Returns float32 arrays: smell (B, D), sight (B, D), sight_distance (B, 1) in [0, 1],
    motion (B, 2) (``motion`` if given, e.g. noisy, else the realized displacement),
    heading (B, 2), health (B, 1) as a fraction of max_health, and position (B, 2) when
    ``config.observe_position``; ``squeeze`` drops the batch axis (B = 1).
    """
    xp = namespace(state.health)
    dist = state.tree_distance  # (B, T)

    # Smell: Gaussian diffusion kernel, equal to smell_attenuation at smell_distance.
    log_kernel = math.log(config.smell_attenuation) / config.smell_distance ** 2
    weight = xp.exp(dist * dist * log_kernel) * state.tree_smell_weight  # (B, T)
    rows = tables.smell.shape[0]
    smell = scatter_add_rows(state.tree_smell_rows, xp.concat([weight, weight], axis=1), rows) @ tables.smell  # (B, D)

    # Sight: the nearest tree in the heading cone and range, with its fruit phrase.
    heading = state.heading
    ahead = state.tree_offset[:, 0] * heading[:, 0:1] + state.tree_offset[:, 1] * heading[:, 1:2]  # (B, T)
    visible = (ahead >= config.sight_cos * dist) & (dist < config.sight_distance)
    masked = xp.where(visible, dist, math.inf)
    nearest = xp.argmin(masked, axis=1)  # (B,)
    index = xp.arange(state.batch_size, device=device_of(dist))
    seen_distance = masked[index, nearest]  # (B,) inf when nothing is seen
    seen = seen_distance < math.inf
    combo = state.tree_sight_row[index, nearest] + state.tree_fruit[index, nearest]
    sight = xp.take(tables.sight, xp.where(seen, combo, tables.sight.shape[0] - 1), axis=0)  # (B, D)
    sight_distance = xp.where(seen, seen_distance / config.sight_distance, 0.0)

    obs = {
        "smell": smell,
        "sight": sight,
        "sight_distance": sight_distance[:, None],
        "motion": copy_array(state.motion) if motion is None else motion,  # copies: state stays private
        "heading": copy_array(heading),
        "health": (state.health / config.max_health)[:, None],
    }
    if config.observe_position:
        obs["position"] = copy_array(state.agent_position)
    return {key: value[0] for key, value in obs.items()} if squeeze else obs
