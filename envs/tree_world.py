"""TreeWorldEnv: the single Gymnasium environment, a batch of one world."""
from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from treeworld.config import WorldConfig
from gymnasium.error import ResetNeeded

from treeworld.envs.batch import (WorldBatch, action_space, check_action, check_reset_options, make_config,
                                  observation_space, privileged_info)

TRAIL_LENGTH = 500


class TreeWorldEnv(gym.Env):
    """A continuous 2-D world of fruit trees, some poisonous, where an agent must forage to survive.

    ## Description

    Trees stand at N(0, tree_spread^2) per axis inside a disc arena (radius ``arena_radius``; the
    agent stops at the wall; ``arena_radius=None`` is the open plane). Each tree has a unique
    name, a fruit kind (12 edible, 4 poisonous; P(poisonous) = ``poison_probability``) and 0..5
    fruit that regrow one every ``regrow_every`` steps. The agent smells all trees and sees the
    nearest tree ahead; percepts are unit vectors built from a vocabulary of real
    all-MiniLM-L6-v2 sentence embeddings (384-d): a tree is ``normalize(kind + name)``, plus its
    fruit-count phrase when seen. Three tasks share this world (registered ids in
    :mod:`treeworld.envs`): foraging (``task="forage"``), the same with noisy senses, and homing
    (``task="homing"``: reach goal trees seen before).

    ## Action Space

    ``Box(-1, 1, (3,), float32)``; finite values outside it are clipped to it (NaN, inf, a wrong
    shape or dtype raise):

    | Index | Action                       | Unit / effect                                           |
    |-------|------------------------------|---------------------------------------------------------|
    | 0     | displacement x               | times ``max_step`` (5) world units                      |
    | 1     | displacement y               | times ``max_step``; vectors longer than 1 are shortened |
    | 2     | eat                          | eat when > 0                                            |

    Eating succeeds only on the nearest tree within ``eat_radius`` (10) units that has fruit: it
    loses one fruit and health changes by +25 (edible) or -25 (poisonous). A discrete version
    (8 directions + stay + eat) is :class:`~treeworld.envs.DiscreteActions`.

    ## Observation Space

    ``Dict`` of float32 arrays (D = ``percept_dim``, 384 by default; layout and bounds from
    :func:`treeworld.sensors.observation_layout`):

    | Key            | Shape | Bounds          | Meaning                                                   |
    |----------------|-------|-----------------|-----------------------------------------------------------|
    | smell          | (D,)  | [-T, T]         | sum over trees of k(d) * percept, k(d) = a^((d/100)^2),   |
    |                |       |                 | + N(0, percept_noise^2) per component                     |
    | sight          | (D,)  | [-1, 1]         | percept of the nearest tree with cos > 0.9 to the heading |
    |                |       |                 | within 100 units (+ fruit phrase, + percept noise);       |
    |                |       |                 | exactly zeros if none                                     |
    | sight_distance | (1,)  | [0, 1]          | its distance / sight_distance; 0 if none                  |
    | motion         | (2,)  | [-5g, 5g]       | odometry: realized displacement (world units) times       |
    |                |       |                 | ``motion_gain`` g, rotated by ``motion_rotation``,        |
    |                |       |                 | + N(0, motion_noise^2) per axis                           |
    | heading        | (2,)  | [-1, 1]         | unit vector of the last move                              |
    | health         | (1,)  | [0, 1]          | health / max_health                                       |
    | position       | (2,)  | arena           | only with ``observe_position=True``                       |
    | goal           | (D,)  | [-1, 1]         | homing only: normalize(kind + name) of the goal tree,     |
    |                |       |                 | zeros while no goal is set                                |

    Noisy components are unbounded (Box bounds +-inf). Position, tree positions, fruit and
    counters are privileged: they are in ``info`` only.

    ## Rewards

    ``reward="task"`` (default). Foraging: +1 per edible fruit, -1 per poisonous fruit, and
    -``death_penalty`` (10) on the step health reaches 0. The return counts net fruit, and dying
    costs as much as ten fruit, so it orders policies by foraging first and survival second;
    over 32 episodes (``scripts/measure_tasks.py``, README) it ranks do-nothing (dies at step
    1,000 without eating: -10) below the random walker below the Forager. The v0 reward, health
    change / 25, made the return of every episode that ends in death exactly -40 however much the
    agent ate; it stays available as ``reward="health"``. Homing: +1 per goal reached and
    -``death_penalty`` at death.

    ## Homing

    After ``explore_steps`` (500) steps a goal is drawn uniformly among the trees that have been
    in sight this episode and are out of reach; coming within ``eat_radius`` reaches it (+1), and
    ``goal_timeout`` (500) steps without reaching it fail it; either way the next goal is drawn on
    that step. The registered homing ids lower the costs to ``living_cost=0.2`` and
    ``move_cost=0.04``: at most 0.4 health per step, 800 over 2,000 steps, so no agent starves
    (poisonous fruit can still kill). SPL = mean over ended goals of S * l / max(p, l) with the
    info keys below (:func:`treeworld.tasks.spl`).

    ## Starting State

    Health 1000 (max); position uniform in the disc of radius ``start_radius`` (50); heading
    uniform. ``reset(seed=s)`` seeds everything; ``reset(options={"world_seed": k})`` draws the
    tree layout from ``k``, and the layout then holds for every later reset until a reset passes
    options again (``options={}`` returns to a new layout per reset), while the start varies.

    ## Episode End

    Terminated when health reaches 0 (stepping on after that raises ``ResetNeeded``). Truncated
    after ``max_episode_steps`` (2000) by the ``TimeLimit`` wrapper of ``gym.make``.

    ## Info

    Privileged, per step (from :func:`treeworld.envs.batch.privileged_info`): ``position`` (2,),
    ``heading`` (2,), ``health``, ``tree_positions`` (T, 2), ``tree_fruit`` (T,),
    ``tree_poisonous`` (T,), ``tree_identity`` (T,) (each tree's (kind, name) index: its look,
    fruit aside), ``fruit_eaten``, ``poison_eaten``, ``distance_travelled``; after a step ``ate``
    and ``poisoned``. Homing adds ``goal_tree`` (-1: none), ``goals_reached``,
    ``goals_failed`` and, after a step, for a goal that ended on it: ``goal_reached``,
    ``goal_failed``, ``goal_distance`` (straight line when set), ``goal_shortest_path`` (l =
    max(goal_distance - eat_radius, 0)) and ``goal_path_length`` (p, distance travelled while it
    was the goal); zeros on other steps.

    ## Arguments

    ``gym.make("treeworld/TreeWorld-v0", render_mode=None, config=None, **overrides)``: ``config``
    is a :class:`~treeworld.WorldConfig`; keyword ``overrides`` replace its fields (unknown keys
    raise ``ValueError``). An id's task settings (``preset``, e.g. the noisy id's noise levels)
    make the default config; a ``config`` given is taken whole. ``render_mode`` is ``"human"`` or ``"rgb_array"``. Agents may set
    ``env.unwrapped.overlays`` to a list of :mod:`treeworld.overlay` primitives to draw beliefs.

    ## Version History

    * v0: initial release. Later additions keep v0's behaviour at their defaults except the
      reward: ``reward="task"`` is the default, ``reward="health"`` restores the original.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 30}

    def __init__(self, config: WorldConfig | None = None, render_mode: str | None = None,
                 preset: dict[str, Any] | None = None, **overrides: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.config = make_config(config, overrides, preset)
        self.render_mode = render_mode
        self._batch = WorldBatch(self.config, num_envs=1)
        self.observation_space = observation_space(self.config, self._batch.vocabulary.dim)
        self.action_space = action_space()
        self.overlays: list = []
        self._trail: deque = deque(maxlen=TRAIL_LENGTH)
        self._renderer = None
        self._episode = -1  # episodes started, minus one: the number the renderer shows
        self._terminated = False

    @property
    def state(self):
        """The current :class:`~treeworld.world.WorldState` (B = 1); None before reset."""
        return self._batch.state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._batch.rngs[0] = self.np_random
        self._batch.reset([0], check_reset_options(options))  # a world seed holds until options change it
        self._episode += 1
        self._terminated = False
        self._trail.clear()
        self._trail.append(self.state.agent_position[0].copy())
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info(None)

    def step(self, action):
        if self._terminated:
            raise ResetNeeded("step() after the episode terminated (health reached 0): call reset() first")
        transition = self._batch.step(check_action(action, (3,))[None])
        self._terminated = bool(transition.terminated[0])
        self._trail.append(self.state.agent_position[0].copy())
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(transition.reward[0]), self._terminated, False, self._info(transition)

    def _observation(self) -> dict[str, np.ndarray]:
        return self._batch.observe(squeeze=True)

    def _info(self, transition) -> dict[str, Any]:
        # Per-world scalars become Python numbers, arrays fresh copies: nothing returned is shared.
        return {key: value.item() if value.ndim == 1 else value[0].copy()
                for key, value in privileged_info(self.config, self.state, transition).items()}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'.")
            return None
        if self.state is None:
            raise ResetNeeded("render() before reset(): there is no world to draw yet; call reset() first")
        if self._renderer is None:
            from treeworld.envs.rendering import Renderer

            self._renderer = Renderer(self.config, self._batch.vocabulary, render_fps=self.metadata["render_fps"])
        frame = self._renderer.render_frame(self.state, 0, np.array(self._trail), self.overlays, episode=self._episode)
        if self.render_mode == "human":
            self._renderer.show(frame)
            return None
        return frame

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
