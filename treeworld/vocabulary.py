"""Percept vocabulary: the words a tree is made of and one unit vector per word.

Rows of the (V, D) table are ordered ``kinds | names | fruit phrases``. A tree's percept is
``normalize(e[kind] + e[name] (+ e[phrase(fruit)] when seen))``, so every sensor factors
through this one table.

The default table holds real all-MiniLM-L6-v2 sentence embeddings (384-d), precomputed by
``scripts/build_vocabulary.py`` and shipped in ``treeworld/data``; a seeded hashed vocabulary
gives unit vectors of any size without text models.
"""
from __future__ import annotations

import functools
import importlib.resources
import itertools
import zlib
from dataclasses import dataclass

import numpy as np

from treeworld import checks

EDIBLE_KINDS = ("apple", "pear", "plum", "cherry", "peach", "apricot",
                "fig", "orange", "lemon", "mango", "banana", "grape")
POISONOUS_KINDS = ("deadly nightshade", "yew berry", "manchineel", "white baneberry")
KINDS = EDIBLE_KINDS + POISONOUS_KINDS
_ADJECTIVES = ("Old", "Crooked", "Tall", "Hollow", "Whispering", "Silver", "Lonely", "Mossy",
               "Twisted", "Golden", "Ancient", "Weeping", "Broken", "Red", "Sleeping", "Thorny")
_TREES = ("Oak", "Elm", "Willow", "Birch", "Cedar", "Ash", "Maple", "Pine")
NAMES = tuple(f"the {adjective} {tree}" for adjective, tree in itertools.product(_ADJECTIVES, _TREES))
FRUIT_PHRASES = ("no fruit", "one fruit", "two fruits", "three fruits", "four fruits", "five fruits")
WORDS = KINDS + NAMES + FRUIT_PHRASES

DEFAULT_TABLE = "minilm_vocabulary.npz"


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The word list and its (V, D) float32 table of unit vectors."""

    table: np.ndarray  # (V, D)
    source: str

    num_kinds = len(KINDS)
    num_names = len(NAMES)
    name_offset = len(KINDS)
    phrase_offset = len(KINDS) + len(NAMES)
    words = WORDS

    def __post_init__(self) -> None:
        if self.table.shape[0] != len(WORDS) or self.table.ndim != 2:
            raise ValueError(f"table: expected shape ({len(WORDS)}, D), got {self.table.shape}")

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @property
    def poisonous(self) -> np.ndarray:
        """(num_kinds,) bool: which fruit kinds are poisonous."""
        return np.arange(self.num_kinds) >= len(EDIBLE_KINDS)

    @staticmethod
    @functools.cache
    def minilm() -> "Vocabulary":
        """The shipped all-MiniLM-L6-v2 table (384-d); needs no model and no network."""
        with importlib.resources.files("treeworld").joinpath("data", DEFAULT_TABLE).open("rb") as f:
            data = np.load(f)
            words, table = tuple(data["words"].tolist()), data["table"].astype(np.float32)
        if words != WORDS:
            raise ValueError(f"{DEFAULT_TABLE}: its word list differs from treeworld.vocabulary.WORDS; "
                             "regenerate it with scripts/build_vocabulary.py")
        return Vocabulary(table=_unit_rows(table), source="all-MiniLM-L6-v2")

    @staticmethod
    @functools.cache
    def hashed(dim: int, seed: int = 0) -> "Vocabulary":
        """Seeded random unit vectors: each word's vector depends only on (word, seed, dim)."""
        dim, seed = checks.integer(dim, "dim", low=2), checks.integer(seed, "seed", low=0)
        rows = [np.random.default_rng([seed, zlib.crc32(word.encode())]).standard_normal(dim) for word in WORDS]
        return Vocabulary(table=_unit_rows(np.stack(rows).astype(np.float32)), source=f"hashed(seed={seed})")

    @staticmethod
    def for_config(config) -> "Vocabulary":
        """The vocabulary a :class:`~treeworld.config.WorldConfig` asks for."""
        if config.vocabulary == "minilm":
            return Vocabulary.minilm()
        return Vocabulary.hashed(config.percept_dim, config.vocabulary_seed)


def _unit_rows(table: np.ndarray) -> np.ndarray:
    table = table / np.linalg.norm(table, axis=1, keepdims=True)
    table.setflags(write=False)
    return table
