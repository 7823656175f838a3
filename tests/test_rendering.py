"""Render smoke tests: frames, tree placement and colors, overlays, eat marks, goal, key, pickling,
determinism, backends, video."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # before pygame is imported anywhere
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import copy
import dataclasses
import pickle
import subprocess
import sys
import types

import gymnasium
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from treeworld.config import WorldConfig
from treeworld.envs.rendering import (AGENT_COLOR, EAT_MARK_STEPS, EDIBLE_MARK_COLOR, GOAL_COLOR, KIND_COLORS,
                                      POISON_MARK_COLOR, TRAIL_COLOR, Renderer)
from treeworld.envs.video import encode_video
from treeworld.overlay import Circle, HeatMap, Point, Segment, Text
from treeworld.vocabulary import EDIBLE_KINDS, Vocabulary
from treeworld.world import build_world, sample_world, stack, step

torch.set_num_threads(1)

CONFIG = WorldConfig()
VOCABULARY = Vocabulary.for_config(CONFIG)
EAT = np.array([[0.0, 0.0, 1.0]], dtype=np.float32)
STAY = np.zeros((1, 3), dtype=np.float32)


def make_state(config=CONFIG, seed=0):
    return sample_world(config, VOCABULARY, np.random.default_rng(seed), np.random.default_rng(seed))


def grid_state():
    """25 trees on a grid 120 units apart, every kind present, the agent between trees at (60, 60)."""
    state = make_state()
    xs = np.arange(-240.0, 241.0, 120.0)
    state.tree_position[0] = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    state.tree_kind[0] = np.arange(25) % 16
    state.tree_poisonous[0] = state.tree_kind[0] >= len(EDIBLE_KINDS)
    state.tree_fruit[0] = np.arange(25) % 6
    state.agent_position[0] = (60.0, 60.0)
    state.heading[0] = (0.0, 1.0)
    return state


def eat_world(config=CONFIG, agent=(4.0, 0.0)):
    """Five trees: an apple tree at (0, 0) next to the agent, a deadly nightshade at (60, 0), three far away."""
    positions = [(0.0, 0.0), (60.0, 0.0), (-150.0, 100.0), (150.0, -150.0), (200.0, 200.0)]
    return build_world(config, VOCABULARY, positions, [0, 12, 3, 5, 14], VOCABULARY.name_offset + np.arange(5),
                       [3, 3, 2, 5, 1], agent_position=agent)


def with_goal(state, goal):
    """A duck-typed copy of ``state`` with a ``goal_tree`` field."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return types.SimpleNamespace(**{**fields, "goal_tree": np.array([goal])})


def changed_pixels(first, second):
    """(rows, cols) of the pixels where two frames differ."""
    return np.nonzero((first != second).any(axis=-1))


def near(renderer, state, xy, half):
    """Frame index slices of the square of ``half`` pixels around world position ``xy``."""
    x, y = np.rint(renderer.screen_position(state, xy)).astype(int)
    return slice(y - half, y + half + 1), slice(x - half, x + half + 1)


def has_color(pixels, color):
    return bool((pixels == color).all(axis=-1).any())


@pytest.fixture(scope="module")
def renderer():
    return Renderer(CONFIG, VOCABULARY)


def test_frame_is_rgb_uint8_and_not_blank(renderer):
    frame = renderer.render_frame(make_state())
    assert frame.shape == (600, 600, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 50
    background = frame[300 + 200, 300]  # inside the arena, away from the trees' centre of mass
    x, y = np.rint(renderer.screen_position(make_state(), make_state().agent_position[0])).astype(int)
    agent = frame[y - 5:y + 6, x - 5:x + 6].reshape(-1, 3)
    assert (agent != background).any(axis=1).mean() > 0.5
    assert (agent == AGENT_COLOR).all(axis=1).any()


def test_trees_are_drawn_at_their_screen_positions_in_their_kind_colors(renderer):
    state = grid_state()
    frame = renderer.render_frame(state)
    centers = np.rint(renderer.screen_position(state, state.tree_position[0])).astype(int)  # (T, 2)
    for (x, y), kind, poisonous in zip(centers, state.tree_kind[0], state.tree_poisonous[0]):
        if poisonous:  # a black X over the kind's color
            assert tuple(frame[y, x]) == (0, 0, 0)
            assert tuple(frame[y - 4, x]) == KIND_COLORS[kind]
        else:
            assert tuple(frame[y, x]) == KIND_COLORS[kind]


def test_fruit_trail_and_heading_change_the_frame(renderer):
    state = grid_state()
    frame = renderer.render_frame(state)
    state.tree_fruit[0] = 0
    assert (renderer.render_frame(state) != frame).any()
    assert (renderer.render_frame(state, trail=[(0, 0), (30, 60), (60, 60)]) != renderer.render_frame(state)).any()
    state.heading[0] = (1.0, 0.0)
    assert (renderer.render_frame(state) != frame).any()


@pytest.mark.parametrize("overlay", [
    Point((-180.0, -180.0), color=(255, 0, 255), radius_px=4),
    Circle((-180.0, -180.0), 30.0, color=(255, 0, 255), width_px=2),
    Segment((-200.0, -200.0), (-160.0, -150.0), color=(255, 0, 255)),
    Text((-200.0, -180.0), "belief", color=(255, 0, 255)),
    HeatMap(np.arange(12.0).reshape(3, 4), extent=(-220.0, -140.0, -220.0, -140.0)),
])
def test_each_overlay_changes_the_frame(renderer, overlay):
    state = grid_state()
    assert (renderer.render_frame(state, overlays=[overlay]) != renderer.render_frame(state)).any()


def test_overlays_share_the_world_to_screen_transform(renderer):
    state = grid_state()
    frame = renderer.render_frame(state, overlays=[Point((-180.0, -180.0), color=(255, 0, 255), radius_px=4)])
    x, y = np.rint(renderer.screen_position(state, (-180.0, -180.0))).astype(int)
    assert tuple(frame[y, x]) == (255, 0, 255)


def test_heat_map_rows_grow_upwards_and_nan_is_transparent(renderer):
    state = grid_state()
    heat = HeatMap(np.array([[0.0, np.nan], [1.0, np.nan]]), extent=(-220.0, -140.0, -220.0, -140.0), alpha=1.0)
    frame = renderer.render_frame(state, overlays=[heat])
    plain = renderer.render_frame(state)
    (low_x, low_y), (high_x, high_y), (nan_x, nan_y) = np.rint(renderer.screen_position(
        state, np.array([[-200.0, -200.0], [-200.0, -160.0], [-160.0, -200.0]]))).astype(int)
    assert tuple(frame[low_y, low_x]) == (40, 60, 220)  # blue: values[0, 0] = 0 at ymin
    assert tuple(frame[high_y, high_x]) == (220, 40, 40)  # red: values[1, 0] = 1 above it
    assert tuple(frame[nan_y, nan_x]) == tuple(plain[nan_y, nan_x])
    assert heat.rgba().shape == (2, 2, 4) and heat.rgba()[0, 1, 3] == 0


@pytest.mark.parametrize("agent, tree, color, other", [
    ((4.0, 0.0), 0, EDIBLE_MARK_COLOR, POISON_MARK_COLOR),
    ((58.0, 0.0), 1, POISON_MARK_COLOR, EDIBLE_MARK_COLOR),
])
def test_eat_is_marked_at_the_eaten_tree_edible_and_poison_alike_but_distinct(agent, tree, color, other):
    state = eat_world(agent=agent)
    renderer = Renderer(CONFIG, VOCABULARY)
    renderer.render_frame(state)
    after, events = step(CONFIG, state, EAT)
    assert bool(events.ate[0]) and bool(events.poisoned[0]) == (tree == 1)
    marked, plain = renderer.render_frame(after), Renderer(CONFIG, VOCABULARY).render_frame(after)  # no history
    rows, cols = changed_pixels(marked, plain)
    x, y = renderer.screen_position(after, after.tree_position[0, tree])
    assert len(rows) > 20 and np.abs(cols - x).max() <= 30 and np.abs(rows - y).max() <= 30
    region = marked[near(renderer, after, after.tree_position[0, tree], 30)]
    assert has_color(region, color) and not has_color(region, other)


def test_eat_hidden_by_regrowth_in_the_same_step_is_marked_at_the_eaten_tree():
    config = WorldConfig(regrow_every=1)  # the eaten tree regrows at once: its fruit count does not drop
    state = eat_world(config)
    renderer = Renderer(config, VOCABULARY)
    renderer.render_frame(state)
    after, _ = step(config, state, EAT)
    assert after.fruit_eaten[0] == 1 and after.tree_fruit[0, 0] == state.tree_fruit[0, 0]
    rows, cols = changed_pixels(renderer.render_frame(after), Renderer(config, VOCABULARY).render_frame(after))
    x, y = renderer.screen_position(after, after.tree_position[0, 0])
    assert len(rows) > 20 and np.abs(cols - x).max() <= 30 and np.abs(rows - y).max() <= 30


def test_eat_marks_shrink_and_vanish_after_eat_mark_steps():
    state = eat_world()
    renderer = Renderer(CONFIG, VOCABULARY)
    renderer.render_frame(state)
    state, _ = step(CONFIG, state, EAT)
    changed = []
    for _ in range(EAT_MARK_STEPS + 1):
        frame, plain = renderer.render_frame(state), Renderer(CONFIG, VOCABULARY).render_frame(state)
        changed.append(len(changed_pixels(frame, plain)[0]))
        state, _ = step(CONFIG, state, STAY)
    assert min(changed[:-1]) > 0 and changed[-1] == 0
    assert changed[0] > changed[EAT_MARK_STEPS - 1]


def moved_trees(state):
    return dataclasses.replace(state, tree_position=state.tree_position + 50.0, tree_offset=state.tree_offset + 50.0)


def quiet_steps(state):
    for _ in range(5):
        state, _ = step(CONFIG, state, STAY)
    return state


@pytest.mark.parametrize("restart", [
    lambda first, after: first,  # steps went down
    lambda first, after: moved_trees(after),  # same step and counters, other trees
    lambda first, after: quiet_steps(first),  # steps went up, counters down
], ids=["steps-down", "trees-moved", "counters-down"])
def test_new_episode_clears_eat_marks(restart):
    first = eat_world()
    renderer = Renderer(CONFIG, VOCABULARY)
    renderer.render_frame(first)
    after, _ = step(CONFIG, first, EAT)
    renderer.render_frame(after)
    state = restart(first, after)
    np.testing.assert_array_equal(renderer.render_frame(state), Renderer(CONFIG, VOCABULARY).render_frame(state))


def test_eat_marks_are_kept_per_world_index():
    batch = stack([eat_world(agent=(4.0, 0.0)), eat_world(agent=(58.0, 0.0))])
    renderer = Renderer(CONFIG, VOCABULARY)
    renderer.render_frame(batch, index=0)
    renderer.render_frame(batch, index=1)
    after, _ = step(CONFIG, batch, np.repeat(EAT, 2, axis=0))
    for index, tree, color in ((0, 0, EDIBLE_MARK_COLOR), (1, 1, POISON_MARK_COLOR)):
        region = near(renderer, after, after.tree_position[index, tree], 30)
        assert has_color(renderer.render_frame(after, index=index)[region], color)


def test_episode_number_shows_in_the_hud(renderer):
    state = make_state()
    plain = renderer.render_frame(state)
    third, fourth = renderer.render_frame(state, episode=3), renderer.render_frame(state, episode=np.int64(4))
    for frame in (third, fourth):
        rows, cols = changed_pixels(frame, plain)
        assert len(rows) > 0 and rows.max() < 150 and cols.max() < 200  # the HUD, top left
    assert (third != fourth).any()


def test_goal_tree_gets_a_ring_a_hud_line_and_a_key_entry(renderer):
    state = grid_state()
    plain = renderer.render_frame(with_goal(state, -1))
    np.testing.assert_array_equal(plain, renderer.render_frame(state))  # -1: no goal
    frame = renderer.render_frame(with_goal(state, 3))
    assert not has_color(plain, GOAL_COLOR)
    assert has_color(frame[near(renderer, state, state.tree_position[0, 3], 45)], GOAL_COLOR)
    assert has_color(frame[300:, :150], GOAL_COLOR)  # the key, bottom left
    other = renderer.render_frame(with_goal(state, 4))
    assert (frame[:150, :200] != other[:150, :200]).any()  # "goal: <name>" names the tree
    with pytest.raises(ValueError, match=r"goal_tree: expected -1 \(none\) or a tree in \[0, 25\)"):
        renderer.render_frame(with_goal(state, 25))


def test_key_shows_trail_and_eat_marks_bottom_left(renderer):
    frame = renderer.render_frame(make_state())  # no trail, no eats: these colors come from the key only
    for color in (TRAIL_COLOR, EDIBLE_MARK_COLOR, POISON_MARK_COLOR):
        rows, cols = np.nonzero((frame == color).all(axis=-1))
        assert len(rows) > 0 and rows.min() > 300 and cols.max() < 150


def test_renderer_pickles_and_deep_copies_after_rendering():
    renderer = Renderer(CONFIG, VOCABULARY, size=200, render_fps=1000)
    state = eat_world()
    renderer.render_frame(state)
    state, _ = step(CONFIG, state, EAT)
    renderer.show(renderer.render_frame(state))  # fonts, window and clock exist now
    copies = [pickle.loads(pickle.dumps(renderer)), copy.deepcopy(renderer)]
    renderer.close()
    state, _ = step(CONFIG, state, STAY)
    frame = renderer.render_frame(state)
    assert (frame != Renderer(CONFIG, VOCABULARY, size=200).render_frame(state)).any()  # the eat mark
    for twin in copies:
        assert (twin.size, twin.render_fps, twin.config) == (200, 1000, CONFIG)
        np.testing.assert_array_equal(twin.render_frame(state), frame)


def test_same_state_gives_identical_frames():
    state = make_state(seed=3)
    trail = np.cumsum(np.random.default_rng(0).normal(size=(50, 2)), axis=0)
    overlays = [Point((10.0, 10.0)), HeatMap(np.eye(4), extent=(-50.0, 50.0, -50.0, 50.0))]
    first = Renderer(CONFIG, VOCABULARY).render_frame(state, trail=trail, overlays=overlays)
    second = Renderer(CONFIG, VOCABULARY).render_frame(state, trail=trail, overlays=overlays)
    np.testing.assert_array_equal(first, second)


def test_torch_state_and_batch_index_render_like_numpy(renderer):
    states = [make_state(seed=1), make_state(seed=2)]
    expected = renderer.render_frame(states[1], trail=np.zeros((2, 2)))
    batch = stack(states)
    np.testing.assert_array_equal(renderer.render_frame(batch, index=1, trail=np.zeros((2, 2))), expected)
    np.testing.assert_array_equal(renderer.render_frame(batch.to("torch"), index=1, trail=torch.zeros(2, 2)), expected)


def test_open_plane_view_follows_the_agent():
    config = WorldConfig(arena_radius=None)
    renderer = Renderer(config, VOCABULARY, size=200)
    state = make_state(config)
    state.agent_position[0] = (1000.0, -2000.0)
    np.testing.assert_allclose(renderer.screen_position(state, state.agent_position[0]), (100.0, 100.0))
    frame = renderer.render_frame(state, trail=[(0.0, 0.0), (1000.0, -2000.0)], overlays=[Circle((0.0, 0.0), 1e6)])
    assert frame.shape == (200, 200, 3)


def test_render_module_imports_pygame_lazily():
    code = "import sys, treeworld.envs.rendering; assert 'pygame' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_pygame_raises_dependency_not_installed(renderer, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)  # makes `import pygame` raise ImportError
    with pytest.raises(gymnasium.error.DependencyNotInstalled, match="pip install pygame"):
        renderer.render_frame(make_state())


def test_show_and_close_with_the_dummy_video_driver():
    renderer = Renderer(CONFIG, VOCABULARY, size=100, render_fps=1000)
    renderer.show(renderer.render_frame(make_state()))
    renderer.close()
    with pytest.raises(ValueError, match=r"frame: expected a \(100, 100, 3\) uint8"):
        renderer.show(np.zeros((100, 100, 3), dtype=np.float32))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(index=2), ValueError, r"index: expected <= 0, got 2"),
    (dict(trail=np.zeros((3, 3))), ValueError, r"trail: expected \(N, 2\)"),
    (dict(trail=[(0.0, np.nan), (1.0, 1.0)]), ValueError, "trail: expected finite"),
    (dict(overlays=Point((0.0, 0.0))), TypeError, "overlays: expected a list or tuple"),
    (dict(overlays=[Point((0.0, 0.0)), "text"]), TypeError, "overlays: item 1 is a str"),
    (dict(episode=-1), ValueError, "episode: expected >= 0"),
    (dict(episode=True), TypeError, "episode: expected an int, got bool"),
    (dict(episode=2.0), TypeError, "episode: expected an int, got float"),
])
def test_render_frame_rejects_bad_arguments(renderer, kwargs, error, match):
    with pytest.raises(error, match=match):
        renderer.render_frame(make_state(), **kwargs)


def test_renderer_rejects_bad_settings():
    with pytest.raises(ValueError, match="size: expected >= 64"):
        Renderer(CONFIG, VOCABULARY, size=10)
    with pytest.raises(TypeError, match="render_fps: expected an int"):
        Renderer(CONFIG, VOCABULARY, render_fps=30.0)
    with pytest.raises(TypeError, match="config: expected a WorldConfig"):
        Renderer({}, VOCABULARY)


@pytest.mark.parametrize("make, match", [
    (lambda: HeatMap(np.zeros(5), extent=(0, 1, 0, 1)), r"values: expected a non-empty 2-D \(H, W\) array"),
    (lambda: HeatMap(np.zeros((2, 2)), extent=(1, 0, 0, 1)), "extent: expected finite xmin < xmax"),
    (lambda: HeatMap(np.zeros((2, 2)), extent=(0, 1)), "extent: expected four numbers"),
    (lambda: HeatMap(np.zeros((2, 2)), extent=(0, 1, 0, 1), alpha=2.0), "alpha: expected <= 1.0, got 2.0"),
    (lambda: HeatMap(np.zeros((2, 2)), extent=(0, 1, 0, 1), colormap="jet"), "colormap: expected one of"),
    (lambda: HeatMap(np.zeros((2, 2)), extent=(0, 1, 0, 1), vmin=1.0, vmax=0.0), "vmin: expected vmin < vmax"),
    (lambda: Point((0.0, 0.0, 0.0)), "xy: expected two finite world coordinates"),
    (lambda: Point((0.0, 0.0), color=(0, 0, 300)), r"color: expected \(r, g, b\) ints"),
    (lambda: Point((0.0, 0.0), radius_px=0), "radius_px: expected >= 1"),
    (lambda: Circle((0.0, 0.0), radius=-1.0), "radius: expected > 0"),
    (lambda: Segment((0.0, 0.0), (np.inf, 0.0)), "end: expected two finite world coordinates"),
    (lambda: Text((0.0, 0.0), "two\nlines"), "text: expected one line"),
])
def test_overlays_validate_their_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_overlay_positions_accept_arrays_and_tensors():
    assert Point(np.array([1, 2])).xy == (1.0, 2.0)
    assert Segment(torch.tensor([0.0, 1.0]), (2, 3)).start == (0.0, 1.0)


def distinct_frames(n, height, width):
    """n frames that differ (so no encoder merges them), with a few flat color blocks."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    for k in range(n):
        frames[k, :, : (k + 1) * width // (n + 1)] = (200, 40 * k, 90)
    return frames


@pytest.mark.parametrize("format", ["gif", "mp4"])
def test_encode_video_round_trips(format):
    frames = distinct_frames(5, 48, 64)
    data = encode_video(list(frames), fps=10, format=format)
    assert isinstance(data, bytes)
    plugin = "FFMPEG" if format == "mp4" else None
    decoded = iio.imread(data, extension=f".{format}", plugin=plugin, index=None)
    assert decoded.shape == (5, 48, 64, 3)
    assert np.abs(decoded.astype(int) - frames).mean() < 8


def test_encode_mp4_pads_odd_sizes_to_even():
    data = encode_video(distinct_frames(3, 33, 47), fps=5, format="mp4")
    assert iio.imread(data, extension=".mp4", plugin="FFMPEG", index=None).shape == (3, 34, 48, 3)


@pytest.mark.parametrize("frames, fps, format, error, match", [
    ([], 10, "gif", ValueError, "frames: expected at least one frame"),
    ([np.zeros((8, 8, 3), dtype=np.float32)], 10, "gif", ValueError, "frames: expected dtype uint8"),
    ([np.zeros((8, 8), dtype=np.uint8)], 10, "gif", ValueError, r"frames: expected \(H, W, 3\) rgb frames"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], 10, "gif", ValueError, "every frame of shape"),
    (np.zeros((8, 8, 3), dtype=np.uint8), 10, "gif", ValueError, r"frames: expected an \(N, H, W, 3\) array"),
    ([np.zeros((8, 8, 3), dtype=np.uint8)], 10, "avi", ValueError, "format: expected one of"),
    ([np.zeros((8, 8, 3), dtype=np.uint8)], 0, "gif", ValueError, "fps: expected >= 1"),
    ([np.zeros((8, 8, 3), dtype=np.uint8)], 2.5, "gif", TypeError, "fps: expected an int"),
])
def test_encode_video_rejects_bad_arguments(frames, fps, format, error, match):
    with pytest.raises(error, match=match):
        encode_video(frames, fps=fps, format=format)
