"""Pygame pictures of a tree world: rgb frames of any state, and a window for render mode "human".

Rendering is kept apart from the physics: :meth:`Renderer.render_frame` reads one world of a
:class:`~treeworld.world.WorldState` (numpy or torch) and returns a (size, size, 3) uint8 frame
drawn on an offscreen surface, so no display is needed. pygame is imported on first use, not with
this module. One world -> screen transform places every layer, bottom to top: ground (and the
arena wall), the sight cone and smell radius, the trail, the trees with their fruit, the goal
flag, the agent, the eat marks, the other overlays, then the HUD, the legend of fruit kinds and
the key. Overlays (:mod:`treeworld.overlay`) are beliefs drawn by agents: heat maps go on the
ground, under the sight cone.

Eat marks need no extra input: the renderer remembers, per world index, what it last drew
(counters, fruit per tree) and reads an eat off the difference; a new episode forgets it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import gymnasium
import numpy as np

from treeworld import checks
from treeworld.backend import to_numpy
from treeworld.config import WorldConfig
from treeworld.overlay import OVERLAY_TYPES, Circle, HeatMap, Overlay, Point, Segment, Text
from treeworld.vocabulary import KINDS, Vocabulary

Color = tuple[int, int, int]

# One color per fruit kind, in vocabulary order (12 edible, then 4 poisonous).
KIND_COLORS: tuple[Color, ...] = (
    (230, 25, 75),  # apple
    (210, 245, 60),  # pear
    (145, 30, 180),  # plum
    (128, 0, 0),  # cherry
    (250, 190, 212),  # peach
    (0, 128, 128),  # apricot
    (170, 110, 40),  # fig
    (245, 130, 48),  # orange
    (255, 225, 25),  # lemon
    (60, 180, 75),  # mango
    (70, 240, 240),  # banana
    (0, 130, 200),  # grape
    (190, 160, 255),  # deadly nightshade
    (240, 50, 230),  # yew berry
    (128, 128, 0),  # manchineel
    (255, 255, 255),  # white baneberry
)
assert len(KIND_COLORS) == len(KINDS)

ARENA_COLOR = (236, 230, 212)
OUTSIDE_COLOR = (196, 192, 180)  # beyond the arena wall
GRID_COLOR = (222, 215, 196)
GRID_SPACING = 100.0  # world units between grid lines
WALL_COLOR = (90, 80, 70)
OUTLINE_COLOR = (40, 40, 40)
POISON_COLOR = (0, 0, 0)
AGENT_COLOR = (20, 80, 220)
TRAIL_COLOR = (110, 150, 235)
SIGHT_COLOR = (255, 190, 0, 70)  # translucent
SMELL_COLOR = (60, 120, 210, 150)
EDIBLE_MARK_COLOR = (0, 200, 70)  # burst where edible fruit was eaten
POISON_MARK_COLOR = (215, 0, 0)  # burst (outlined black) where poisonous fruit was eaten
GOAL_COLOR = (235, 0, 150)  # ring and flag of the homing goal
KEY_FRUIT_COLOR = (170, 170, 170)  # the fruit dot in the key (on a tree it takes the kind's color)
EAT_MARK_STEPS = 12  # an eat mark shows, shrinking, for this many steps (frames when every step is rendered)
PANEL_COLOR = (255, 255, 255, 190)
TEXT_COLOR = (30, 30, 30)
OPEN_PLANE_HALF_WIDTH = 500.0  # world units shown on each side of the agent without an arena
ARENA_MARGIN = 1.08  # the view spans the arena radius times this
MAX_PIXEL = 1e6  # screen coordinates are clamped to +-this before drawing (pygame clips the rest)


def _import_pygame() -> Any:
    """pygame, imported on first use; a clear error when it is missing."""
    try:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # library code does not print
        import pygame
    except ImportError as e:
        raise gymnasium.error.DependencyNotInstalled("pygame is not installed, run `pip install pygame`") from e
    return pygame


class _View:
    """The world -> screen transform: a square of half-width ``half_width`` world units around
    ``center`` fills ``size`` pixels; screen x grows rightwards and screen y downwards."""

    def __init__(self, center: np.ndarray, half_width: float, size: int) -> None:
        self.center = center  # (2,) world units
        self.size = size
        self.scale = size / (2.0 * half_width)  # pixels per world unit

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) world positions -> (..., 2) float screen positions."""
        xy = np.asarray(xy, dtype=np.float64)
        x = self.size / 2 + (xy[..., 0] - self.center[0]) * self.scale
        y = self.size / 2 - (xy[..., 1] - self.center[1]) * self.scale
        return np.stack([x, y], axis=-1)

    def to_world(self, screen: np.ndarray) -> np.ndarray:
        """(..., 2) screen positions -> (..., 2) world positions."""
        screen = np.asarray(screen, dtype=np.float64)
        x = self.center[0] + (screen[..., 0] - self.size / 2) / self.scale
        y = self.center[1] - (screen[..., 1] - self.size / 2) / self.scale
        return np.stack([x, y], axis=-1)


def _pixels(screen: np.ndarray) -> list:
    """(..., 2) float screen positions -> nested lists of ints that pygame accepts."""
    return np.rint(np.clip(screen, -MAX_PIXEL, MAX_PIXEL)).astype(np.int64).tolist()


@dataclass
class _EatMark:
    """An eat seen at step ``step``: the tree eaten and whether its fruit was poisonous."""

    tree: int
    poisoned: bool
    step: int


@dataclass
class _History:
    """What the renderer last drew of one world, and the eats it still marks."""

    steps: int
    fruit_eaten: int
    poison_eaten: int
    tree_position: np.ndarray  # (T, 2)
    tree_fruit: np.ndarray  # (T,) int64
    marks: list[_EatMark]


class Renderer:
    """Draws tree worlds of ``config`` at ``size`` x ``size`` pixels; ``show`` paces a window at
    ``render_fps`` frames per second."""

    def __init__(self, config: WorldConfig, vocabulary: Vocabulary, size: int = 600, render_fps: int = 30) -> None:
        self.config = checks.instance(config, WorldConfig, "config")
        self.vocabulary = checks.instance(vocabulary, Vocabulary, "vocabulary")
        self.size = checks.integer(size, "size", low=64)
        self.render_fps = checks.integer(render_fps, "render_fps", low=1)
        self._history: dict[int, _History] = {}  # world index -> last drawn counters, fruit and eat marks
        self._fonts: dict[int, Any] = {}
        self._window = None
        self._clock = None

    def __getstate__(self) -> dict:
        """Settings and eat history; pygame's fonts, window and clock cannot be pickled (remade on use)."""
        return {key: value for key, value in self.__dict__.items() if key not in ("_fonts", "_window", "_clock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fonts, self._window, self._clock = {}, None, None

    # ------------------------------------------------------------------ public API

    def render_frame(self, state: Any, index: int = 0, trail: Any = None,
                     overlays: Sequence[Overlay] = (), episode: int | None = None) -> np.ndarray:
        """World ``index`` of ``state`` as a (size, size, 3) uint8 rgb frame.

        ``trail`` (N, 2): past agent positions in world units, drawn as a polyline. ``overlays``:
        :mod:`treeworld.overlay` primitives in world coordinates, drawn in order; heat maps lie on
        the ground under the trees and the agent, the other primitives over everything but the HUD.
        ``episode``: shown in the HUD when given. A ``goal_tree`` (B,) attribute of ``state`` (-1:
        none) gets a ring and flag, and a HUD line. Eats since the last frame of world ``index``
        are marked at their tree for ``EAT_MARK_STEPS`` steps.
        """
        pygame = _import_pygame()
        index = self._check_index(state, index)
        world = _one_world(state, index)
        trail = _check_trail(trail)
        overlays = _check_overlays(overlays)
        episode = _check_episode(episode)
        marks = self._update_history(index, world)
        view = self._view(world)
        agent, heading = world.agent_position.astype(np.float64), world.heading.astype(np.float64)  # (2,)

        surface = pygame.Surface((self.size, self.size))
        self._draw_ground(pygame, surface, view)
        for heat in (overlay for overlay in overlays if isinstance(overlay, HeatMap)):
            self._draw_heat_map(pygame, surface, view, heat)
        self._draw_senses(pygame, surface, view, agent, heading)
        if trail is not None:
            self._draw_trail(pygame, surface, view, trail)
        self._draw_trees(pygame, surface, view, world)
        if world.goal_tree >= 0:
            _, _, _, outer = self._tree_geometry(view)
            _draw_goal_marker(pygame, surface, _pixels(view(world.tree_position[world.goal_tree])), outer)
        self._draw_agent(pygame, surface, view, agent, heading)
        self._draw_eat_marks(pygame, surface, view, world, marks)
        for shape in (overlay for overlay in overlays if not isinstance(overlay, HeatMap)):
            self._draw_shape(pygame, surface, view, shape)
        self._draw_hud(pygame, surface, world, episode)
        self._draw_legend(pygame, surface, world)
        self._draw_key(pygame, surface, world.goal_tree >= 0)
        rgb = pygame.image.tobytes(surface, "RGB")  # row-major, the fastest copy pygame offers
        return np.frombuffer(rgb, dtype=np.uint8).reshape(self.size, self.size, 3).copy()  # writable

    def screen_position(self, state: Any, xy: Any, index: int = 0) -> np.ndarray:
        """(..., 2) world positions -> (..., 2) float pixel positions (x right, y down) in the frame
        of world ``index`` of ``state`` (the view follows the agent on the open plane)."""
        view = self._view(_one_world(state, self._check_index(state, index)))
        return view(to_numpy(xy) if hasattr(xy, "detach") else xy)

    def show(self, frame: np.ndarray) -> None:
        """Display a (size, size, 3) uint8 ``frame`` in a window (opened on first call), pump its
        events and wait to keep ``render_fps``."""
        pygame = _import_pygame()
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (self.size, self.size, 3):
            shape, dtype = getattr(frame, "shape", None), getattr(frame, "dtype", type(frame).__name__)
            raise ValueError(f"frame: expected a ({self.size}, {self.size}, 3) uint8 array, "
                             f"got shape {shape} dtype {dtype}")
        if self._window is None:
            pygame.display.init()
            pygame.display.set_caption("treeworld")
            self._window = pygame.display.set_mode((self.size, self.size))
            self._clock = pygame.time.Clock()
        self._window.blit(pygame.image.frombuffer(frame.tobytes(), (self.size, self.size), "RGB"), (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.render_fps)

    def close(self) -> None:
        """Close the window if one is open (pygame's fonts stay initialized for other renderers)."""
        if self._window is not None:
            _import_pygame().display.quit()
            self._window = None
            self._clock = None

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_index(state: Any, index: int) -> int:
        return checks.integer(index, "index", low=0, high=state.agent_position.shape[0] - 1)

    def _update_history(self, index: int, world: SimpleNamespace) -> list[_EatMark]:
        """Remember world ``index`` as drawn now; return its eat marks still showing, new eats included."""
        last = self._history.get(index)
        marks = [] if last is None or _new_episode(last, world) else last.marks + _new_eats(last, world)
        marks = [mark for mark in marks if world.steps - mark.step < EAT_MARK_STEPS]
        self._history[index] = _History(int(world.steps), int(world.fruit_eaten), int(world.poison_eaten),
                                        world.tree_position.copy(), world.tree_fruit.astype(np.int64), marks)
        return marks

    def _view(self, world: SimpleNamespace) -> _View:
        if self.config.arena_radius is not None:
            return _View(np.zeros(2), self.config.arena_radius * ARENA_MARGIN, self.size)
        return _View(world.agent_position.astype(np.float64), OPEN_PLANE_HALF_WIDTH, self.size)

    def _font(self, pygame: Any, px: int) -> Any:
        if not pygame.font.get_init():  # also after someone else's pygame.quit()
            pygame.font.init()
            self._fonts.clear()
        if px not in self._fonts:
            self._fonts[px] = pygame.font.Font(None, px)
        return self._fonts[px]

    @property
    def _text_px(self) -> int:
        return max(12, self.size // 36)

    @property
    def _tree_px(self) -> int:
        return max(4, round(self.size / 75))

    def _tree_geometry(self, view: _View) -> tuple[int, int, int, int]:
        """Pixel radii of a tree: its disc, the circle its fruit sit on, a fruit dot, and a ring around all."""
        radius = max(self._tree_px, round(self.config.eat_radius * view.scale))
        ring = radius + max(3, radius // 2)
        dot = max(2, radius // 3)
        return radius, ring, dot, ring + dot + 3

    # ------------------------------------------------------------------ layers

    def _draw_ground(self, pygame: Any, surface: Any, view: _View) -> None:
        """Ground, a grid every GRID_SPACING world units, and the arena wall."""
        arena = self.config.arena_radius
        surface.fill(ARENA_COLOR if arena is None else OUTSIDE_COLOR)
        if arena is not None:
            center, radius = _pixels(view(np.zeros(2))), round(arena * view.scale)
            pygame.draw.circle(surface, ARENA_COLOR, center, radius)
        low, high = view.to_world(np.array([0.0, self.size])), view.to_world(np.array([self.size, 0.0]))  # (2,) corners
        for axis in (0, 1):
            for value in np.arange(math.ceil(low[axis] / GRID_SPACING), math.floor(high[axis] / GRID_SPACING) + 1):
                ends = np.array([low, high], dtype=np.float64)  # (2, 2)
                ends[:, axis] = value * GRID_SPACING
                if arena is not None:  # only inside the disc
                    half = math.sqrt(max(arena ** 2 - ends[0, axis] ** 2, 0.0))
                    ends[:, 1 - axis] = (-half, half)
                start, end = _pixels(view(ends))
                pygame.draw.line(surface, GRID_COLOR, start, end, 1)
        if arena is not None:
            pygame.draw.circle(surface, WALL_COLOR, center, radius, 2)

    def _draw_senses(self, pygame: Any, surface: Any, view: _View, agent: np.ndarray, heading: np.ndarray) -> None:
        """The sight cone (a translucent wedge) and the smell radius (a faint ring)."""
        layer = pygame.Surface((self.size, self.size), pygame.SRCALPHA)
        half_angle = math.acos(self.config.sight_cos)
        angles = math.atan2(heading[1], heading[0]) + np.linspace(-half_angle, half_angle, 33)  # (33,)
        arc = agent + self.config.sight_distance * np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (33, 2)
        _draw_sight_wedge(pygame, layer, _pixels(view(np.concatenate([agent[None], arc]))))
        _draw_smell_ring(pygame, layer, _pixels(view(agent)), max(1, round(self.config.smell_distance * view.scale)))
        surface.blit(layer, (0, 0))

    def _draw_trail(self, pygame: Any, surface: Any, view: _View, trail: np.ndarray) -> None:
        if len(trail) >= 2:
            _draw_polyline(pygame, surface, _pixels(view(trail)))

    def _draw_trees(self, pygame: Any, surface: Any, view: _View, world: SimpleNamespace) -> None:
        """Discs colored by fruit kind (poison: thick black ring and an X), one dot per fruit."""
        centers = view(world.tree_position)  # (T, 2)
        kinds, poisonous, fruit = world.tree_kind, world.tree_poisonous, world.tree_fruit  # (T,)
        radius, ring, dot, _ = self._tree_geometry(view)  # fruit sit on the circle of radius ring
        # fruit slots: angles clockwise from 12 o'clock, evenly spaced for max_fruit fruit
        slots = np.pi / 2 - 2 * np.pi * np.arange(self.config.max_fruit) / max(self.config.max_fruit, 1)
        visible = np.all((centers > -ring - dot) & (centers < self.size + ring + dot), axis=1)  # (T,)
        for t in np.flatnonzero(visible):
            color = KIND_COLORS[kinds[t]]
            _draw_tree_marker(pygame, surface, _pixels(centers[t]), radius, color, bool(poisonous[t]))
            for angle in slots[:fruit[t]]:
                _draw_fruit(pygame, surface, _pixels(centers[t] + ring * np.array([math.cos(angle), -math.sin(angle)])),
                            dot, color)

    def _draw_eat_marks(self, pygame: Any, surface: Any, view: _View, world: SimpleNamespace,
                        marks: list[_EatMark]) -> None:
        """A burst around each tree eaten from lately, shrinking with the steps since."""
        radius, _, _, _ = self._tree_geometry(view)
        for mark in marks:
            length = 1.5 * radius * (1.0 - (world.steps - mark.step) / EAT_MARK_STEPS)
            _draw_eat_mark(pygame, surface, view(world.tree_position[mark.tree]), radius + 2, max(length, 2.0),
                           mark.poisoned)

    def _draw_agent(self, pygame: Any, surface: Any, view: _View, agent: np.ndarray, heading: np.ndarray) -> None:
        """A triangle pointing along the heading."""
        length = max(8.0, self.size / 36)  # pixels from center to tip
        forward = np.array([heading[0], -heading[1]]) / max(float(np.hypot(*heading)), 1e-12)  # screen y is down
        side = np.array([-forward[1], forward[0]])
        center = view(agent)
        corners = [center + length * forward,
                   center - 0.6 * length * forward + 0.6 * length * side,
                   center - 0.3 * length * forward,
                   center - 0.6 * length * forward - 0.6 * length * side]
        points = _pixels(np.array(corners))
        pygame.draw.polygon(surface, AGENT_COLOR, points)
        pygame.draw.polygon(surface, (255, 255, 255), points, 2)
        pygame.draw.polygon(surface, OUTLINE_COLOR, points, 1)

    def _draw_shape(self, pygame: Any, surface: Any, view: _View, overlay: Point | Circle | Segment | Text) -> None:
        if isinstance(overlay, Point):
            pygame.draw.circle(surface, overlay.color, _pixels(view(overlay.xy)), overlay.radius_px)
        elif isinstance(overlay, Circle):
            center, radius = view(overlay.center), overlay.radius * view.scale
            gap = float(np.hypot(*(center - self.size / 2)))  # distance to the frame center, pixels
            if abs(gap - radius) <= self.size:  # else the ring misses the frame (half-diagonal < size)
                pygame.draw.circle(surface, overlay.color, _pixels(center), max(1, round(radius)), overlay.width_px)
        elif isinstance(overlay, Segment):
            pygame.draw.line(surface, overlay.color, _pixels(view(overlay.start)), _pixels(view(overlay.end)),
                             overlay.width_px)
        else:
            image = self._font(pygame, self._text_px).render(overlay.text, True, overlay.color)
            surface.blit(image, _pixels(view(overlay.xy)))

    def _draw_heat_map(self, pygame: Any, surface: Any, view: _View, heat: HeatMap) -> None:
        """Each frame pixel whose center lies in a cell takes that cell's color (nearest cell)."""
        xmin, xmax, ymin, ymax = heat.extent
        (left, top), (right, bottom) = view(np.array([[xmin, ymax], [xmax, ymin]]))
        cols = np.arange(max(0, math.floor(left)), min(self.size, math.ceil(right)))
        rows = np.arange(max(0, math.floor(top)), min(self.size, math.ceil(bottom)))
        if len(cols) == 0 or len(rows) == 0:
            return
        height, width = heat.values.shape
        x = view.to_world(np.stack([cols + 0.5, np.zeros_like(cols)], axis=-1))[:, 0]  # (w,)
        y = view.to_world(np.stack([np.zeros_like(rows), rows + 0.5], axis=-1))[:, 1]  # (h,)
        j = np.floor((x - xmin) / (xmax - xmin) * width).astype(np.int64)  # (w,)
        i = np.floor((y - ymin) / (ymax - ymin) * height).astype(np.int64)  # (h,)
        inside = ((i >= 0) & (i < height))[:, None] & ((j >= 0) & (j < width))[None, :]  # (h, w)
        rgba = heat.rgba()[np.clip(i, 0, height - 1)][:, np.clip(j, 0, width - 1)]  # (h, w, 4)
        rgba[..., 3] *= inside
        image = pygame.image.frombuffer(np.ascontiguousarray(rgba).tobytes(), (len(cols), len(rows)), "RGBA")
        surface.blit(image, (int(cols[0]), int(rows[0])))

    def _panel(self, pygame: Any, surface: Any, rect: tuple[int, int, int, int]) -> None:
        layer = pygame.Surface(rect[2:], pygame.SRCALPHA)
        layer.fill(PANEL_COLOR)
        surface.blit(layer, rect[:2])
        pygame.draw.rect(surface, (150, 150, 150), rect, 1)

    def _draw_hud(self, pygame: Any, surface: Any, world: SimpleNamespace, episode: int | None) -> None:
        """Top left: health bar, episode (if given), step, fruit and poison eaten, goal (if any)."""
        font = self._font(pygame, self._text_px)
        line = font.get_linesize()
        pad = max(4, self.size // 100)
        health = float(world.health)
        fraction = min(max(health / self.config.max_health, 0.0), 1.0)
        lines = [f"health {health:.0f} / {self.config.max_health:.0f}"]
        lines += [] if episode is None else [f"episode {episode}"]
        lines += [f"step {int(world.steps)}", f"fruit {int(world.fruit_eaten)}   poison {int(world.poison_eaten)}"]
        if world.goal_tree >= 0:
            lines.append(f"goal: {self.vocabulary.words[world.tree_name[world.goal_tree]]}")
        images = [font.render(text, True, TEXT_COLOR) for text in lines]
        bar_width = max(image.get_width() for image in images)
        bar_height = max(6, line // 2)
        self._panel(pygame, surface, (pad, pad, bar_width + 2 * pad, bar_height + len(lines) * line + 3 * pad))
        bar = pygame.Rect(2 * pad, 2 * pad, bar_width, bar_height)
        health_color = (round(220 * (1 - fraction)), round(180 * fraction), 40)  # red -> green
        pygame.draw.rect(surface, (210, 210, 210), bar)
        pygame.draw.rect(surface, health_color, (bar.x, bar.y, round(bar_width * fraction), bar_height))
        pygame.draw.rect(surface, OUTLINE_COLOR, bar, 1)
        for k, image in enumerate(images):
            surface.blit(image, (2 * pad, bar.bottom + pad + k * line))

    def _draw_legend(self, pygame: Any, surface: Any, world: SimpleNamespace) -> None:
        """The fruit kinds in this world, drawn as on the trees: edible top right, poisonous bottom right."""
        present = np.unique(world.tree_kind)
        poisonous = self.vocabulary.poisonous
        font = self._font(pygame, max(12, self._text_px - 2))
        line = font.get_linesize() + 2
        pad = max(4, self.size // 100)
        for title, kinds, at_top in (("edible", present[~poisonous[present]], True),
                                     ("poisonous", present[poisonous[present]], False)):
            if len(kinds) == 0:
                continue
            images = [font.render(title, True, TEXT_COLOR)] + [font.render(self.vocabulary.words[k], True, TEXT_COLOR)
                                                               for k in kinds]
            width = max(image.get_width() for image in images) + line + 3 * pad
            height = len(images) * line + 2 * pad
            left, top = self.size - pad - width, pad if at_top else self.size - pad - height
            self._panel(pygame, surface, (left, top, width, height))
            surface.blit(images[0], (left + pad, top + pad + (line - images[0].get_height()) // 2))
            for k, (kind, image) in enumerate(zip(kinds, images[1:]), start=1):
                middle = top + pad + k * line + line // 2
                _draw_tree_marker(pygame, surface, (left + pad + line // 2, middle), line // 2 - 1,
                                  KIND_COLORS[kind], bool(poisonous[kind]))
                surface.blit(image, (left + 2 * pad + line, middle - image.get_height() // 2))

    def _draw_key(self, pygame: Any, surface: Any, goal: bool) -> None:
        """Bottom left: each mark of the frame drawn small, with what it means."""
        font = self._font(pygame, max(12, self._text_px - 2))
        line = font.get_linesize() + 2
        pad = max(4, self.size // 100)
        half = line // 2 - 1  # icon half-width, pixels
        entries = [("sight", _key_sight), ("smell radius", _key_smell), ("fruit on a tree", _key_fruit),
                   ("trail", _key_trail), ("ate fruit", _key_ate_fruit), ("ate poison", _key_ate_poison)]
        entries += [("goal", _key_goal)] if goal else []
        images = [font.render(label, True, TEXT_COLOR) for label, _ in entries]
        width = max(image.get_width() for image in images) + line + 3 * pad
        height = len(images) * line + 2 * pad
        left, top = pad, self.size - pad - height
        self._panel(pygame, surface, (left, top, width, height))
        for k, ((_, icon), image) in enumerate(zip(entries, images)):
            middle = top + pad + k * line + line // 2
            icon(pygame, surface, (left + pad + line // 2, middle), half)
            surface.blit(image, (left + 2 * pad + line, middle - image.get_height() // 2))


def _draw_tree_marker(pygame: Any, surface: Any, center: list, radius: int, color: Color, poisonous: bool) -> None:
    """A disc of the fruit kind's color; poisonous: a thick black ring and a black X."""
    pygame.draw.circle(surface, color, center, radius)
    if not poisonous:
        pygame.draw.circle(surface, OUTLINE_COLOR, center, radius, 1)
        return
    pygame.draw.circle(surface, POISON_COLOR, center, radius + 1, max(2, radius // 3))
    arm = round(radius * 0.55)
    x, y = center
    pygame.draw.line(surface, POISON_COLOR, (x - arm, y - arm), (x + arm, y + arm), 2)
    pygame.draw.line(surface, POISON_COLOR, (x - arm, y + arm), (x + arm, y - arm), 2)


def _draw_fruit(pygame: Any, surface: Any, center: list, radius: int, color: Color) -> None:
    """One fruit: a dot of the kind's color, outlined."""
    pygame.draw.circle(surface, color, center, radius)
    pygame.draw.circle(surface, OUTLINE_COLOR, center, radius, 1)


def _draw_sight_wedge(pygame: Any, layer: Any, points: list) -> None:
    """The sight cone: a translucent wedge with a stronger edge (``layer`` has per-pixel alpha)."""
    pygame.draw.polygon(layer, SIGHT_COLOR, points)
    pygame.draw.polygon(layer, SIGHT_COLOR[:3] + (160,), points, 1)


def _draw_smell_ring(pygame: Any, layer: Any, center: list, radius: int) -> None:
    """The smell radius: a faint ring (``layer`` has per-pixel alpha)."""
    pygame.draw.circle(layer, SMELL_COLOR, center, radius, 1)


def _draw_polyline(pygame: Any, surface: Any, points: list) -> None:
    """The trail: a polyline through past agent positions."""
    pygame.draw.lines(surface, TRAIL_COLOR, False, points, 2)


def _draw_eat_mark(pygame: Any, surface: Any, center: np.ndarray, inner: float, length: float,
                   poisoned: bool) -> None:
    """A burst of eight rays from ``inner`` pixels off ``center``: edible, green with long rays in a
    "+"; poisonous, red outlined black with long rays in an "x"."""
    width = max(1, round(length / 6))
    for k in range(8):
        angle = k * math.pi / 4 + (math.pi / 4 if poisoned else 0.0)
        direction = np.array([math.cos(angle), -math.sin(angle)])
        ends = _pixels(center + np.outer([inner, inner + length * (1.0 if k % 2 == 0 else 0.5)], direction))
        if poisoned:
            pygame.draw.line(surface, POISON_COLOR, *ends, width + 2)
        pygame.draw.line(surface, POISON_MARK_COLOR if poisoned else EDIBLE_MARK_COLOR, *ends, width)


def _draw_goal_marker(pygame: Any, surface: Any, center: list, radius: int) -> None:
    """The goal: a double ring of ``radius`` pixels and a pennant on a pole above it."""
    x, y = center
    width = 2 if radius >= 8 else 1
    outer = radius + width + 1
    pygame.draw.circle(surface, GOAL_COLOR, center, radius, width)
    pygame.draw.circle(surface, GOAL_COLOR, center, outer, 1)
    top, flap = y - outer - radius, max(1, radius // 3)
    pygame.draw.line(surface, GOAL_COLOR, (x, y - outer), (x, top), width)
    pygame.draw.polygon(surface, GOAL_COLOR, [(x, top), (x + max(3, radius), top + flap), (x, top + 2 * flap)])


# Key icons: each draws its mark, as in the world but small, within ``half`` pixels of ``center``.


def _translucent_icon(pygame: Any, surface: Any, center: tuple[int, int], half: int, draw) -> None:
    """Draw ``draw(layer, half)`` on a (2 half + 1)-pixel square with alpha, centered at ``center``."""
    layer = pygame.Surface((2 * half + 1, 2 * half + 1), pygame.SRCALPHA)
    draw(layer, half)
    surface.blit(layer, (center[0] - half, center[1] - half))


def _key_sight(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    angles = np.linspace(-0.45, 0.45, 9)  # radians about the +x axis
    arc = np.stack([2 * half * np.cos(angles), half - 2 * half * np.sin(angles)], axis=-1)  # apex at (0, half)
    points = _pixels(np.concatenate([[[0.0, half]], arc]))
    _translucent_icon(pygame, surface, center, half, lambda layer, _: _draw_sight_wedge(pygame, layer, points))


def _key_smell(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    _translucent_icon(pygame, surface, center, half, lambda layer, h: _draw_smell_ring(pygame, layer, (h, h), h))


def _key_fruit(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    _draw_fruit(pygame, surface, center, max(2, half // 2), KEY_FRUIT_COLOR)


def _key_trail(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    x, y = center
    _draw_polyline(pygame, surface, [(x - half, y + half // 2), (x - half // 3, y - half // 2),
                                     (x + half // 3, y + half // 2), (x + half, y - half // 2)])


def _key_ate_fruit(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    _draw_eat_mark(pygame, surface, np.asarray(center, np.float64), 1.0, max(half - 1.0, 2.0), False)


def _key_ate_poison(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    _draw_eat_mark(pygame, surface, np.asarray(center, np.float64), 1.0, max(half - 1.0, 2.0), True)


def _key_goal(pygame: Any, surface: Any, center: tuple[int, int], half: int) -> None:
    radius = max(2, (half - 1) // 2)
    _draw_goal_marker(pygame, surface, (center[0], center[1] + half - radius - 2), radius)


def _new_episode(last: _History, world: SimpleNamespace) -> bool:
    """Steps or eat counters went down, or the trees moved: ``world`` is not a later step of ``last``."""
    return (world.steps < last.steps or world.fruit_eaten < last.fruit_eaten or world.poison_eaten < last.poison_eaten
            or world.tree_position.shape != last.tree_position.shape
            or not np.array_equal(world.tree_position, last.tree_position))


def _new_eats(last: _History, world: SimpleNamespace) -> list[_EatMark]:
    """The eats between ``last`` and ``world``: counters tell that (and whether poison), fruit drops tell where."""
    edible, poison = int(world.fruit_eaten) - last.fruit_eaten, int(world.poison_eaten) - last.poison_eaten
    if edible + poison == 0:
        return []
    change = world.tree_fruit.astype(np.int64) - last.tree_fruit  # (T,)
    trees = np.flatnonzero(change < 0)
    if len(trees) == 0:
        trees = _eat_hidden_by_regrowth(last, world, change)
    return [_EatMark(int(t), bool(world.tree_poisonous[t]) if edible and poison else poison > 0, int(world.steps))
            for t in trees]


def _eat_hidden_by_regrowth(last: _History, world: SimpleNamespace, change: np.ndarray) -> list[int]:
    """Regrowth in the eat's step undid the drop: the eaten tree is the one nearest the agent among
    those that had fruit and gained least."""
    had = last.tree_fruit > 0
    if not had.any():
        return []
    least = had & (change == change[had].min())
    distance = np.hypot(*(world.tree_position - world.agent_position).T)  # (T,)
    return [int(np.argmin(np.where(least, distance, np.inf)))]


_WORLD_FIELDS = ("agent_position", "heading", "health", "steps", "fruit_eaten", "poison_eaten",
                 "tree_position", "tree_kind", "tree_name", "tree_poisonous", "tree_fruit", "goal_tree")


def _one_world(state: Any, index: int) -> SimpleNamespace:
    """World ``index`` of a batched state as numpy arrays without the batch axis (copies one row only)."""
    world = SimpleNamespace(**{name: to_numpy(getattr(state, name)[index:index + 1])[0] for name in _WORLD_FIELDS})
    trees = len(world.tree_kind)
    if not -1 <= world.goal_tree < trees:
        raise ValueError(f"goal_tree: expected -1 (none) or a tree in [0, {trees}), got {world.goal_tree}")
    return world


def _check_episode(episode: int | None) -> int | None:
    return None if episode is None else checks.integer(episode, "episode", low=0)


def _check_trail(trail: Any) -> np.ndarray | None:
    if trail is None:
        return None
    try:
        points = np.asarray(to_numpy(trail) if hasattr(trail, "detach") else trail, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"trail: expected (N, 2) world positions, got {type(trail).__name__}") from e
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"trail: expected (N, 2) world positions, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("trail: expected finite world positions, got NaN or inf")
    return points


def _check_overlays(overlays: Sequence[Overlay]) -> Sequence[Overlay]:
    if not isinstance(overlays, (list, tuple)):
        raise TypeError(f"overlays: expected a list or tuple of overlay primitives, got {type(overlays).__name__}")
    for k, overlay in enumerate(overlays):
        if not isinstance(overlay, OVERLAY_TYPES):
            names = ", ".join(t.__name__ for t in OVERLAY_TYPES)
            raise TypeError(f"overlays: item {k} is a {type(overlay).__name__}, expected one of {names}")
    return overlays
