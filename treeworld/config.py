"""The world's one validated configuration: every default and unit lives here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from treeworld import checks
from treeworld.vocabulary import NAMES

TASKS = ("forage", "homing")
REWARDS = ("task", "health")


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
    motion_noise: float = field(default=0.0, metadata={"doc": "std of Gaussian noise on the observed motion, per axis (world units)"})
    motion_gain: float = field(default=1.0, metadata={
        "doc": "odometry gain: the observed motion is the true one times this (before rotation and noise), > 0"})
    motion_rotation: float = field(default=0.0, metadata={
        "doc": "odometry bias: the observed motion is the true one rotated by this angle (radians)"})
    percept_noise: float = field(default=0.0, metadata={
        "doc": "std of Gaussian noise on every component of smell and sight (sight stays zero when nothing is seen)"})
    task: str = field(default="forage", metadata={
        "doc": "'forage' (eat and survive) or 'homing' (after explore_steps, reach goal trees seen before)"})
    reward: str = field(default="task", metadata={
        "doc": "'task' (forage: +1 edible fruit, -1 poisonous, -death_penalty at death; homing: +1 per goal "
               "reached, -death_penalty at death) or 'health' (health change / 25, the v0 reward)"})
    death_penalty: float = field(default=10.0, metadata={"doc": "reward lost on the step health reaches 0 ('task' reward)"})
    explore_steps: int = field(default=500, metadata={"doc": "homing: steps without a goal at the start of an episode"})
    goal_timeout: int = field(default=500, metadata={"doc": "homing: a goal not reached within this many steps fails"})
    observe_position: bool = field(default=False, metadata={"doc": "add the (privileged) position to observations"})
    vocabulary: str = field(default="minilm", metadata={"doc": "'minilm' (shipped 384-d sentence embeddings) or 'hashed'"})
    percept_dim: int = field(default=384, metadata={"doc": "percept vector size (must be 384 for 'minilm')"})
    vocabulary_seed: int = field(default=0, metadata={"doc": "seed of the hashed vocabulary"})

    def __post_init__(self) -> None:
        ints = {"num_trees": (1, None), "name_pool": (1, len(NAMES)), "max_fruit": (0, 5), "regrow_every": (1, None),
                "percept_dim": (2, None), "vocabulary_seed": (0, None), "explore_steps": (0, None),
                "goal_timeout": (1, None)}
        for name, (low, high) in ints.items():
            self._set(name, checks.integer(getattr(self, name), name, low=low, high=high))
        if self.num_trees > self.name_pool:
            raise ValueError(f"num_trees: expected <= name_pool={self.name_pool} (tree names are unique), "
                             f"got {self.num_trees}; raise name_pool (at most {len(NAMES)})")
        reals = {name: (0.0, True, None) for name in ("tree_spread", "start_radius", "max_health", "max_step",
                                                      "eat_radius", "smell_distance", "sight_distance", "motion_gain")}
        reals.update({name: (0.0, False, None) for name in ("living_cost", "move_cost", "fruit_health",
                                                            "motion_noise", "percept_noise", "death_penalty")})
        reals.update(motion_rotation=(None, False, None), poison_probability=(0.0, False, 1.0),
                     smell_attenuation=(0.0, True, 1.0), sight_cos=(-1.0, False, 1.0))
        for name, (low, low_open, high) in reals.items():
            value = checks.real(getattr(self, name), name, low=low, high=high, low_open=low_open,
                                high_open=name == "smell_attenuation")
            self._set(name, value)
        if self.arena_radius is not None:
            self._set("arena_radius", checks.real(self.arena_radius, "arena_radius", low=0.0, low_open=True))
            if self.start_radius > self.arena_radius:
                raise ValueError(f"start_radius: expected <= arena_radius={self.arena_radius}, got {self.start_radius}")
        if not isinstance(self.observe_position, bool):
            raise TypeError(f"observe_position: expected bool, got {type(self.observe_position).__name__}")
        for name, choices in (("task", TASKS), ("reward", REWARDS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")
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

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: checked numbers (numpy scalars included) as Python ones

    @staticmethod
    def field_docs() -> dict[str, str]:
        """Field name -> its one-line documentation (used for CLI help)."""
        return {f.name: f.metadata.get("doc", "") for f in fields(WorldConfig)}


WorldConfig.__doc__ += "\n    Fields:\n\n" + "\n".join(
    f"    - ``{f.name}`` = {f.default!r}: {f.metadata['doc']}" for f in fields(WorldConfig))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> {key: value} parsed to the WorldConfig field types.

    Unknown keys raise ValueError (from ``WorldConfig.replace``); unparsable values raise ValueError.
    """
    types = {f.name: str(f.type) for f in fields(WorldConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"{pair!r}: expected key=value")
        if key not in types:
            WorldConfig().replace(**{key: text})  # raises the config's "unknown config key(s)" error
        overrides[key] = _parse_value(key, text, types[key])
    return overrides


def _parse_value(key: str, text: str, type_name: str) -> Any:
    if "None" in type_name and text.lower() == "none":
        return None
    base = type_name.split("|")[0].strip()
    try:
        if base == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"{key}={text}: expected {type_name}") from None
    return text
