"""ValenceReadout: learned valence from eating outcomes on real sight percepts (MiniLM table)."""
import io

import numpy as np
import pytest
import torch

from treeworld import PerceptTables, Vocabulary, WorldConfig
from treeworld.agents.valence import ValenceReadout

torch.set_num_threads(1)

CONFIG = WorldConfig()
VOCAB = Vocabulary.for_config(CONFIG)
SIGHT = torch.as_tensor(np.asarray(PerceptTables.build(CONFIG, VOCAB).sight))
POOL = CONFIG.name_pool
POISONOUS = VOCAB.poisonous  # used by the test to label eats; the module never sees it
TASTED = (0, 3, 7, 12, 14)  # apple, cherry, orange | deadly nightshade, manchineel
UNTASTED = tuple(k for k in range(VOCAB.num_kinds) if k not in TASTED)
TRAIN_NAMES, TEST_NAMES = range(0, POOL // 2), range(POOL // 2, POOL)
TRAIN_FRUIT, TEST_FRUIT = (1, 2, 3), (0, 4, 5)


def sight(kind, name, fruit):
    """A seen tree's percept (built from the world's table: the test may, the readout may not)."""
    return SIGHT[(kind * POOL + name) * 6 + fruit]


def outcome(kind):
    return -1.0 if POISONOUS[kind] else 1.0


def eats(kinds, per_kind, seed, names=TRAIN_NAMES, fruits=TRAIN_FRUIT):
    rng = np.random.default_rng(seed)
    rows, signs = [], []
    for kind in kinds:
        for _ in range(per_kind):
            rows.append(sight(kind, int(rng.choice(names)), int(rng.choice(fruits))))
            signs.append(outcome(kind))
    return torch.stack(rows), torch.tensor(signs)


def grid(kinds, names=TEST_NAMES, fruits=TEST_FRUIT):
    keys = [(k, n, f) for k in kinds for n in names for f in fruits]
    return torch.stack([sight(*key) for key in keys]), torch.tensor([outcome(k) for k, _, _ in keys])


def trained(seed=0, per_kind=3):
    readout = ValenceReadout(SIGHT.shape[1])
    readout.update(*eats(TASTED, per_kind, seed))
    return readout


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generalises_to_unseen_names_and_fruit_counts(seed):
    readout = ValenceReadout(SIGHT.shape[1])
    percepts, signs = grid(TASTED)
    before = (readout.predict(percepts).mean.sign() == signs).float().mean()
    readout.update(*eats(TASTED, 3, seed))  # 15 eats, names 0-15, fruit counts 1-3
    mean, std = readout.predict(percepts)  # names 16-31, fruit counts 0, 4, 5: never tasted
    assert mean.shape == std.shape == signs.shape and mean.dtype == torch.float32
    assert bool((mean.abs() < 1).all()) and bool((std > 0).all())
    assert (mean.sign() == signs).float().mean() >= 0.95
    assert before < 0.95  # the prior alone does not know


@pytest.mark.parametrize("seed", [0, 1])
def test_robust_to_percept_noise(seed):
    readout = trained(seed)
    percepts, signs = grid(TASTED)
    noise = 0.02 * torch.randn(percepts.shape, generator=torch.Generator().manual_seed(seed))
    mean, _ = readout.predict(percepts + noise)
    assert (mean.sign() == signs).float().mean() >= 0.95
    # and learning from noisy eats works too
    noisy = ValenceReadout(SIGHT.shape[1])
    rows, outcomes = eats(TASTED, 3, seed)
    noisy.update(rows + 0.02 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(seed + 7)), outcomes)
    assert (noisy.predict(percepts).mean.sign() == signs).float().mean() >= 0.95


def test_uncertain_for_untasted_kinds():
    readout = ValenceReadout(SIGHT.shape[1])
    prior = readout.predict(grid(range(VOCAB.num_kinds))[0]).std
    readout.update(*eats(TASTED, 3, 0))
    # the same unseen names and fruit counts for every kind: only the kind differs
    std_untasted = readout.predict(grid(UNTASTED)[0]).std.view(len(UNTASTED), -1)
    std_tasted = readout.predict(grid(TASTED)[0]).std.view(len(TASTED), -1)
    assert bool((prior > 0.85).all())  # nothing tasted: close to the maximum (1)
    assert bool((std_untasted.mean(1) > 0.58).all())  # every untasted kind stays uncertain
    assert bool((std_untasted.mean(0) > 1.05 * std_tasted.mean(0)).all())  # per (name, fruit count)
    assert std_untasted.mean() > 1.15 * std_tasted.mean()
    # the exact trees tasted are known better still
    rows, _ = eats(TASTED, 3, 0)
    assert readout.predict(rows).std.mean() < std_tasted.mean()
    # many more eats of the tasted kinds, over all names and fruit counts: their uncertainty
    # falls a lot, and an untasted kind stays well above it
    readout.update(*eats(TASTED, 20, 1, names=range(POOL), fruits=range(6)))
    after = readout.predict(grid(TASTED)[0]).std
    assert after.mean() < 0.6 * std_tasted.mean()
    assert readout.predict(grid(UNTASTED)[0]).std.mean() > 1.5 * after.mean()


def test_poison_stays_poisonous_in_a_new_episode():
    readout = ValenceReadout(SIGHT.shape[1])
    # episode 1: trees 0-15 of the world; manchineel (14) is tasted and hurts
    readout.update(*eats((0, 5, 14), 3, 3, names=range(0, 16)))
    # episode 2: a new world (names 16-31), the readout is kept (no reset); other kinds eaten
    readout.update(*eats((1, 9, 12), 3, 4, names=range(16, 32)))
    percepts, signs = grid((14,), names=range(16, 32), fruits=range(6))
    assert bool((signs == -1).all())
    mean, _ = readout.predict(percepts)
    assert (mean < 0).float().mean() >= 0.95
    # and the edible kinds of episode 1 stay edible
    percepts, _ = grid((0, 5), names=range(16, 32), fruits=range(6))
    assert (readout.predict(percepts).mean > 0).float().mean() >= 0.95
    assert int(readout.eats) == 18
    # not vacuous: a readout reset for episode 2 would not know manchineel is poisonous
    reset = ValenceReadout(SIGHT.shape[1])
    reset.update(*eats((1, 9, 12), 3, 4, names=range(16, 32)))
    assert (reset.predict(grid((14,), names=range(16, 32), fruits=range(6))[0]).mean < 0).float().mean() < 0.5


def test_state_dict_round_trip_exact():
    readout = trained(0)
    buffer = io.BytesIO()
    torch.save(readout.state_dict(), buffer)
    buffer.seek(0)
    loaded = ValenceReadout(SIGHT.shape[1])
    loaded.load_state_dict(torch.load(buffer))
    for key, value in readout.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    percepts, _ = grid(range(VOCAB.num_kinds))
    a, b = readout.predict(percepts), loaded.predict(percepts)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    more = eats(UNTASTED[:3], 2, 5)
    readout.update(*more)
    loaded.update(*more)
    assert torch.equal(readout.covariance(), loaded.covariance()) and torch.equal(readout.weight_mean, loaded.weight_mean)
    # a fresh readout differs (the round trip is not vacuous)
    assert not torch.equal(ValenceReadout(SIGHT.shape[1]).predict(percepts).mean, b.mean)


def test_batch_update_is_order_independent_and_matches_sequential_for_one_row():
    rows, outcomes = eats(TASTED, 3, 0)
    a, b = ValenceReadout(SIGHT.shape[1], dtype=torch.float64), ValenceReadout(SIGHT.shape[1], dtype=torch.float64)
    a.update(rows, outcomes)
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    b.update(rows[perm], outcomes[perm])
    torch.testing.assert_close(a.covariance(), b.covariance())
    torch.testing.assert_close(a.weight_mean, b.weight_mean)
    # leading dims: (B, 1, D) percepts with (B, 1) outcomes is the same update
    c = ValenceReadout(SIGHT.shape[1], dtype=torch.float64)
    c.update(rows[:, None], outcomes[:, None])
    torch.testing.assert_close(a.weight_mean, c.weight_mean)
    assert a.predict(rows[:4].view(2, 2, -1)).mean.shape == (2, 2)


def test_learns_one_row_at_a_time_and_accepts_other_dtypes():
    readout = ValenceReadout(SIGHT.shape[1])
    rows, outcomes = eats(TASTED, 3, 0)
    for row, sign in zip(rows.double(), outcomes.long()):  # int outcomes, float64 percepts
        readout.update(row[None], sign[None])
    percepts, signs = grid(TASTED)
    mean, std = readout.predict(percepts.double())
    assert mean.dtype == std.dtype == torch.float32
    assert (mean.sign() == signs).float().mean() >= 0.95
    readout.update(rows[:0], outcomes[:0])  # no eats: nothing changes
    assert int(readout.eats) == len(rows)


def test_bad_inputs_raise_naming_the_argument():
    readout = trained(0)
    before = {k: v.clone() for k, v in readout.state_dict().items()}
    rows, outcomes = eats(TASTED, 1, 0)
    nan = rows.clone()
    nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="^percepts"):
        readout.update(nan, outcomes)
    with pytest.raises(ValueError, match="^percepts"):
        readout.predict(nan)
    with pytest.raises(ValueError, match="^percepts"):
        readout.predict(rows[:, :10])
    with pytest.raises(TypeError, match="^percepts"):
        readout.predict(rows.long())
    with pytest.raises(ValueError, match="^outcomes"):
        readout.update(rows, torch.zeros(len(rows)))
    with pytest.raises(ValueError, match="^outcomes"):
        readout.update(rows, outcomes[:-1])
    bad = outcomes.clone()
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="^outcomes"):
        readout.update(rows, bad)
    with pytest.raises(TypeError, match="^outcomes"):
        readout.update(rows, outcomes.tolist())
    for key, value in readout.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="^prior_var"):
        ValenceReadout(384, prior_var=0.0)
    with pytest.raises(ValueError, match="^bias_var"):
        ValenceReadout(384, bias_var=-1.0)
    with pytest.raises(ValueError, match="^percept_dim"):
        ValenceReadout(0)


def poison_then_edible(readout, adapt: bool):
    """One poisonous bite, then two bites of each of three edible kinds; with adaptation the
    readout is first shown 200 sightings of random trees (its own experience, any kind)."""
    poison = next(k for k in range(VOCAB.num_kinds) if POISONOUS[k])
    edible = [k for k in range(VOCAB.num_kinds) if not POISONOUS[k]][:3]
    if adapt:
        rng = np.random.default_rng(9)
        readout.adapt(torch.stack([sight(int(rng.integers(VOCAB.num_kinds)), int(rng.integers(POOL)),
                                         int(rng.integers(6))) for _ in range(200)]))
    readout.update(*eats([poison], 1, 0))
    readout.update(*eats(edible, 2, 1))
    return readout.predict(grid([poison])[0]).mean


def test_adaptation_keeps_a_poisonous_kind_poisonous_after_edible_bites_of_other_kinds():
    # Raw sentence embeddings share a large common direction: edible bites of other kinds pull
    # the poisonous kind back up; centred on the percepts seen, they do not.
    raw = poison_then_edible(ValenceReadout(SIGHT.shape[1]), adapt=False)
    adapted = poison_then_edible(ValenceReadout(SIGHT.shape[1]), adapt=True)
    assert raw.mean() > 0
    assert adapted.mean() < -0.3 and (adapted < 0).float().mean() > 0.9


def test_adaptation_centre_is_the_running_mean_of_unit_percepts_and_is_saved():
    readout = ValenceReadout(SIGHT.shape[1])
    shown = SIGHT[:50] * 3.0
    readout.adapt(shown[:20])
    readout.adapt(shown[20:])
    unit = shown.double() / shown.double().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(readout.center(), unit.sum(0)[None] / 51)
    loaded = ValenceReadout(SIGHT.shape[1])
    loaded.load_state_dict(readout.state_dict())
    assert torch.equal(loaded.center(), readout.center())


def test_nothing_seen_is_judged_by_the_bias_alone():
    """A zero percept (no tree in sight) has the zero percept feature whatever the adaptation centre:
    its latent score is the bias weight's, N(mean[-1], cov[-1, -1])."""
    readout = trained()
    readout.adapt(SIGHT[:50])
    mu, var = readout.weight_mean[0, -1], readout.covariance()[0, -1, -1]
    assert abs(float(mu)) > 0.01  # the eats moved the bias, so the check below can fail
    latent = readout.latent(torch.zeros(2, SIGHT.shape[1]))
    torch.testing.assert_close(latent.mean, mu.float().expand(2))
    torch.testing.assert_close(latent.std, var.sqrt().float().expand(2))
    mean = 2 * torch.special.ndtr(mu / (1 + var).sqrt()) - 1
    torch.testing.assert_close(readout.predict(torch.zeros(1, SIGHT.shape[1])).mean, mean.float()[None])


def test_one_eat_gives_the_exact_posterior_moments_by_importance_sampling():
    # One probit site moment-matched against a Gaussian prior is the exact posterior's mean and
    # covariance: checked against prior samples weighted by the likelihood Phi(y w . phi).
    readout = ValenceReadout(2, prior_var=2.0, bias_var=0.5, dtype=torch.float64)
    x, y = torch.tensor([[0.6, -0.8]]), torch.tensor([-1.0])
    readout.update(x, y)
    phi = torch.tensor([0.6, -0.8, 1.0], dtype=torch.float64)  # unit percept (no adaptation yet), bias 1
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2_000_000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0, 0.5]).sqrt()
    weight = torch.special.ndtr(y * (w @ phi))
    weight = weight / weight.sum()
    mean = weight @ w
    cov = (w - mean).T @ ((w - mean) * weight[:, None])
    torch.testing.assert_close(readout.weight_mean[0], mean, atol=5e-3, rtol=0)
    torch.testing.assert_close(readout.covariance()[0], cov, atol=1e-2, rtol=0)


@pytest.mark.parametrize("spare_rows, rounds", [(64, 3), (1, 8)])
def test_a_batch_of_sites_is_the_natural_parameter_sum_of_their_sites(spare_rows, rounds):
    # The Woodbury update against the precision form written out here: sites moment-matched
    # against the current posterior, their precisions and shifts added, then inverted. With one
    # spare row, 40 sites pass D + 1 + 1 = 6 factor rows again and again: compressed, still exact.
    D = 4
    readout = ValenceReadout(D, prior_var=3.0, bias_var=1.5, spare_rows=spare_rows, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    precision = torch.diag(torch.tensor([1 / 3.0] * D + [1 / 1.5], dtype=torch.float64))
    shift = torch.zeros(D + 1, dtype=torch.float64)
    for _ in range(rounds):
        x = torch.randn(5, D, generator=g, dtype=torch.float64)
        y = torch.where(torch.rand(5, generator=g) < 0.5, -1.0, 1.0).double()
        phi = torch.cat([x / x.norm(dim=-1, keepdim=True), torch.ones(5, 1, dtype=torch.float64)], -1)
        cov = torch.linalg.inv(precision)
        mu, s = phi @ (cov @ shift), ((phi @ cov) * phi).sum(-1)
        z = y * mu / (1 + s).sqrt()
        lam = torch.exp(torch.distributions.Normal(0.0, 1.0).log_prob(z) - torch.special.log_ndtr(z))
        c = lam * (lam + z) / (1 + s)
        tau, nu = c / (1 - s * c), (mu * c + y * lam / (1 + s).sqrt()) / (1 - s * c)
        precision = precision + (phi.T * tau) @ phi
        shift = shift + phi.T @ nu
        readout.update(x, y)
    torch.testing.assert_close(readout.covariance()[0], torch.linalg.inv(precision))
    torch.testing.assert_close(readout.weight_mean[0], torch.linalg.solve(precision, shift))
    sites = 5 * rounds
    assert int(readout.factor_rank[0]) == (sites if sites <= D + 1 + spare_rows else D + 1)
    assert readout.weight_factor.shape[1] <= D + 1 + spare_rows


def test_a_factor_of_another_shape_or_rank_does_not_load():
    readout = trained(0)
    other = ValenceReadout(SIGHT.shape[1] - 1)
    with pytest.raises(RuntimeError, match="weight_factor"):
        other.load_state_dict(readout.state_dict())
    state = readout.state_dict()
    state["factor_rank"] = state["factor_rank"] + state["weight_factor"].shape[1] + 1
    with pytest.raises(RuntimeError, match="factor_rank: expected ranks in"):
        ValenceReadout(SIGHT.shape[1]).load_state_dict(state)


def test_readouts_of_a_bank_learn_alone_and_equal_single_readouts():
    rows, outcomes = eats(TASTED, 3, 0)
    owners = torch.arange(len(rows)) % 3
    bank = ValenceReadout(SIGHT.shape[1], count=4, dtype=torch.float64)
    singles = [ValenceReadout(SIGHT.shape[1], dtype=torch.float64) for _ in range(4)]
    seen = SIGHT[:40]
    bank.adapt(seen, torch.arange(40) % 4)
    bank.update(rows, outcomes, owners)
    for r, single in enumerate(singles):
        single.adapt(seen[torch.arange(40) % 4 == r])
        single.update(rows[owners == r], outcomes[owners == r])
    percepts, _ = grid(TASTED[:2])
    for r, single in enumerate(singles):
        got = bank.predict(percepts, torch.full(percepts.shape[:1], r))
        want = single.predict(percepts)
        torch.testing.assert_close(got.mean, want.mean)
        torch.testing.assert_close(got.std, want.std)
    assert bank.eats.tolist() == [5, 5, 5, 0]
    assert torch.equal(bank.covariance()[3], ValenceReadout(SIGHT.shape[1]).covariance()[0])  # untaught: the prior
    # rows judged by different readouts in one call
    mixed = torch.tensor([0, 3, 1, 2, 0])
    got = bank.predict(percepts[:5], mixed)
    for i, r in enumerate(mixed.tolist()):
        torch.testing.assert_close(got.mean[i], singles[r].predict(percepts[i:i + 1]).mean[0])


def test_bad_readout_indices_raise_naming_the_argument():
    bank = ValenceReadout(SIGHT.shape[1], count=2)
    rows, outcomes = eats(TASTED, 1, 0)
    before = {k: v.clone() for k, v in bank.state_dict().items()}
    with pytest.raises(ValueError, match="^readouts"):
        bank.update(rows, outcomes, torch.full((len(rows),), 2))
    with pytest.raises(ValueError, match="^readouts"):
        bank.predict(rows, torch.zeros(len(rows) + 1, dtype=torch.long))
    with pytest.raises(TypeError, match="^readouts"):
        bank.adapt(rows, torch.zeros(len(rows)))
    with pytest.raises(ValueError, match="^count"):
        ValenceReadout(384, count=0)
    for key, value in bank.state_dict().items():
        assert torch.equal(value, before[key]), key
