"""The world's one validated configuration: every default and unit lives here."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from treeworld.vocabulary import NAMES


@dataclass(frozen=True)
class WorldConfig:
    """Rules and sizes of a tree world. Distances are in world units, times in steps.

    Unknown keys are rejected by :meth:`from_dict` and :meth:`replace`; every value is validated
    on construction, so a bad setting fails where it is made, not deep inside a step.
    """

    num_trees: int = field(default=25, metadata={"doc": "trees per world"})
    name_pool: int = field(default=32, metadata={
        "doc": "tree names are drawn without replacement from the first name_pool names (<= 128); "
               "smell costs grow with it"})
    tree_spread: float = field(default=200.0, metadata={"doc": "std of tree positions per axis (world units)"})
    arena_radius: float | None = field(
        default=500.0, metadata={"doc": "radius of the disc arena (world units); None = open plane"})
    start_radius: float = field(default=50.0, metadata={"doc": "agent starts uniformly in this disc (world units)"})
    max_fruit: int = field(default=5, metadata={"doc": "most fruit a tree carries (at most 5)"})
    regrow_every: int = field(default=100, metadata={"doc": "a tree below max_fruit grows one fruit every this many steps"})
    poison_probability: float = field(default=0.3, metadata={"doc": "probability that a tree's fruit kind is poisonous"})
    max_health: float = field(default=1000.0, metadata={"doc": "starting and maximum health (health units)"})
    living_cost: float = field(default=1.0, metadata={"doc": "health lost per step (health units)"})
    move_cost: float = field(default=0.2, metadata={"doc": "health lost per world unit moved"})
    fruit_health: float = field(default=25.0, metadata={"doc": "health gained (edible) or lost (poison) per fruit"})
    max_step: float = field(default=5.0, metadata={"doc": "longest displacement per step (world units)"})
    eat_radius: float = field(default=10.0, metadata={"doc": "a tree is in reach within this distance (world units)"})
    smell_distance: float = field(default=100.0, metadata={"doc": "distance at which smell is attenuated by smell_attenuation"})
    smell_attenuation: float = field(default=0.5, metadata={"doc": "Gaussian diffusion kernel value at smell_distance, in (0, 1)"})
    sight_distance: float = field(default=100.0, metadata={"doc": "farthest visible tree (world units)"})
    sight_cos: float = field(default=0.9, metadata={"doc": "a tree is seen when cos(angle to heading) exceeds this"})
    motion_noise: float = field(default=0.0, metadata={"doc": "std of Gaussian noise on the observed motion (world units)"})
    observe_position: bool = field(default=False, metadata={"doc": "add the (privileged) position to observations"})
    vocabulary: str = field(default="minilm", metadata={"doc": "'minilm' (shipped 384-d sentence embeddings) or 'hashed'"})
    percept_dim: int = field(default=384, metadata={"doc": "percept vector size (must be 384 for 'minilm')"})
    vocabulary_seed: int = field(default=0, metadata={"doc": "seed of the hashed vocabulary"})

    def __post_init__(self) -> None:
        _check_int(self, "num_trees", low=1)
        _check_int(self, "name_pool", low=1, high=len(NAMES))
        if self.num_trees > self.name_pool:
            raise ValueError(f"num_trees: expected <= name_pool={self.name_pool} (tree names are unique), "
                             f"got {self.num_trees}; raise name_pool (at most {len(NAMES)})")
        _check_int(self, "max_fruit", low=0, high=5)
        _check_int(self, "regrow_every", low=1)
        _check_int(self, "percept_dim", low=2)
        _check_int(self, "vocabulary_seed", low=0)
        for name in ("tree_spread", "start_radius", "max_health", "max_step", "eat_radius",
                     "smell_distance", "sight_distance"):
            _check_float(self, name, positive=True)
        for name in ("living_cost", "move_cost", "fruit_health", "motion_noise"):
            _check_float(self, name, positive=False)
        if self.arena_radius is not None:
            _check_float(self, "arena_radius", positive=True)
            if self.start_radius > self.arena_radius:
                raise ValueError(f"start_radius: expected <= arena_radius={self.arena_radius}, got {self.start_radius}")
        _check_float(self, "poison_probability", positive=False, high=1.0)
        _check_float(self, "smell_attenuation", positive=True, high=1.0)
        if self.smell_attenuation >= 1.0:
            raise ValueError(f"smell_attenuation: expected a value in (0, 1), got {self.smell_attenuation}")
        _check_float(self, "sight_cos", positive=False, low=-1.0, high=1.0)
        if not isinstance(self.observe_position, bool):
            raise TypeError(f"observe_position: expected bool, got {type(self.observe_position).__name__}")
        if self.vocabulary not in ("minilm", "hashed"):
            raise ValueError(f"vocabulary: expected 'minilm' or 'hashed', got {self.vocabulary!r}")
        if self.vocabulary == "minilm" and self.percept_dim != 384:
            raise ValueError(f"percept_dim: the 'minilm' vocabulary is 384-d, got percept_dim={self.percept_dim}; "
                             "use vocabulary='hashed' for other sizes")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "WorldConfig":
        """Build a config from a mapping, rejecting keys that are not fields."""
        return cls().replace(**values)

    def replace(self, **changes: Any) -> "WorldConfig":
        """A copy with ``changes`` applied; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; expected names from {sorted(known)}")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def field_docs() -> dict[str, str]:
        """Field name -> its one-line documentation (used for CLI help)."""
        return {f.name: f.metadata.get("doc", "") for f in fields(WorldConfig)}


def _check_int(config: WorldConfig, name: str, low: int, high: int | None = None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an int {bound}, got {value}")
    object.__setattr__(config, name, int(value))  # numpy integers become Python ints


def _check_float(config: WorldConfig, name: str, positive: bool, low: float = 0.0, high: float | None = None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    too_low = value <= low if positive else value < low
    if too_low or (high is not None and value > high):
        bound = f"> {low}" if positive else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    object.__setattr__(config, name, float(value))  # numpy floats become Python floats
