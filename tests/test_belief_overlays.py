"""Belief overlays (agents/belief_overlays.py): primitives, valence colors, the 2-sigma ring, drawing
on a real env frame at the right screen positions, empty memory, torch inputs, argument errors."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # before pygame is imported anywhere
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import treeworld.envs  # noqa: E402,F401  (registers the env ids)
from treeworld.agents.belief_overlays import (BELIEF_COLOR, EDIBLE_COLOR, MAP_UNIT_COLOR, POISON_COLOR,  # noqa: E402
                                              RECALLED_GOAL_COLOR, SIGMA_RING, TARGET_COLOR, TREE_RING_RADIUS,
                                              UNKNOWN_COLOR, belief_overlays, valence_colors)
from treeworld.envs.rendering import Renderer  # noqa: E402
from treeworld.overlay import Circle, Point, Segment, Text  # noqa: E402
from treeworld.vocabulary import Vocabulary  # noqa: E402

torch.set_num_threads(1)

TREES = np.array([[-150.0, 100.0], [120.0, -80.0], [60.0, 160.0]])
VALENCE = np.array([-1.0, 1.0, 0.2])
UNITS = np.array([[-200.0, -200.0], [-100.0, -200.0], [0.0, -200.0], [-200.0, -100.0]])
LINKS = np.array([[0, 1], [1, 2], [0, 3]])


def full(**kw):
    args = dict(position=np.array([10.0, 20.0]), sigma=15.0, trees=TREES, valence=VALENCE,
                valence_std=np.array([0.0, 0.0, 0.9]), map_units=UNITS, target=np.array([120.0, -80.0]),
                goal=np.array([-60.0, 150.0]), map_links=LINKS)
    return belief_overlays(**{**args, **kw})


def kinds(overlays):
    return [type(o).__name__ for o in overlays]


# ----------------------------------------------------------------------------- primitives

def test_primitive_types_counts_and_order():
    overlays = full(legend_at=(-250.0, 250.0))
    assert kinds(overlays) == (["Point"] * 4 + ["Segment"] * 3 + ["Circle"] * 3 + ["Circle", "Segment", "Segment"]
                               + ["Segment", "Point"] + ["Circle", "Point"] + ["Text"])
    units, links, trees = overlays[:4], overlays[4:7], overlays[7:10]
    assert [p.xy for p in units] == [tuple(xy) for xy in UNITS] and all(p.color == MAP_UNIT_COLOR for p in units)
    assert [(s.start, s.end) for s in links] == [(tuple(UNITS[i]), tuple(UNITS[j])) for i, j in LINKS]
    assert [c.center for c in trees] == [tuple(xy) for xy in TREES]
    assert all(c.radius == TREE_RING_RADIUS for c in trees)
    goal_ring, *cross = overlays[10:13]
    assert goal_ring.center == (-60.0, 150.0) and goal_ring.color == RECALLED_GOAL_COLOR
    for s in cross:  # the X crosses at the goal
        np.testing.assert_allclose(np.add(s.start, s.end) / 2, (-60.0, 150.0))
        assert s.color == RECALLED_GOAL_COLOR
    line, mark = overlays[13:15]
    assert (line.start, line.end, line.color) == ((10.0, 20.0), (120.0, -80.0), TARGET_COLOR)
    assert (mark.xy, mark.color) == ((120.0, -80.0), TARGET_COLOR)
    ring, dot = overlays[15:17]
    assert ring.center == dot.xy == (10.0, 20.0) and ring.color == dot.color == BELIEF_COLOR
    assert isinstance(overlays[-1], Text) and "\n" not in overlays[-1].text


def test_minimal_call_is_the_belief_alone():
    overlays = belief_overlays((1.0, 2.0), 3.0)
    assert kinds(overlays) == ["Circle", "Point"]


@pytest.mark.parametrize("sigma", [0.5, 7.0, 40.0])
def test_ring_radius_is_two_sigma(sigma):
    ring = next(o for o in belief_overlays((0.0, 0.0), sigma) if isinstance(o, Circle))
    assert SIGMA_RING == 2.0
    assert ring.radius == pytest.approx(2 * sigma)


def test_zero_sigma_leaves_the_ring_out():
    assert kinds(belief_overlays((0.0, 0.0), 0.0)) == ["Point"]


# ----------------------------------------------------------------------------- colors

def test_valence_colors_span_red_grey_green():
    red, grey, green = valence_colors([-1.0, 0.0, 1.0])
    assert (red, grey, green) == (POISON_COLOR, UNKNOWN_COLOR, EDIBLE_COLOR)
    assert red[0] > red[1] and green[1] > green[0]  # red end is red, green end is green


def test_high_std_is_grey_whatever_the_mean():
    assert valence_colors([-1.0, 1.0, 0.7], [1.0, 1.0, 3.0]) == [UNKNOWN_COLOR] * 3
    sure, unsure = valence_colors([1.0, 1.0], [0.0, 0.8])
    # an unsure edible tree lies between green and grey
    assert np.abs(np.subtract(unsure, UNKNOWN_COLOR)).sum() < np.abs(np.subtract(sure, UNKNOWN_COLOR)).sum()


def test_colors_are_monotone_in_valence():
    colors = np.array(valence_colors(np.linspace(-1.0, 1.0, 21)))  # (21, 3)
    redness = colors[:, 0] - colors[:, 1]
    assert np.all(np.diff(redness) <= 0) and redness[0] > 0 > redness[-1]


def test_tree_rings_take_the_valence_colors():
    trees = [o for o in full() if isinstance(o, Circle)][:3]
    assert [c.color for c in trees] == valence_colors(VALENCE, [0.0, 0.0, 0.9])
    assert trees[0].color == POISON_COLOR and trees[1].color == EDIBLE_COLOR


def test_missing_valence_is_unknown():
    overlays = belief_overlays((0.0, 0.0), 1.0, trees=TREES)
    assert [o.color for o in overlays if isinstance(o, Circle) and o.radius == TREE_RING_RADIUS] == [UNKNOWN_COLOR] * 3


# ----------------------------------------------------------------------------- empty memory, torch

@pytest.mark.parametrize("empty", [np.zeros((0, 2)), [], torch.zeros(0, 2)])
def test_empty_memory(empty):
    overlays = belief_overlays((0.0, 0.0), 2.0, trees=empty, valence=np.zeros(0), valence_std=np.zeros(0),
                               map_units=empty, map_links=np.zeros((0, 2), dtype=np.int64), target=None, goal=None)
    assert kinds(overlays) == ["Circle", "Point"]


def test_torch_inputs_match_numpy_inputs():
    args = dict(position=np.array([10.0, 20.0]), sigma=15.0, trees=TREES, valence=VALENCE,
                valence_std=np.array([0.0, 0.0, 0.9]), map_units=UNITS, target=np.array([120.0, -80.0]),
                goal=np.array([-60.0, 150.0]), map_links=LINKS)
    torch_args = {k: torch.as_tensor(v, dtype=torch.int64 if k == "map_links" else torch.float32)
                  for k, v in args.items()}
    torch_args["position"] = torch_args["position"].requires_grad_()  # a live graph is fine too
    expected = belief_overlays(**args)
    got = belief_overlays(**torch_args)
    assert kinds(got) == kinds(expected)
    for a, b in zip(got, expected):
        assert a.color == b.color
        for field in ("xy", "center", "start", "end", "radius"):
            if hasattr(a, field):
                np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw, error, name", [
    (dict(position=(1.0, 2.0, 3.0)), ValueError, "position"),
    (dict(position=(np.nan, 0.0)), ValueError, "position"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(sigma=np.inf), ValueError, "sigma"),
    (dict(trees=np.zeros((3, 3))), ValueError, "trees"),
    (dict(trees=np.zeros(3)), ValueError, "trees"),
    (dict(trees=np.full((3, 2), np.inf)), ValueError, "trees"),
    (dict(valence=np.zeros(2)), ValueError, "valence"),
    (dict(valence=np.array([0.0, 1.5, 0.0])), ValueError, "valence"),
    (dict(valence_std=np.array([0.0, -0.1, 0.0])), ValueError, "valence_std"),
    (dict(valence_std=np.zeros(4)), ValueError, "valence_std"),
    (dict(map_units=np.zeros((2, 3))), ValueError, "map_units"),
    (dict(map_links=np.array([[0, 4]])), ValueError, "map_links"),
    (dict(map_links=np.array([[0.0, 1.0]])), TypeError, "map_links"),
    (dict(target=(0.0, np.nan)), ValueError, "target"),
    (dict(goal=np.zeros(3)), ValueError, "goal"),
    (dict(legend_at=(0.0,)), ValueError, "legend_at"),
    (dict(tree_radius=0.0), ValueError, "tree_radius"),
    (dict(position="here"), TypeError, "position"),
])
def test_bad_input_raises_naming_the_argument(kw, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        full(**kw)


def test_valence_colors_checks_its_arguments():
    with pytest.raises(ValueError, match="^valence:"):
        valence_colors([2.0])
    with pytest.raises(ValueError, match="^valence_std:"):
        valence_colors([0.0, 0.0], [0.1])


# ----------------------------------------------------------------------------- a real frame

def _near(frame, xy, color, radius=1):
    """Whether ``color`` occurs within ``radius`` pixels of screen position ``xy`` in ``frame``."""
    x, y = np.rint(xy).astype(int)
    patch = frame[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1]
    return bool((patch == np.array(color, dtype=np.uint8)).all(axis=-1).any())


def _distance_to_segment(points, start, end):
    """(N, 2) points -> (N,) distances to the segment start-end (all in pixels)."""
    d = end - start
    t = np.clip(((points - start) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * d), axis=-1)


def test_overlays_change_the_env_frame_where_they_are_and_nowhere_else():
    env = gym.make("treeworld/TreeWorld-v0", render_mode="rgb_array")
    try:
        env.reset(seed=0)
        world = env.unwrapped
        state = world.state
        to_screen = Renderer(world.config, Vocabulary.for_config(world.config)).screen_position
        agent = state.agent_position[0].astype(np.float64)
        belief, sigma = agent + (40.0, 30.0), 20.0
        target, goal = agent + (-120.0, 90.0), agent + (110.0, -120.0)
        trees = np.array([agent + (-150.0, -60.0), agent + (150.0, 60.0), agent + (0.0, -170.0)])
        valence, std = np.array([-1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
        units = agent + np.array([[-60.0, 150.0], [0.0, 150.0]])

        world.overlays = []
        before = env.render()
        overlays = belief_overlays(belief, sigma, trees, valence, std, map_units=units, target=target, goal=goal,
                                   map_links=[[0, 1]])
        world.overlays = overlays
        after = env.render()
        assert before.shape == after.shape == (600, 600, 3)

        scale = np.linalg.norm(to_screen(state, agent + (100.0, 0.0)) - to_screen(state, agent)) / 100.0
        # each primitive shows its color at its screen position
        assert _near(after, to_screen(state, belief), BELIEF_COLOR)
        assert _near(after, to_screen(state, belief + (SIGMA_RING * sigma, 0.0)), BELIEF_COLOR, radius=2)
        assert _near(after, to_screen(state, belief - (0.0, SIGMA_RING * sigma)), BELIEF_COLOR, radius=2)
        assert not _near(after, to_screen(state, belief + (sigma, 0.0)), BELIEF_COLOR)  # a ring, not a disc
        assert _near(after, to_screen(state, target), TARGET_COLOR)
        assert _near(after, to_screen(state, (belief + target) / 2), TARGET_COLOR)
        assert _near(after, to_screen(state, goal), RECALLED_GOAL_COLOR)
        for xy, color in zip(trees, (POISON_COLOR, EDIBLE_COLOR, UNKNOWN_COLOR)):
            assert _near(after, to_screen(state, xy + (TREE_RING_RADIUS, 0.0)), color, radius=2)
        for xy in units:
            assert _near(after, to_screen(state, xy), MAP_UNIT_COLOR)
        assert _near(after, to_screen(state, units.mean(axis=0)), MAP_UNIT_COLOR)  # the link

        # every changed pixel lies on (within a few pixels of) some primitive
        rows, cols = np.nonzero((before != after).any(axis=-1))
        assert len(rows) > 100
        changed = np.stack([cols, rows], axis=-1).astype(np.float64)  # (N, 2) as (x, y)
        margin = 4.0
        near = np.zeros(len(changed), dtype=bool)
        for o in overlays:
            if isinstance(o, Point):
                near |= np.linalg.norm(changed - to_screen(state, o.xy), axis=-1) <= o.radius_px + margin
            elif isinstance(o, Circle):
                gap = np.abs(np.linalg.norm(changed - to_screen(state, o.center), axis=-1) - o.radius * scale)
                near |= gap <= o.width_px + margin
            elif isinstance(o, Segment):
                near |= _distance_to_segment(changed, to_screen(state, o.start), to_screen(state, o.end)) <= margin
        assert near.all(), f"{(~near).sum()} changed pixels far from every overlay, e.g. {changed[~near][:5]}"
        # and a region far from every overlay is untouched
        far = to_screen(state, agent + (-300.0, -300.0))
        x, y = np.rint(far).astype(int)
        if 20 <= x < 580 and 20 <= y < 580:
            np.testing.assert_array_equal(after[y - 20:y + 20, x - 20:x + 20], before[y - 20:y + 20, x - 20:x + 20])
    finally:
        env.close()


def test_translated_moves_every_primitive_and_refuses_others():
    from treeworld.overlay import Circle, HeatMap, Point, Segment, Text, translated

    items = [Point((1.0, 2.0)), Circle((0.0, 0.0), 3.0), Segment((1.0, 1.0), (2.0, 3.0)), Text((0.0, 1.0), "a"),
             HeatMap(np.ones((2, 2)), (0.0, 1.0, 0.0, 2.0))]
    moved = translated(items, (10.0, -5.0))
    assert moved[0].xy == (11.0, -3.0) and moved[1].center == (10.0, -5.0) and moved[1].radius == 3.0
    assert (moved[2].start, moved[2].end) == ((11.0, -4.0), (12.0, -2.0)) and moved[3].xy == (10.0, -4.0)
    assert moved[4].extent == (10.0, 11.0, -5.0, -3.0)
    with pytest.raises(TypeError, match="overlays: expected treeworld.overlay primitives"):
        translated(["x"], (0.0, 0.0))
