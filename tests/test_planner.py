"""Planner: targets by expected edible fruit per distance, safe eating, exploring, homing."""
import math

import numpy as np
import pytest
import torch

from treeworld.agents.planner import (EXPLORE, FORAGE, HOMING, RELOCALIZE, SCAN, Planner, PlannerConfig,
                                     expected_fruit)

torch.set_num_threads(1)

CONFIG = PlannerConfig()
EDIBLE = (0.9, 0.1)  # valence (mean, std) of a kind known edible
POISON = (-0.9, 0.1)  # ... known poisonous
UNKNOWN = (0.0, 0.8)  # ... never tasted
HUNGRY, SATED = CONFIG.hungry_health - 100.0, CONFIG.hungry_health + 100.0


def memory(positions, fruit, valence, last_seen=0.0):
    """One agent's memory (batch 1) from lists."""
    m = len(positions)
    return dict(tree_positions=torch.tensor([positions], dtype=torch.float32).reshape(1, m, 2),
                valid=torch.ones(1, m, dtype=torch.bool),
                valence_mean=torch.tensor([[v[0] for v in valence]], dtype=torch.float32),
                valence_std=torch.tensor([[v[1] for v in valence]], dtype=torch.float32),
                fruit_estimate=torch.tensor([fruit], dtype=torch.float32),
                last_seen=torch.full((1, m), float(last_seen)))


def score(position, tree, fruit, mean, discount=1.0):
    return (1 + mean) / 2 * fruit * discount / (np.linalg.norm(np.subtract(tree, position)) + CONFIG.distance_offset)


# ------------------------------------------------------------------------------------ fruit
def test_expected_fruit_follows_the_world_regrowth_clock():
    fruit = torch.tensor([[1.0, 4.0, 0.0, 2.0]])
    seen = torch.tensor([[150.0, 0.0, 420.0, 399.0]])
    got = expected_fruit(fruit, seen, 420, regrow_every=100, max_fruit=5)
    # ticks at 200, 300, 400 | capped at 5 | seen now | one tick at 400
    torch.testing.assert_close(got, torch.tensor([[4.0, 5.0, 0.0, 3.0]], dtype=torch.float64))
    # against a step-by-step count of the world's ticks (steps % R == 0)
    gen = np.random.default_rng(0)
    for _ in range(50):
        t, f = int(gen.integers(0, 1000)), int(gen.integers(0, 6))
        now = t + int(gen.integers(0, 700))
        ticks = sum(1 for s in range(t + 1, now + 1) if s % 100 == 0)
        got = expected_fruit(torch.tensor([[float(f)]]), torch.tensor([[float(t)]]), now)
        assert got.item() == min(5, f + ticks)


# ---------------------------------------------------------------------------------- targets
def test_picks_best_expected_fruit_per_distance_among_edible_trees():
    planner = Planner()  # hungry: every expected fruit is worth a trip
    # hand case: 4 fruit at 100 (4 / 120) beats 1 fruit at 15 (1 / 35) and 2 at 200
    mem = memory([(100, 0), (0, 15), (-200, 0)], [4, 1, 2], [EDIBLE] * 3)
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=HUNGRY).item() == 0
    mem = memory([(100, 0), (0, 15)], [2, 1], [EDIBLE] * 2)  # 2 / 120 < 1 / 35
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=HUNGRY).item() == 1
    # regrowth counts: tree 0 seen bare long ago has 3 fruit now (3 / 80 > 1 / 35)
    mem = memory([(60, 0), (0, 15)], [0, 1], [EDIBLE] * 2, last_seen=0)
    mem["last_seen"][0, 1] = 300.0
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=300, health=HUNGRY).item() == 0
    # random batches against a brute-force argmax
    gen = torch.Generator().manual_seed(1)
    B, M = 64, 12
    pos = torch.rand(B, 2, generator=gen) * 400 - 200
    trees = torch.rand(B, M, 2, generator=gen) * 600 - 300
    fruit = torch.randint(0, 6, (B, M), generator=gen).float()
    mean = torch.rand(B, M, generator=gen) * 0.9 + 0.05
    std = torch.rand(B, M, generator=gen) * 0.4
    valid = torch.rand(B, M, generator=gen) > 0.2
    got = planner.choose_targets(pos, trees, valid, mean, std, fruit, torch.zeros(B, M), 0, HUNGRY)
    for b in range(B):
        s = [score(pos[b].numpy(), trees[b, m].numpy(), fruit[b, m].item(), mean[b, m].item())
             if valid[b, m] and fruit[b, m] > 0 else -1 for m in range(M)]
        want = int(np.argmax(s)) if max(s) > 0 else -1
        assert got[b].item() == want


def test_a_sated_agent_skips_trees_with_less_than_min_fruit():
    planner = Planner(PlannerConfig(explore_until=2))
    less, enough = CONFIG.min_fruit - 1, CONFIG.min_fruit
    mem = memory([(0, 15), (300, 0)], [less, enough], [EDIBLE] * 2)
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=SATED).item() == 1
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=HUNGRY).item() == 0
    mem = memory([(0, 15), (300, 0)], [less, less], [EDIBLE] * 2)
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=SATED).item() == -1  # explore


def test_knowing_few_trees_a_sated_agent_holds_out_for_nearly_full_ones():
    planner = Planner(PlannerConfig(explore_until=3))
    mem = memory([(0, 15), (300, 0)], [3, 4], [EDIBLE] * 2)  # two known: 3 fruit is not worth it
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=SATED).item() == 1
    mem = memory([(0, 15), (300, 0), (0, 400)], [3, 4, 0], [EDIBLE] * 3)  # three known: it is
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=SATED).item() == 0


def test_never_targets_or_eats_a_kind_believed_poisonous():
    planner = Planner()
    gen = torch.Generator().manual_seed(2)
    B, M = 256, 10
    for trial in range(5):
        pos = torch.rand(B, 2, generator=gen) * 200 - 100
        trees = pos[:, None] + torch.randn(B, M, 2, generator=gen) * 60
        mean = torch.rand(B, M, generator=gen) * 2 - 1
        std = torch.rand(B, M, generator=gen)
        fruit = torch.randint(0, 6, (B, M), generator=gen).float()
        health = torch.rand(B, generator=gen) * 1000
        poisonous = (mean < -CONFIG.poison_threshold) & (std <= CONFIG.known_std)
        assert poisonous.any(1).float().mean() > 0.5  # the cases do test something
        current = torch.randint(-1, M, (B,), generator=gen)  # even a poisonous current target is dropped
        target = planner.choose_targets(pos, trees, torch.ones(B, M, dtype=torch.bool), mean, std, fruit,
                                        torch.zeros(B, M), 0, health, current)
        chosen = target >= 0
        assert chosen.any()
        assert not poisonous[chosen, target[chosen]].any()
        # eating: a poisonous kind in reach, with fruit, at any health: never
        sight = torch.rand(B, generator=gen) * 2 * CONFIG.eat_radius
        eat = planner.eat_decision(mean[:, 0], std[:, 0], sight, fruit[:, 0], health)
        assert eat.any()
        assert not (eat & poisonous[:, 0]).any()
        assert not (eat & (sight > CONFIG.eat_radius)).any() and not (eat & (fruit[:, 0] == 0)).any()
    # all trees poisonous: no target, explore, no eating, even at full health and in reach
    mem = memory([(8, 0), (30, 0)], [5, 5], [POISON, (-0.5, 0.4)])
    plan = planner.act(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 1000.0, 0, **mem,
                       sight_valence_mean=torch.tensor([-0.5]), sight_valence_std=torch.tensor([0.4]),
                       sight_distance=torch.tensor([8.0]), fruit_in_sight=torch.tensor([5]))
    assert plan.target.item() == -1 and plan.mode.item() == EXPLORE and plan.action[0, 2] < 0


def test_unknown_kinds_are_tried_only_when_health_affords_the_risk():
    planner = Planner()
    full = CONFIG.max_fruit
    mem = memory([(50, 0)], [full], [UNKNOWN])
    sight = dict(sight_valence_mean=torch.tensor([0.0]), sight_valence_std=torch.tensor([0.8]),
                 sight_distance=torch.tensor([6.0]), fruit_in_sight=torch.tensor([3.0]))
    low, high = 2 * CONFIG.fruit_health, 10 * CONFIG.fruit_health
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=low).item() == -1
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=high).item() == 0
    assert not planner.eat_decision(**sight, health=low).item()
    assert planner.eat_decision(**sight, health=high).item()
    # a known edible tree is eaten at any health; an unknown one is worth less than a sure one
    assert planner.eat_decision(torch.tensor([0.9]), torch.tensor([0.1]), torch.tensor([6.0]),
                                torch.tensor([1]), health=1.0).item()
    mem = memory([(50, 0), (70, 0)], [full, full], [UNKNOWN, EDIBLE])
    assert planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=high).item() == 1


@pytest.mark.parametrize("kind, cautious, optimist", [
    ((-0.1, 0.8), False, True),  # leans poisonous, unsure: worth a taste only under the upper bound
    ((-0.25, 0.3), False, False),  # leans poisonous, surer: -0.25 + 0.5 * 0.3 < 0
    ((-0.35, 0.95), False, True),  # leans poisonous a lot, but very unsure: the bound still tries it
    ((-0.5, 0.3), False, False),  # believed poisonous (std <= known_std, mean < -poison_threshold): never
    ((0.0, 0.8), True, True),  # no lean either way
])
def test_a_first_bite_needs_an_upper_confidence_bound_at_or_above_zero(kind, cautious, optimist):
    # a bite's expected health change is mean * fruit_health; taste_optimism = k tries an unknown
    # kind while mean + k * std >= 0 (the information is worth the risk), never one believed poisonous
    high = 10 * CONFIG.fruit_health
    for k, expected in ((0.0, cautious), (0.5, optimist)):
        planner = Planner(PlannerConfig(taste_optimism=k))
        eat = planner.eat_decision(torch.tensor([kind[0]]), torch.tensor([kind[1]]), torch.tensor([6.0]),
                                   torch.tensor([3.0]), health=high)
        mem = memory([(50, 0)], [CONFIG.max_fruit], [kind])
        target = planner.choose_targets(torch.zeros(1, 2), **mem, now=0, health=high)
        assert bool(eat.item()) == expected and (target.item() == 0) == expected


def test_hysteresis_keeps_the_target_against_a_marginally_better_one():
    planner = Planner()
    position = torch.zeros(1, 2)
    # tree 0 (current): 2 fruit at 80; tree 1: 2 fruit at 60 (score ratio 100 / 80 = 1.25 < 1.5)
    mem = memory([(80, 0), (0, 60)], [2, 2], [EDIBLE] * 2)
    assert planner.choose_targets(position, **mem, now=0, health=HUNGRY).item() == 1
    assert planner.choose_targets(position, **mem, now=0, health=HUNGRY, current=torch.tensor([0])).item() == 0
    # tree 1 with 5 fruit: ratio 2.5 * 1.25 > 1.5 -> switch
    mem = memory([(80, 0), (0, 60)], [2, 5], [EDIBLE] * 2)
    assert planner.choose_targets(position, **mem, now=0, health=HUNGRY, current=torch.tensor([0])).item() == 1
    # the current target eaten bare -> switch to anything that scores
    mem = memory([(80, 0), (0, 300)], [0, 1], [EDIBLE] * 2)
    assert planner.choose_targets(position, **mem, now=0, health=HUNGRY, current=torch.tensor([0])).item() == 1


def test_goes_to_the_target_and_stops_in_reach_facing_it():
    planner = Planner()
    mem = memory([(60, -45)], [3], [EDIBLE])
    position, heading, target = torch.zeros(1, 2), torch.tensor([[-1.0, 0.0]]), torch.tensor([-1])
    for _ in range(30):
        plan = planner.act(position, heading, HUNGRY, 0, **mem, current=target)
        assert plan.mode.item() == FORAGE and plan.target.item() == 0
        position, heading, target = position + plan.action[:, :2] * CONFIG.max_step, plan.heading, plan.target
    offset = torch.tensor([[60.0, -45.0]]) - position
    assert offset.norm() <= CONFIG.eat_radius
    assert (offset / offset.norm() * heading).sum() >= 0.9  # the tree is in the sight cone


def sight_args(sighted: int, distance: float):
    return dict(sight_valence_mean=torch.tensor([0.9]), sight_valence_std=torch.tensor([0.1]),
                sight_distance=torch.tensor([distance]), fruit_in_sight=torch.tensor([3.0]),
                sighted=torch.tensor([sighted]))


def test_at_a_remembered_tree_not_in_sight_the_agent_turns_in_place_to_find_it():
    planner = Planner()
    mem = memory([(2, 1)], [3], [EDIBLE])
    position, heading = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    angles = []
    for _ in range(8):
        plan = planner.act(position, heading, HUNGRY, 0, **mem, current=torch.tensor([0]),
                           **sight_args(-1, math.inf))
        assert plan.mode.item() == SCAN and plan.target.item() == 0
        step = plan.action[0, :2] * CONFIG.max_step
        assert step.norm() == pytest.approx(CONFIG.nudge, rel=1e-5)  # turning, not walking off
        position, heading = position + step, plan.heading
        angles.append(math.atan2(heading[0, 1], heading[0, 0]))
    turns = np.diff(np.unwrap([0.0] + angles))
    np.testing.assert_allclose(turns, CONFIG.scan_turn, rtol=1e-5)  # 8 x 0.8 rad: every bearing swept


def test_a_target_in_sight_is_approached_straight_along_the_heading():
    planner = Planner()
    mem = memory([(30, 30)], [3], [EDIBLE])  # remembered off to the side; sight says: 40 ahead
    heading = torch.tensor([[0.0, 1.0]])
    plan = planner.act(torch.zeros(1, 2), heading, HUNGRY, 0, **mem, current=torch.tensor([0]),
                       **sight_args(0, 40.0))
    assert plan.mode.item() == FORAGE
    torch.testing.assert_close(plan.action[0, :2], torch.tensor([0.0, 1.0]))
    plan = planner.act(torch.zeros(1, 2), heading, HUNGRY, 0, **mem, current=torch.tensor([0]),
                       **sight_args(0, 12.0))  # near: to sight_stop, where it is in reach and still ahead
    torch.testing.assert_close(plan.action[0], torch.tensor([0.0, (12.0 - CONFIG.sight_stop) / CONFIG.max_step, -1.0]))
    plan = planner.act(torch.zeros(1, 2), heading, HUNGRY, 0, **mem, current=torch.tensor([0]),
                       **sight_args(0, 9.0))  # in reach: a bite, standing still (the tree stays in the cone)
    torch.testing.assert_close(plan.action[0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(plan.heading, heading)



def test_a_bite_is_declined_where_a_tree_it_would_not_eat_may_be_the_nearest_in_reach():
    # the world feeds on the nearest tree in reach: a remembered poisonous tree believed at 7 units
    # while the edible tree in sight is at 6 would likely be the one eaten
    planner = Planner()
    eat = dict(sight_valence_mean=torch.tensor([0.9]), sight_valence_std=torch.tensor([0.1]),
               sight_distance=torch.tensor([6.0]), fruit_in_sight=torch.tensor([3.0]), health=SATED)
    assert planner.eat_decision(**eat).item()
    assert planner.eat_decision(**eat, hazard_distance=torch.tensor([math.inf])).item()
    assert not planner.eat_decision(**eat, hazard_distance=torch.tensor([7.0])).item()
    assert planner.eat_decision(**eat, hazard_distance=torch.tensor([6.0 + CONFIG.hazard_margin])).item()
    # in act: the hazard is any remembered tree it would not eat, never the tree in sight itself
    for neighbour, eats in ((POISON, False), ((-0.1, 0.8), False), (EDIBLE, True), (UNKNOWN, True)):
        mem = memory([(0, 6), (3, 4)], [3, 3], [EDIBLE, neighbour])
        plan = planner.act(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), SATED, 0, **mem,
                           current=torch.tensor([0]), **sight_args(0, 6.0))
        assert bool(plan.action[0, 2] > 0) == eats, neighbour


def test_a_target_with_a_hazard_next_to_it_is_approached_to_crowded_stop():
    planner = Planner()
    heading = torch.tensor([[0.0, 1.0]])
    for neighbour, stop in ((POISON, CONFIG.crowded_stop), (EDIBLE, CONFIG.stop_fraction * CONFIG.eat_radius)):
        mem = memory([(0, 40), (8, 40)], [3, 3], [EDIBLE, neighbour])
        position = torch.zeros(1, 2)
        for _ in range(20):
            plan = planner.act(position, heading, HUNGRY, 0, **mem, current=torch.tensor([0]))
            position = position + plan.action[:, :2] * CONFIG.max_step
        assert (torch.tensor([[0.0, 40.0]]) - position).norm().item() == pytest.approx(stop, abs=1e-4)


# --------------------------------------------------------------------------------- exploring
def _coverage(path, cell=25.0):
    return len({(math.floor(x / cell), math.floor(y / cell)) for x, y in path})


def _inside(position, radius=500.0):
    norm = position.norm(dim=-1, keepdim=True)
    return torch.where(norm > radius, position * radius / norm, position)


def test_no_tree_slots_plan_as_no_trees_given():
    B, z = 2, torch.zeros
    empty = dict(tree_positions=z(B, 0, 2), valid=z(B, 0, dtype=torch.bool), valence_mean=z(B, 0),
                 valence_std=z(B, 0), fruit_estimate=z(B, 0), last_seen=0)
    heading = torch.tensor([[1.0, 0.0]] * B)
    plans = [Planner().act(z(B, 2), heading, 500.0, 0, generator=torch.Generator().manual_seed(1), **trees)
             for trees in (empty, {})]
    assert torch.equal(plans[0].action, plans[1].action) and (plans[0].target == -1).all()


def test_explores_with_no_trees_and_covers_much_more_than_a_random_walk():
    planner = Planner()
    gen = torch.Generator().manual_seed(3)
    position, heading = torch.zeros(1, 2), torch.zeros(1, 2)
    places, path = [], []
    for step in range(2000):
        if step % 5 == 0:
            places.append(position[0].clone())
        plan = planner.act(position, heading, 500.0, step,
                           places=torch.stack(places)[None], generator=gen)
        assert plan.mode.item() == EXPLORE and plan.target.item() == -1
        looking = step % CONFIG.explore_scan_every < math.ceil(2 * math.pi / CONFIG.scan_turn)
        if looking and step > 0:  # a look around: turning in place
            assert plan.action[0, :2].norm() * CONFIG.max_step == pytest.approx(CONFIG.nudge, rel=1e-4)
            assert (plan.heading * heading).sum() == pytest.approx(math.cos(CONFIG.scan_turn), abs=1e-4)
        elif not looking:  # walking: full speed, smooth (bounded turn; jitter is 0.05 rad std)
            assert plan.action[0, :2].norm() == pytest.approx(1.0, abs=1e-5)
            previous_looked = (step - 1) % CONFIG.explore_scan_every < math.ceil(2 * math.pi / CONFIG.scan_turn)
            if not previous_looked:
                assert (plan.heading * heading).sum() >= math.cos(CONFIG.max_turn + 0.3)
        position, heading = _inside(position + plan.action[:, :2] * CONFIG.max_step), plan.heading
        path.append(position[0].tolist())
        assert position.norm() <= 500.0 + 1e-3
    random_position, random_path = torch.zeros(1, 2), []
    for _ in range(2000):
        step = torch.rand(1, 2, generator=gen) * 2 - 1
        random_position = _inside(random_position + step * CONFIG.max_step)
        random_path.append(random_position[0].tolist())
    explored, walked = _coverage(path), _coverage(random_path)
    assert explored > 4 * walked, (explored, walked)
    assert explored > 200  # 2000 steps * 5 units / 25-unit cells = 400 at most on a straight line (less 27% looking)


def test_explore_turns_inward_at_the_wall():
    planner = Planner(PlannerConfig(explore_jitter=0.0))
    position, heading = torch.tensor([[490.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    for _ in range(20):
        direction = planner.explore_direction(position, torch.zeros(1, 0, 2), heading)
        assert (direction * heading).sum() >= math.cos(CONFIG.max_turn) - 1e-5
        heading = direction
    assert heading[0, 0] < 0  # turned back inside



def test_explore_heads_for_the_frontier_and_falls_back_to_repulsion_without_one():
    planner = Planner(PlannerConfig(explore_jitter=0.0))
    position = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    heading = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    places = torch.tensor([[[-30.0, 0.0]], [[-30.0, 0.0]]])  # a known place behind: repulsion says ahead
    frontier = torch.tensor([[10.0, 10.0], [math.nan, math.nan]])  # row 0: 45 degrees left
    direction = planner.explore_direction(position, places, heading, frontier=frontier)
    angle = math.atan2(float(direction[0, 1]), float(direction[0, 0]))
    assert angle == pytest.approx(CONFIG.max_turn)  # turning towards it as fast as allowed
    torch.testing.assert_close(direction[1:], planner.explore_direction(position[1:], places[1:], heading[1:]))
    ahead = planner.explore_direction(position, places, heading, frontier=torch.tensor([[50.0, 1.0]] * 2))
    assert (ahead[:, 0] > 0.99).all()
    with pytest.raises(ValueError, match="frontier: expected rows that are finite"):
        planner.explore_direction(position, places, heading, frontier=torch.tensor([[1.0, math.nan]] * 2))
    with pytest.raises(ValueError, match="frontier: expected shape"):
        planner.explore_direction(position, places, heading, frontier=torch.zeros(3, 2))


# ----------------------------------------------------------------------------------- homing
def test_homing_goes_straight_to_the_goal_place():
    planner = Planner()
    gen = torch.Generator().manual_seed(4)
    position = torch.tensor([[120.0, -40.0]])
    goal = torch.tensor([[-180.0, 230.0]])
    distance = (goal - position).norm().item()
    mem = memory([(130, -40)], [5], [EDIBLE])  # a tempting tree next to the start
    heading = torch.tensor([[0.0, 1.0]])
    for step in range(int(math.ceil(distance / CONFIG.max_step)) + 2):
        plan = planner.act(position, heading, 500.0, step, **mem, goal=goal,
                           goal_mask=torch.tensor([True]), generator=gen)
        assert plan.mode.item() == HOMING
        position, heading = position + plan.action[:, :2] * CONFIG.max_step, plan.heading
        if (goal - position).norm() < 1e-3:
            break
    assert (goal - position).norm() < 1e-3
    assert step + 1 <= math.ceil(distance / CONFIG.max_step) + 2


def test_homing_turns_at_the_goal_place_to_find_the_goal_tree_then_walks_at_it():
    planner = Planner()
    goal, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([True])
    heading = torch.tensor([[1.0, 0.0]])
    unseen = dict(sight_valence_mean=torch.tensor([0.0]), sight_valence_std=torch.tensor([0.8]),
                  sight_distance=torch.tensor([math.inf]), fruit_in_sight=torch.tensor([0.0]))
    # at the remembered place, the goal tree not in sight: turn in place (not stand still)
    plan = planner.act(torch.zeros(1, 2), heading, 500.0, 600, goal=goal, goal_mask=mask,
                       goal_sighted=torch.tensor([False]), **unseen)
    assert plan.mode.item() == HOMING
    assert (plan.action[0, :2] * CONFIG.max_step).norm().item() == pytest.approx(CONFIG.nudge, rel=1e-5)
    angle = math.atan2(plan.heading[0, 1], plan.heading[0, 0])
    assert angle == pytest.approx(CONFIG.scan_turn, rel=1e-5)
    # the goal tree in sight 25 units ahead, though remembered elsewhere: straight at it
    plan = planner.act(torch.zeros(1, 2), plan.heading, 500.0, 601, goal=torch.tensor([[-30.0, 5.0]]),
                       goal_mask=mask, goal_sighted=torch.tensor([True]),
                       **{**unseen, "sight_distance": torch.tensor([25.0])})
    torch.testing.assert_close(plan.action[0, :2], plan.heading[0] * 1.0)
    assert math.atan2(plan.heading[0, 1], plan.heading[0, 0]) == pytest.approx(angle, rel=1e-5)


# ---------------------------------------------------------------------------- batch, inputs
def _scenario(B, seed):
    gen = torch.Generator().manual_seed(seed)
    M = 7
    pos = torch.rand(B, 2, generator=gen) * 300 - 150
    return dict(
        position=pos, heading=torch.nn.functional.normalize(torch.randn(B, 2, generator=gen), dim=-1),
        health=torch.rand(B, generator=gen) * 800, now=350,
        tree_positions=pos[:, None] + torch.randn(B, M, 2, generator=gen) * 80,
        valid=torch.rand(B, M, generator=gen) > 0.3,
        valence_mean=torch.rand(B, M, generator=gen) * 2 - 1, valence_std=torch.rand(B, M, generator=gen),
        fruit_estimate=torch.randint(0, 3, (B, M), generator=gen).float(),
        last_seen=torch.randint(0, 350, (B, M), generator=gen).float(),
        current=torch.randint(-1, M, (B,), generator=gen),
        sight_valence_mean=torch.rand(B, generator=gen) * 2 - 1, sight_valence_std=torch.rand(B, generator=gen),
        sight_distance=torch.where(torch.rand(B, generator=gen) > 0.2, torch.rand(B, generator=gen) * 20,
                                   torch.tensor(math.inf)),
        fruit_in_sight=torch.randint(0, 3, (B,), generator=gen),
        goal=torch.randn(B, 2, generator=gen) * 100, goal_mask=torch.rand(B, generator=gen) > 0.7,
        places=torch.randn(B, 30, 2, generator=gen) * 100,
        position_std=torch.rand(B, generator=gen) * 8,
        closure_std=torch.where(torch.rand(B, M, generator=gen) > 0.2, torch.rand(B, M, generator=gen) * 8,
                                torch.tensor(math.inf)))


# ---------------------------------------------------------------------------- relocalizing
def test_an_uncertain_sated_agent_walks_to_the_nearest_landmark_that_would_relocalize_it():
    planner = Planner()
    # three trees known, none worth a trip (no fruit expected): tree 0 near but as uncertain as the agent,
    # tree 1 farther and precise, tree 2 farthest and precise
    mem = memory([(20, 0), (0, 60), (-90, 0)], [0, 0, 0], [EDIBLE] * 3, last_seen=0)
    closure = torch.tensor([[5.5, 1.0, 1.0]])
    uncertain = dict(position_std=torch.tensor([6.0]), closure_std=closure)  # 5.5 >= 0.8 * 6: no help
    full = CONFIG.relocalize_health + 100.0
    position, heading = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    plan = planner.act(position, heading, full, 5, **mem, **uncertain)
    assert plan.mode.item() == RELOCALIZE and plan.landmark.item() == 1 and plan.target.item() == -1
    torch.testing.assert_close(plan.action[0, :2], torch.tensor([0.0, 1.0]))  # straight at it, full speed
    # walked there, not in sight: it turns in place to find it (SCAN, the landmark kept)
    plan = planner.act(torch.tensor([[0.0, 56.0]]), heading, full, 5, **mem, **uncertain,
                       **sight_args(-1, math.inf))
    assert plan.mode.item() == SCAN and plan.landmark.item() == 1
    # not when certain enough, nor below relocalize_health, nor with closure_std +inf (looked for, not found)
    for health, own, closing in ((full, 3.0, closure), (CONFIG.relocalize_health - 1.0, 6.0, closure),
                                 (full, 6.0, torch.tensor([[5.5, math.inf, math.inf]]))):
        plan = planner.act(position, heading, health, 5, **mem, position_std=torch.tensor([own]), closure_std=closing)
        assert plan.mode.item() == EXPLORE and plan.landmark.item() == -1
    # never with relocalize_ratio 0; and a target tree comes first
    plan = Planner(PlannerConfig(relocalize_ratio=0.0)).act(position, heading, full, 5, **mem, **uncertain)
    assert plan.landmark.item() == -1
    fed = memory([(20, 0), (0, 60), (-90, 0)], [5, 0, 0], [EDIBLE] * 3, last_seen=0)
    plan = planner.act(position, heading, full, 5, **fed, **uncertain)
    assert plan.mode.item() == FORAGE and plan.target.item() == 0 and plan.landmark.item() == -1


def test_batch_equals_singles():
    planner = Planner(PlannerConfig(explore_jitter=0.0, relocalize_health=600.0))  # every mode in the scenario
    B = 24
    args = _scenario(B, 5)
    args["valid"][:4] = False  # some rows explore
    args["goal_mask"][:4] = False
    batch = planner.act(**{k: v for k, v in args.items() if k != "now"}, now=args["now"])
    modes = set(batch.mode.tolist())
    assert modes == {EXPLORE, FORAGE, HOMING, RELOCALIZE}
    assert batch.action.dtype == torch.float32 and batch.action.shape == (B, 3)
    assert batch.action.abs().max() <= 1.0
    for b in range(B):
        row = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        single = planner.act(**row)
        torch.testing.assert_close(single.action, batch.action[b:b + 1], rtol=1e-5, atol=1e-5)
        assert single.target.item() == batch.target[b].item() and single.mode.item() == batch.mode[b].item()
        assert single.landmark.item() == batch.landmark[b].item()


def test_bad_inputs_raise_value_error_naming_the_argument():
    planner = Planner()
    args = _scenario(3, 6)
    cases = {
        "position": torch.zeros(3, 3),
        "heading": torch.zeros(2, 2),
        "tree_positions": torch.zeros(3, 7, 3),
        "valid": torch.ones(3, 6, dtype=torch.bool),
        "valence_mean": torch.full((3, 7), 2.0),
        "valence_std": torch.full((3, 7), math.nan),
        "fruit_estimate": torch.full((3, 7), -1.0),
        "last_seen": torch.full((3, 7), 1000.0),  # after now
        "current": torch.tensor([0, 9, -1]),
        "sight_distance": torch.tensor([math.nan, 1.0, 2.0]),
        "goal": torch.full((3, 2), math.inf),
        "places": torch.zeros(3, 4, 1),
        "health": torch.zeros(4),
        "position_std": torch.full((3,), -1.0),
        "closure_std": torch.full((3, 6), math.nan),
    }
    for name, bad in cases.items():
        with pytest.raises(ValueError, match=f"^{name}"):
            planner.act(**{**args, name: bad})
    with pytest.raises(ValueError, match="^regrow_every"):
        expected_fruit(torch.zeros(1, 1), 0, 1, regrow_every=0)
    with pytest.raises(ValueError, match="^hysteresis"):
        PlannerConfig(hysteresis=0.5)
    with pytest.raises(ValueError, match="^initial_fruit"):
        PlannerConfig(initial_fruit=6.0)
    with pytest.raises(ValueError, match=r"^sight_stop: expected < eat_radius=10.0, got 10.0"):
        PlannerConfig(sight_stop=10.0)
    with pytest.raises(TypeError, match="^valid"):
        planner.act(**{**args, "valid": torch.ones(3, 7)})
