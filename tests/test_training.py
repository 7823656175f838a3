"""The TEM VAE objective: its terms against independent computations, causality, shards, learning."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import treeworld.envs  # noqa: F401  (registers the environment ids)
from treeworld.agents import registry
from treeworld.agents.training import Sequences, TEMModel, collect
from treeworld.config import WorldConfig
from treeworld.envs import TASKS

torch.set_num_threads(1)


def walks_env(num_envs, **overrides):
    config = WorldConfig(**{**TASKS["noisy"], "living_cost": 0.0, "move_cost": 0.0, **overrides})
    return gym.make_vec("treeworld/TreeWorld-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        config=config, max_episode_steps=None)


@pytest.fixture(scope="module")
def walks():
    envs = walks_env(4)
    agent = registry.make_batch_agent("forager", envs.config, 4, envs.single_action_space, 0)
    sequences = collect(envs, agent, 80, seed=0, world_seeds=[11, 12, 13, 14])
    envs.close()
    return sequences


def model(**kwargs):
    return TEMModel(generator=torch.Generator().manual_seed(0), **kwargs)


def test_collect_records_what_the_agent_sees_on_fixed_layouts(walks):
    assert walks.steps == 80 and walks.walks == 4 and walks.sight.shape == (80, 4, 384)
    assert walks.seen.any() and (walks.distance[~walks.seen] == 0).all() and (walks.distance[walks.seen] > 0).all()
    assert torch.equal(walks.position[0], torch.zeros(4, 2))
    envs = walks_env(2)
    agent = registry.make_batch_agent("forager", envs.config, 2, envs.single_action_space, 0)
    again = collect(envs, agent, 80, seed=0, world_seeds=[11, 12])
    assert torch.equal(again.sight, walks.sight[:, :2]) and torch.equal(again.motion, walks.motion[:, :2])
    with pytest.raises(ValueError, match="^world_seeds: expected 2"):
        collect(envs, agent, 5, seed=0, world_seeds=[1])
    dying = gym.make_vec("treeworld/TreeWorld-v0", num_envs=2, vectorization_mode="vector_entry_point",
                         max_episode_steps=3)
    with pytest.raises(ValueError, match="^envs: a walk ended before"):
        collect(dying, agent, 5, seed=0, world_seeds=[1, 2])
    with pytest.raises(ValueError, match=r"^sight: expected leading shape \(80, 4\)"):
        Sequences(walks.motion, walks.sight[:5], walks.distance, walks.heading, walks.seen, walks.position)


def test_kl_is_log_q_minus_log_p_of_the_sample_as_2d_gaussians(walks):
    """The one-sample KL estimate against Gaussians in position space (the Gram terms of the two
    code densities cancel: both references are valid codes)."""
    tem = model()
    with torch.no_grad():
        terms = tem.elbo(walks, tem.noise(walks, torch.Generator().manual_seed(1)))
    assert terms["closure"].max() > 0.5  # some steps close a loop: posterior and prior differ

    def log_normal(x, mean, variance):
        return (-(x - mean).square().sum(-1) / (2 * variance) - torch.log(2 * math.pi * variance)).double()

    expected = log_normal(terms["sample"], terms["belief"], terms["variance"]) \
        - log_normal(terms["sample"], terms["prior"], terms["prior_variance"])
    torch.testing.assert_close(terms["kl"].double(), expected, atol=2e-3, rtol=1e-4)
    without_sight = walks.rows(slice(None))
    without_sight.seen = torch.zeros_like(walks.seen)
    with torch.no_grad():
        blind = tem.elbo(without_sight, tem.noise(walks, torch.Generator().manual_seed(1)))
    assert (blind["kl"] == 0).all() and not blind["counted"].any() and (blind["log_likelihood"] == 0).all()


def independent_log_density(E, tau, reference, scale, x):
    """log density of x on the sampler's subspace: z = reference + width E^+ v, v ~ N(0, I_M),
    by an orthonormal basis of the subspace and a full-covariance Gaussian there."""
    E = E.double()
    pinv = E.T @ torch.linalg.inv(E @ E.T + tau * torch.eye(E.shape[0], dtype=torch.float64))  # (N, M)
    basis, _ = torch.linalg.qr(pinv)  # (N, M)
    M = E.shape[0]
    width = math.exp(math.lgamma(M / 2) - math.lgamma((M + 1) / 2)) / math.sqrt(2.0) * scale
    A = basis.T @ pinv * width  # (M, M)
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(M, dtype=torch.float64), A @ A.T)
    return gaussian.log_prob(basis.T @ (x.double() - reference.double()))


def test_likelihood_is_the_recall_mixture_of_two_full_space_densities():
    tem = model(percept_dim=12, metric_rank=4)
    generator = torch.Generator().manual_seed(2)
    sample = tem.metric.encode(torch.tensor([[3.0, -4.0]]))
    object_vector = torch.tensor([[10.0, 0.0]])
    stored_at = torch.tensor([[[13.0, -1.0], [60.0, 40.0]]])  # 3 units from the tree's place, and far
    percepts = torch.randn(1, 2, 12, generator=generator)
    memory = (tem.metric.encode(stored_at), percepts, torch.tensor([[20.0, 30.0]]), torch.tensor([[True, True]]))
    sight = percepts[0, 0] + 0.05 * torch.randn(12, generator=generator)
    with torch.no_grad():
        got, recalled_got = tem._likelihood(sample, sight[None], object_vector, memory)
    rho = tem.log_recall_scale.exp().item()
    kernel = torch.tensor([math.exp(-9.0 / (2 * rho ** 2)), math.exp(-(47.0 ** 2 + 41.0 ** 2) / (2 * rho ** 2))])
    recalled = (kernel[:, None] * percepts[0]).sum(0) / kernel.sum()
    torch.testing.assert_close(recalled_got[0], recalled)
    E, tau = tem.percept_metric.embedding.detach(), tem.percept_metric.tau
    known = independent_log_density(E, tau, recalled, tem.log_likelihood_scale.exp().item(), sight)
    unknown = independent_log_density(E, tau, percepts[0].mean(0), tem.log_novel_scale.exp().item(), sight)
    # the complement of E's row space: an isotropic Gaussian of the residual's part outside it
    projector = torch.linalg.pinv(E.double()) @ E.double()  # (N, N) onto the row space
    sigma = tem.log_residual_scale.exp().item()

    def outside(reference):
        residual = (sight - reference).double()
        rest = residual - projector @ residual
        return -rest.square().sum() / (2 * sigma ** 2) - (12 - 4) / 2 * math.log(2 * math.pi * sigma ** 2)

    known, unknown = known + outside(recalled), unknown + outside(percepts[0].mean(0))
    c = kernel.max().item()
    expected = torch.logaddexp(math.log(c) + known, math.log1p(-c) + unknown)
    torch.testing.assert_close(got.double(), expected[None], atol=1e-3, rtol=1e-4)


def test_the_posterior_is_the_moment_matched_mixture_of_its_hypotheses():
    """Independent computation: "a new tree" N(prior, P) and, per remembered tree s, the Kalman
    update N(K_s nu_s, (1 - K_s) P) with the weights the posterior gives them; the mixture's
    mean and per-axis variance (within-component variance plus spread about the mean)."""
    tem = model(percept_dim=8, metric_rank=4)
    with torch.no_grad():
        tem.new_logit.fill_(-6.0)  # "a new tree" about as likely as the trees
    places = torch.tensor([[[30.0, 4.0], [31.0, -2.0], [12.0, 9.0]]])  # (1, S, 2) where the trees were stored
    memory = (tem.metric.encode(places), torch.zeros(1, 3, 8), torch.tensor([[20.0, 25.0, 5.0]]),
              torch.ones(1, 3, dtype=torch.bool))
    prior_var, distance, object_vector = torch.tensor([30.0]), torch.tensor([20.0]), torch.tensor([[25.0, 0.0]])
    with torch.no_grad():
        code, variance, weights = tem._posterior(tem.metric.encode(torch.zeros(1, 2)), prior_var, torch.zeros(1, 8),
                                                 distance, object_vector, memory)
    innovation = places[0] - object_vector  # (S, 2), the prior mean at the origin
    lateral = tem.var_across * (distance.square() + memory[2][0].square()) / 2
    gain = (prior_var / (prior_var + tem.log_proposal_scale.exp().square() + lateral)).detach()
    w = torch.cat([1 - weights[0].sum(0, keepdim=True), weights[0]])
    assert w.min() > 0.01  # every hypothesis counts
    means = torch.cat([torch.zeros(1, 2), gain[:, None] * innovation])
    variances = torch.cat([prior_var, (1 - gain) * prior_var])
    mean = (w[:, None] * means).sum(0)
    expected = (w * (variances + (means - mean).square().sum(-1) / 2)).sum()
    torch.testing.assert_close(tem.metric.decode(code)[1][0], mean, atol=1e-3, rtol=0)
    torch.testing.assert_close(variance[0], expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("memory_size", [128, 16])  # 16: each walk's memory fills and evicts its own oldest
def test_walks_are_independent_so_shards_give_the_full_batch_terms(walks, memory_size):
    tem = model(memory_size=memory_size)
    noise = tem.noise(walks, torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = tem.elbo(walks, noise)
        halves = [tem.elbo(walks.rows(rows), noise[:, rows]) for rows in (slice(0, 2), slice(2, 3), slice(3, 4))]
    assert memory_size > 80 or int(walks.seen.sum(0).max()) > memory_size
    for name in ("elbo", "kl", "log_likelihood", "belief"):
        torch.testing.assert_close(torch.cat([h[name] for h in halves], dim=1), full[name], atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^noise: expected shape \(80, 4, 2\)"):
        tem.elbo(walks, noise[:, :2])


def test_the_elbo_rises_over_a_short_training_run(walks):
    walks = walks.rows(slice(0, 2))
    tem = model()
    noise = tem.noise(walks, torch.Generator().manual_seed(4))
    optimizer = torch.optim.Adam(tem.parameters(), lr=1e-2)
    with torch.no_grad():
        before = tem.elbo(walks, noise)["elbo"].mean().item()
    for _ in range(8):
        loss, stats = tem.loss(walks, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert np.isfinite(list(stats.values())).all()
    with torch.no_grad():
        after = tem.elbo(walks, noise)["elbo"].mean().item()
    assert after > before + 0.5, (before, after)


def test_displacement_variance_is_zero_at_the_exact_lattice_and_grows_off_it():
    tem = model()
    motion = torch.randn(64, 2, generator=torch.Generator().manual_seed(5)) * 3
    assert tem.displacement_variance(motion).item() < 1e-10
    with torch.no_grad():
        tem.integrator.lattice[3] *= 1.01  # one module reads steps 1% long
    assert tem.displacement_variance(motion).item() > 1e-6


def test_separation_auc_of_a_full_metric_is_high_and_of_a_fruit_only_metric_below_chance():
    from treeworld.agents.pseudometric import PseudoMetric
    from treeworld.agents.training import separation_auc
    from treeworld.vocabulary import Vocabulary

    config = WorldConfig(**TASKS["noisy"])
    full = PseudoMetric(384, 384)
    with torch.no_grad():
        full.embedding.copy_(torch.eye(384))
    assert separation_auc(full, config, generator=torch.Generator().manual_seed(0)) > 0.99
    phrases = torch.tensor(np.array(Vocabulary.for_config(config).table[Vocabulary.phrase_offset:]))  # (6, 384)
    fruit_only = PseudoMetric(384, 6)
    with torch.no_grad():
        fruit_only.embedding.copy_(torch.linalg.qr(phrases.T.double())[0].T.float())
    # same-tree pairs always differ in fruit count, different trees only 5 times in 6: below chance
    assert separation_auc(fruit_only, config, generator=torch.Generator().manual_seed(0)) < 0.45


def test_a_training_checkpoint_gives_a_tem_agent_with_the_trained_parts(tmp_path):
    from treeworld.agents import training

    tem = model(metric_rank=16)
    with torch.no_grad():
        tem.integrator.correction.copy_(torch.tensor([[0.8, 0.05], [-0.05, 0.8]]))
        tem.log_step_scale.fill_(math.log(0.3))
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": training.CHECKPOINT_FORMAT, "config": {}, "model_config": tem.config, "update": 1,
                "model": tem.state_dict(), "optimizer": {}}, path)
    config = WorldConfig(**TASKS["noisy"])
    agent = registry.make_batch_agent(f"tem:{path}", config, 3, None)
    assert agent.num_agents == 3 and agent.config["learned_pi"] and agent.config["percept_rank"] == 16
    assert agent.config["motion_noise"] == config.motion_noise  # the world's, not the ELBO's step scale
    # the novelty gate: GATE_PER_MATCH_SCALE of the model's "same tree" kernel scale, in E's units
    assert agent.config["percept_radius"] == pytest.approx(training.GATE_PER_MATCH_SCALE * tem.scales()["match_scale"])
    assert torch.equal(agent.belief.integrator.correction, tem.integrator.correction)
    assert torch.equal(agent.memory.percept_metric.embedding, tem.percept_metric.embedding)
    agent.act({key: np.zeros((3,) + space.shape, space.dtype) for key, space in
               walks_env(1).single_observation_space.spaces.items()})  # acts
    torch.save({"format": "something else"}, path)
    with pytest.raises(ValueError, match="^agent: .* is not a treeworld.train/1 checkpoint"):
        training.read_checkpoint(path, "agent")
    with pytest.raises(ValueError, match="^resume: no checkpoint at"):
        training.read_checkpoint(tmp_path / "missing.pt", "resume")
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a readable"):
        registry.make_batch_agent(f"tem:{path}", config, 3, None)


def test_training_separates_trees_better_than_the_initial_metric(walks):
    from treeworld.agents.training import separation_auc

    walks = walks.rows(slice(0, 2))
    tem = model()
    config = WorldConfig(**TASKS["noisy"])
    before = separation_auc(tem.percept_metric, config, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam([tem.percept_metric.embedding], lr=3e-3)
    for update in range(12):
        loss, _ = tem.loss(walks, tem.noise(walks, torch.Generator().manual_seed(update)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = separation_auc(tem.percept_metric, config, generator=torch.Generator().manual_seed(0))
    assert after > before + 0.01, (before, after)  # 0.952 -> 0.965


def mean_reading(tem):
    """The integrator's mean map (2, 2) from observed to believed motion, and its spread over modules."""
    maps = tem.integrator.module_maps()
    return maps.mean(0), (maps - maps.mean(0)).abs().max().item()


def test_the_privileged_alignment_loss_recovers_a_gain_and_rotation_bias_and_the_exact_lattice():
    """The auxiliary (off by default): with motion_gain 1.25 and motion_rotation 0.1 the learned
    integrator must invert the odometry, every module on one reading, from a perturbed lattice."""
    gain, rotation = 1.25, 0.1
    envs = walks_env(4, motion_noise=0.0, percept_noise=0.0, motion_gain=gain, motion_rotation=rotation)
    agent = registry.make_batch_agent("random", envs.config, 4, envs.single_action_space, 0)
    walks = collect(envs, agent, 40, seed=0, world_seeds=[1, 2, 3, 4])
    envs.close()
    tem = model(motion_noise=0.05)
    with torch.no_grad():  # every module's lattice off by up to a few per cent
        tem.integrator.lattice.mul_(1 + 0.03 * torch.randn(len(tem.integrator.lattice), 1, 1,
                                                           generator=torch.Generator().manual_seed(0),
                                                           dtype=tem.integrator.lattice.dtype))
    optimizer = torch.optim.Adam(tem.integrator.parameters(), lr=3e-3)
    for _ in range(300):  # the alignment loss alone: cheap, no ELBO
        loss = tem.alignment(walks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    c, s = math.cos(rotation), math.sin(rotation)
    inverse = torch.tensor([[c, s], [-s, c]], dtype=torch.float64) / gain
    mean, spread = mean_reading(tem)
    torch.testing.assert_close(mean.double(), inverse, atol=5e-3, rtol=0)
    assert spread < 5e-3 and tem.alignment(walks).item() < 1e-4


@pytest.fixture(scope="module")
def biased_walks():
    """12 random walks of 120 steps under motion_gain 1.25 and motion_rotation 0.1 (inverse: 0.8, -0.1)."""
    envs = walks_env(12, motion_gain=1.25, motion_rotation=0.1)
    agent = registry.make_batch_agent("random", envs.config, 12, envs.single_action_space, 0)
    walks = collect(envs, agent, 120, seed=0, world_seeds=list(range(100, 112)))
    envs.close()
    return walks


def test_full_backprop_follows_the_elbo_slope_in_the_gain_and_one_step_truncation_does_not(biased_walks):
    """The ELBO's derivative along the integrator's gain at 0.9 (rotation -0.1): the full gradient
    against a central finite difference, and the gradient cut at every step, which sees the gain
    only through the last step's motion; the values do not depend on the cut."""
    tem = model(motion_noise=0.5)
    noise = tem.noise(biased_walks, torch.Generator().manual_seed(0))

    def elbo(gain, truncate=0):
        c, s = math.cos(-0.1), math.sin(-0.1)
        with torch.no_grad():
            tem.integrator.correction.copy_(gain * torch.tensor([[c, -s], [s, c]]))
        return tem.elbo(biased_walks, noise, truncate)["elbo"].mean()

    def slope(truncate):
        tem.zero_grad()
        elbo(0.9, truncate).backward()
        correction = tem.integrator.correction
        return float((correction.grad * correction.detach()).sum() / 0.9)

    with torch.no_grad():
        finite = float(elbo(0.91) - elbo(0.89)) / 0.02
        assert float(elbo(0.9, truncate=0)) == float(elbo(0.9, truncate=1))
    full, cut = slope(0), slope(1)
    assert finite < -1.0  # the ELBO rises towards the inverse odometry's 0.8
    assert abs(full - finite) < 0.1 * abs(finite)
    assert abs(cut) < 0.2 * abs(finite)


def test_the_elbo_alone_calibrates_a_gain_and_rotation_bias_on_random_walks(biased_walks):
    """No privileged target: with motion_gain 1.25 and motion_rotation 0.1, the ELBO's optimum over
    the integrator's correction (fixed walks and samples, L-BFGS) lies near the inverse odometry,
    scale 0.8 and angle -0.1, from the identity's 1 and 0. Random walks: the Forager sweeps its cone
    one way, so the trees it finds sit at one edge of the cone, off the heading the object vectors
    assume, and there the same fit turns the wrong way (angle +0.08)."""
    gain, rotation = 1.25, 0.1
    walks = biased_walks
    tem = model(motion_noise=0.5)
    noise = tem.noise(walks, torch.Generator().manual_seed(0))
    optimizer = torch.optim.LBFGS([tem.integrator.correction], max_iter=12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -tem.elbo(walks, noise)["elbo"].mean()
        loss.backward()
        return loss

    before = closure().item()
    optimizer.step(closure)
    read = tem.integrator.odometry_map()
    scale, angle = read["gain"], read["rotation"]
    assert closure().item() < before
    assert abs(scale - 1 / gain) < 0.4 * abs(1 - 1 / gain)  # most of the way from 1 to 0.8
    assert abs(angle + rotation) < 0.4 * rotation  # and from 0 to -0.1
