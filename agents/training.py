"""Self-supervised training of the TEM agent's learned parts: the TEM VAE objective on sequences.

Data. :class:`Sequences` holds ``T`` steps of ``B`` walks (one world each): the observed motion,
the sight percept, its distance and heading (all the agent sees), and the true positions (only
for metrics, never in the loss). :func:`collect` rolls a behaviour policy (any ``BatchAgent``:
random walker, Forager, the TEM agent) through a vector env whose layouts are fixed by
``world_seed``, so walks revisit trees.

The model (:class:`TEMModel`). The latent is the location code ``g_t`` (the default
``FourierMetric``); its learned parts are the path integration (``LearnedPathIntegration``), the
percept pseudometric ``E`` (``PseudoMetric`` of rank ``metric_rank``) and the scales below. Per
step ``t`` and walk, with ``o_t = r_t E[cos phi] h_t`` the sighting's object vector (as in
:mod:`~treeworld.agents.landmarks`) and a memory of earlier sightings (each stored at
``mean_s (+) o_s`` with its percept; strictly causal: step ``t`` reads entries ``s < t``):

- prior ``p(g_t | g_{t-1}, m_t) = FourierCodeDistribution(PI(mean_{t-1}, m_t), sqrt(P_t))`` with
  ``P_t = V_{t-1} + step_scale^2``: the filter's predictive distribution (``V`` the posterior
  variance per axis, carried with the posterior mean ``mean_t``);
- posterior ``q(g_t | prior, x_t, memory) = FourierCodeDistribution(mean_t, sqrt(V_t))``: the
  loop closure of the landmark map made soft. Each stored sighting ``s`` is a hypothesis "this is
  the same tree", predicting the agent at ``m_s (-) o_t``, an innovation ``nu_s`` from the prior
  mean (``FourierMetric.displacement``) with variance ``S_s = P_t + R_s``,
  ``R_s = proposal_scale^2 + (r_t^2 + r_s^2) E[sin^2 phi] / 2``; its weight is
  ``softmax(-d_E(x_t, x_s)^2 / (2 match_scale^2) - |nu_s|^2 / (2 S_s) - log(2 pi S_s))`` against
  the hypothesis "a new tree" (logit ``new_logit``): the chi-square gate of the map, soft. The
  posterior is the weighted Kalman update moment-matched to one Gaussian: shift
  ``sum_s w_s K_s nu_s`` (``K_s = P_t / S_s``), applied with ``apply_displacement``;
- likelihood ``p(x_t | g_t, memory)`` at ``g_t ~ q`` (reparameterised): the memory recalls at the
  tree's place ``g_t (+) o_t`` (kernel ``exp(-d^2 / (2 recall_scale^2))`` over the entries, as
  ``SpatialMemory.recall_percept``) the percept ``xhat`` with confidence ``c`` (the best kernel
  value); ``p = c LowRankGaussian(E, xhat, likelihood_scale) + (1 - c) LowRankGaussian(E, xbar,
  novel_scale)``, ``xbar`` the mean stored percept (a tree not remembered), each component times
  an isotropic Gaussian (std ``residual_scale``) on the complement of E's row space. Without that
  factor the density lives on E's subspace only, and training raised it by turning E towards
  directions in which percepts do not vary (the separation AUC of same against different trees fell
  from 0.95 to 0.77 in 50 updates);
- ``ELBO_t = log p(x_t | g_t) - [log q(g_t) - log p(g_t)]`` (one reparameterised sample: the KL
  estimated with both log-probabilities), the likelihood counted where a tree is in sight and the
  memory holds something; plus the seed's displacement-variance loss on the learned integrator
  (its modules must agree on one displacement).

The carried state is the posterior mean and variance. Gradients flow through it and through the
memory entries written from it over the whole walk (full backprop through time), unless
``truncate`` cuts them every ``truncate`` steps. Why not truncate at every step: the gain of the
path integration is seen only through the error that builds up along the path between two
sightings of a tree (a map scaled by a wrong gain is otherwise self-consistent), and a gradient
cut at every step sees the gain through the last step's motion alone. Measured on 12 random walks
of 120 steps under ``motion_gain=1.25, motion_rotation=0.1`` (target gain 0.8): the ELBO peaks at
gain 0.80 with untrained and with trained scales alike; its slope at gain 0.9 is -3.20
(finite difference), the full gradient's -3.17, the one-step-truncated gradient's -0.08, and with
trained scales the truncated one turns positive (+0.14 against a true -1.89), so training stalled
at gain 0.88 and drifted back towards 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from treeworld import checks
from treeworld.agents.fourier import FourierCodeDistribution
from treeworld.agents.landmarks import cone_moments
from treeworld.agents.path_integration import LearnedPathIntegration, default_metric
from treeworld.agents.pseudometric import PseudoMetric


@dataclass
class Sequences:
    """``T`` steps of ``B`` walks. motion (T, B, 2), sight (T, B, P), distance (T, B) world units
    (0 where nothing is seen), heading (T, B, 2), seen (T, B) bool, position (T, B, 2) true
    displacement from the walk's start (privileged: metrics only)."""

    motion: torch.Tensor
    sight: torch.Tensor
    distance: torch.Tensor
    heading: torch.Tensor
    seen: torch.Tensor
    position: torch.Tensor

    def __post_init__(self) -> None:
        T, B = self.motion.shape[:2]
        for field in fields(self):
            value = getattr(self, field.name)
            checks.instance(value, torch.Tensor, field.name)
            if tuple(value.shape[:2]) != (T, B):
                raise ValueError(f"{field.name}: expected leading shape ({T}, {B}) (motion's), got {tuple(value.shape)}")
            if value.is_floating_point():
                checks.finite_tensor(value, field.name)

    @property
    def steps(self) -> int:
        return self.motion.shape[0]

    @property
    def walks(self) -> int:
        return self.motion.shape[1]

    def rows(self, index: Any) -> "Sequences":
        """The walks ``index`` (a slice or indices), e.g. one process's shard."""
        return Sequences(**{f.name: getattr(self, f.name)[:, index] for f in fields(self)})

    def to(self, device) -> "Sequences":
        return Sequences(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collect(envs: Any, agent: Any, steps: int, seed: int, world_seeds: list[int]) -> Sequences:
    """Roll ``agent`` (a BatchAgent) for ``steps`` steps in the vector env ``envs`` on the layouts
    ``world_seeds`` (one per env, kept through autoresets), episode seeds ``seed + i``.

    Walks are cut at their first episode end: give ``envs`` no health costs and no time limit for
    walks that last (ValueError if one ends early).
    """
    steps = checks.count(steps, "steps")
    if len(world_seeds) != envs.num_envs:
        raise ValueError(f"world_seeds: expected {envs.num_envs} (envs.num_envs), got {len(world_seeds)}")
    agent.reset(None, seed=seed)
    observation, info = envs.reset(seed=seed, options={"world_seed": [int(s) for s in world_seeds]})
    start = np.asarray(info["position"], dtype=np.float64)
    sight_range = envs.config.sight_distance
    columns: dict[str, list] = {name: [] for name in ("motion", "sight", "distance", "heading", "position")}
    for _ in range(steps):
        action = agent.act(observation)
        columns["motion"].append(np.asarray(observation["motion"], dtype=np.float32))
        columns["sight"].append(np.asarray(observation["sight"], dtype=np.float32))
        columns["distance"].append(np.asarray(observation["sight_distance"], dtype=np.float32).reshape(-1) * sight_range)
        columns["heading"].append(np.asarray(observation["heading"], dtype=np.float32))
        columns["position"].append((np.asarray(info["position"], dtype=np.float64) - start).astype(np.float32))
        observation, _, terminated, truncated, info = envs.step(action)
        if np.any(terminated) or np.any(truncated):
            raise ValueError("envs: a walk ended before `steps`; give the env no health costs and no time limit")
    tensors = {name: torch.as_tensor(np.stack(values)) for name, values in columns.items()}
    return Sequences(seen=tensors["distance"] > 0, **tensors)


def _log_parameter(value: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(math.log(value)))


def _write(memory: tuple, written: torch.Tensor, new: tuple, seen: torch.Tensor, step: int,
           size: int) -> tuple[tuple, torch.Tensor]:
    """A walk's memory after step ``step``'s sightings: ``new`` (codes (B, L), percepts (B, P),
    distances (B,), valid (B,)) stored for the rows ``seen`` (B,) only, each walk keeping its own
    newest ``size`` sightings. Entries (B, S, ...) grow by a column while S < ``size``; then each
    seeing row overwrites its empty slot, else its oldest (``written`` (B, S): the step of each
    entry, -1 empty). Functional (no in-place writes), so gradients flow through the codes."""
    if written.shape[1] < size:
        stamp = torch.where(seen, step, -1)
        return (tuple(torch.cat([store, value[:, None]], dim=1) for store, value in zip(memory, new)),
                torch.cat([written, stamp[:, None]], dim=1))
    oldest = written.argmin(dim=1)  # empty slots (-1) first
    slot = seen[:, None] & (torch.arange(size, device=seen.device) == oldest[:, None])  # (B, S)
    memory = tuple(torch.where(slot.reshape(slot.shape + (1,) * (store.ndim - 2)), value[:, None], store)
                   for store, value in zip(memory, new))
    return memory, torch.where(slot, step, written)


class TEMModel(nn.Module):
    """The TEM VAE over sequences (module docstring). ``elbo(sequences)`` gives per-step terms.

    Args:
        percept_dim: ``P`` of the sight percepts.
        metric_rank: rank ``M`` of the learned percept pseudometric ``E``.
        motion_noise: initial ``step_scale`` (odometry noise std per axis, world units).
        cone_cos: the world's sight cone (object vectors and their lateral spread).
        memory_size: the newest sightings kept per walk (older ones are dropped).
        generator: seeds ``E``'s initialisation (``None``: fresh entropy).
    """

    def __init__(self, percept_dim: int = 384, metric_rank: int = 32, motion_noise: float = 0.5,
                 cone_cos: float = 0.9, memory_size: int = 128, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = dict(percept_dim=checks.count(percept_dim, "percept_dim"),
                           metric_rank=checks.count(metric_rank, "metric_rank"),
                           motion_noise=checks.real(motion_noise, "motion_noise", low=0.0),
                           cone_cos=checks.real(cone_cos, "cone_cos", low=-1.0, high=1.0, low_open=True),
                           memory_size=checks.count(memory_size, "memory_size"))
        self.metric = default_metric()
        self.integrator = LearnedPathIntegration(self.metric)
        self.percept_metric = PseudoMetric(percept_dim, metric_rank, generator=generator)
        with torch.no_grad():  # E starts as a scaled random projection: unit percepts ~1 apart
            self.percept_metric.embedding.mul_(math.sqrt(percept_dim / metric_rank))
        self.log_step_scale = _log_parameter(max(motion_noise, 0.05))
        self.log_proposal_scale = _log_parameter(2.0)
        self.log_match_scale = _log_parameter(0.5)
        self.log_recall_scale = _log_parameter(5.0)
        self.log_likelihood_scale = _log_parameter(0.3)
        self.log_novel_scale = _log_parameter(1.0)
        self.log_residual_scale = _log_parameter(0.05)  # percept noise outside E's subspace (per component)
        # "a new tree": its location is anywhere in sight (~log of the area within sight range 100)
        self.new_logit = nn.Parameter(torch.tensor(-10.0))
        self.mean_cos, _, self.var_across = cone_moments(self.config["cone_cos"])

    def scales(self) -> dict[str, float]:
        """The learned scales as numbers (for logs)."""
        return {name[4:]: getattr(self, name).exp().item() for name in
                ("log_step_scale", "log_proposal_scale", "log_match_scale", "log_recall_scale",
                 "log_likelihood_scale", "log_novel_scale", "log_residual_scale")} | {"new_logit": self.new_logit.item()}

    def displacement_variance(self, motion: torch.Tensor) -> torch.Tensor:
        """The seed's consistency loss of the learned integrator on motions ``(..., 2)``: mean
        across-module variance of the implied displacement per dimension.  # () """
        steps = self.integrator.phase_steps(motion.reshape(-1, 2))
        return self.metric.displacement_variance(steps).mean() / self.metric.dim

    def _posterior(self, prior_code, prior_var, sight, distance, object_vector, memory):
        """Soft loop closure against the memory: (mean code (B, L), variance (B,), weights (B, S))."""
        codes, percepts, distances, valid = memory
        innovation = self.metric.displacement(prior_code[:, None].expand_as(codes), codes)[1] - object_vector[:, None]
        lateral = self.var_across * (distance[:, None].square() + distances.square()) / 2
        total = prior_var[:, None] + self.log_proposal_scale.exp().square() + lateral  # (B, S)
        match = self.percept_metric.pseudo_distance(sight[:, None], percepts, squared=True) \
            / (2 * self.log_match_scale.exp().square())
        logits = -match - innovation.square().sum(-1) / (2 * total) - torch.log(2 * math.pi * total)
        logits = logits.masked_fill(~valid, -math.inf)
        weights = torch.softmax(torch.cat([self.new_logit.expand(len(logits), 1), logits], dim=1), dim=1)[:, 1:]
        gain = prior_var[:, None] / total  # (B, S)
        moved = gain[..., None] * innovation  # (B, S, 2)
        shift = (weights[..., None] * moved).sum(1)  # (B, 2)
        # the mixture's spread about its mean, per axis: the trees' components and "a new tree" at 0
        novel = 1 - weights.sum(1)  # (B,)
        spread = ((weights * (moved - shift[:, None]).square().sum(-1)).sum(1) + novel * shift.square().sum(-1)) / 2
        variance = prior_var - (weights * gain).sum(1) * prior_var + spread
        return self.metric.apply_displacement(prior_code, shift), variance, weights

    def _row_basis(self) -> torch.Tensor:
        """An orthonormal basis (P, M) of E's row space (the low-rank Gaussian's subspace)."""
        return torch.linalg.qr(self.percept_metric.embedding.T)[0]

    def _likelihood(self, sample, sight, object_vector, memory, basis=None):
        """log p(x_t | g_t, memory) (B,) at sampled codes (B, L), and the recalled percepts (B, P).

        Each mixture component is a density on the whole percept space: the pseudometric's low-rank
        Gaussian on E's row space times an isotropic Gaussian (std ``residual_scale``) on its
        complement, so E cannot raise the likelihood by looking away from what varies."""
        codes, percepts, _, valid = memory
        offset = self.metric.displacement(sample[:, None].expand_as(codes), codes)[1] - object_vector[:, None]
        logits = (-offset.square().sum(-1) / (2 * self.log_recall_scale.exp().square())).masked_fill(~valid, -math.inf)
        confidence = logits.max(1).values.exp().clamp(1e-6, 1 - 1e-6)  # (B,)
        recalled = torch.einsum("bs,bsp->bp", torch.softmax(logits, dim=1).nan_to_num(0.0), percepts)
        count = valid.sum(1, keepdim=True).clamp_min(1)
        novel = (percepts * valid[..., None]).sum(1) / count
        references = torch.stack([recalled, novel])  # (2, B, P)
        scales = torch.stack([self.log_likelihood_scale, self.log_novel_scale]).exp()[:, None].expand(2, len(sight))
        on_subspace = self.percept_metric.distribution(references, scales).log_prob(sight)  # (2, B)
        basis = self._row_basis() if basis is None else basis
        residual = sight - references
        outside = residual - (residual @ basis) @ basis.T
        P, M = basis.shape
        residual_var = (2 * self.log_residual_scale).exp()
        off_subspace = -outside.square().sum(-1) / (2 * residual_var) - (P - M) / 2 * torch.log(2 * math.pi * residual_var)
        known, unknown = on_subspace + off_subspace
        return torch.logaddexp(confidence.log() + known, torch.log1p(-confidence) + unknown), recalled

    def noise(self, sequences: Sequences, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal draws for :meth:`elbo`'s samples: (T, B, 2) (CPU ``generator``)."""
        shape = (sequences.steps, sequences.walks, self.metric.dim)
        return torch.randn(shape, generator=checks.generator(generator), dtype=self.metric.alphas.dtype)

    def elbo(self, sequences: Sequences, noise: torch.Tensor, truncate: int = 0) -> dict[str, torch.Tensor]:
        """Per-step terms over a batch of walks; ``noise`` (T, B, 2) standard normal draws (from
        :meth:`noise`) make the reparameterised samples ``g_t = mean_t (+) sqrt(V_t) u_t``, so a
        walk's terms do not depend on the other walks of its batch (data-parallel shards).
        ``truncate``: detach the carried state and the memory's places every ``truncate`` steps
        (0: never, full backprop through the walk; 1: every step). The values do not depend on it.

        Returns (T, B) tensors: ``log_likelihood`` (0 where not counted), ``counted`` (bool: a tree
        in sight and a memory to recall from), ``kl`` (the one-sample estimate), ``elbo``; and,
        detached, ``belief``, ``prior`` and ``sample`` (T, B, 2) the decoded posterior means, prior
        means and samples, ``variance`` and ``prior_variance`` (T, B) per axis, ``belief_error``
        (T, B) the posterior mean's distance to the true position, ``closure`` (T, B) the
        posterior's total weight on remembered trees, ``recalled`` (T, B, P) the percept the memory
        recalled at the sample (zero where not counted).
        """
        checks.instance(sequences, Sequences, "sequences")
        T, B = sequences.steps, sequences.walks
        like = self.metric.alphas
        checks.instance(noise, torch.Tensor, "noise")
        if tuple(noise.shape) != (T, B, self.metric.dim):
            raise ValueError(f"noise: expected shape ({T}, {B}, {self.metric.dim}), got {tuple(noise.shape)}")
        noise = checks.finite_tensor(noise, "noise").to(like)
        truncate = checks.integer(truncate, "truncate", low=0)
        seq = sequences.to(like.device)
        mean = self.metric.encode(like.new_zeros(B, 2))
        variance = like.new_zeros(B)
        L, P, size = self.metric.location_dim, self.config["percept_dim"], self.config["memory_size"]
        memory = (like.new_zeros(B, 0, L), like.new_zeros(B, 0, P), like.new_zeros(B, 0),
                  torch.zeros(B, 0, dtype=torch.bool, device=like.device))
        written = torch.zeros(B, 0, dtype=torch.long, device=like.device)  # (B, S) step of each entry, -1: empty
        out = {name: [] for name in ("log_likelihood", "counted", "kl", "belief", "closure", "prior", "sample",
                                     "variance", "prior_variance", "recalled")}
        step_var = self.log_step_scale.exp().square()
        basis = self._row_basis()
        for t in range(T):
            seen = seq.seen[t]
            heading = seq.heading[t] / seq.heading[t].norm(dim=-1, keepdim=True).clamp_min(1e-12)
            object_vector = (seq.distance[t] * self.mean_cos)[:, None] * heading  # (B, 2)
            prior_code = self.integrator(mean, seq.motion[t])
            prior_var = variance + step_var
            can_recall = seen & memory[3].any(1)
            if bool(can_recall.any()):
                gated = (memory[0], memory[1], memory[2], memory[3] & seen[:, None])
                post_code, post_var, weights = self._posterior(prior_code, prior_var, seq.sight[t],
                                                               seq.distance[t], object_vector, gated)
            else:
                post_code, post_var, weights = prior_code, prior_var, like.new_zeros(B, 1)
            post_var = post_var.clamp_min(1e-6)
            sample = self.metric.apply_displacement(post_code, post_var.sqrt()[:, None] * noise[t])  # q.rsample
            q_and_p = FourierCodeDistribution(self.metric, torch.stack([post_code, prior_code]),
                                              torch.stack([post_var, prior_var]).sqrt())
            log_q, log_p = q_and_p.log_prob(sample)
            # where nothing could be recalled q is p and the estimate is exactly 0; computed, it is
            # a rounding residue that depends on the row's place in the batch (vectorized tails)
            out["kl"].append(torch.where(can_recall, log_q - log_p, 0.0))
            if bool(can_recall.any()):
                log_likelihood, recalled = self._likelihood(sample, seq.sight[t], object_vector, gated, basis)
                out["log_likelihood"].append(torch.where(can_recall, log_likelihood, 0.0))
                out["recalled"].append(torch.where(can_recall[:, None], recalled.detach(), 0.0))
            else:
                out["log_likelihood"].append(like.new_zeros(B))
                out["recalled"].append(like.new_zeros(B, P))
            out["counted"].append(can_recall)
            out["closure"].append(weights.sum(1).detach())
            mean, variance = post_code, post_var
            out["belief"].append(mean.detach())
            out["prior"].append(prior_code.detach())
            out["sample"].append(sample.detach())
            out["variance"].append(variance.detach())
            out["prior_variance"].append(prior_var.detach())
            if truncate and (t + 1) % truncate == 0:
                mean, variance = mean.detach(), variance.detach()
                memory = (memory[0].detach(),) + memory[1:]
            if bool(seen.any()):  # write the sighting at the tree's believed place
                entry = self.metric.apply_displacement(mean, object_vector)
                new = (entry, seq.sight[t].to(like.dtype), seq.distance[t].to(like.dtype), seen)
                memory, written = _write(memory, written, new, seen, t, size)
        result = {name: torch.stack(values) for name, values in out.items()}
        with torch.no_grad():  # decode every code at once: (T, B, L) -> (T, B, 2)
            for name in ("belief", "prior", "sample"):
                result[name] = self.metric.decode(result[name])[1]
        result["elbo"] = result["log_likelihood"] - result["kl"]
        result["belief_error"] = (result["belief"] - seq.position.to(like.dtype)).norm(dim=-1)
        return result

    def alignment(self, sequences: Sequences) -> torch.Tensor:
        """The privileged auxiliary loss (after the seed's alignment loss of a latent subspace with a
        physical target; off by default): every module's reading of the observed motion
        (``implied_displacements``) against the true displacement of that step (from the privileged
        positions), mean squared error per step.  # ()"""
        device = self.metric.alphas.device
        true = (sequences.position[1:] - sequences.position[:-1]).to(device).reshape(-1, 1, 2)
        readings = self.integrator.implied_displacements(sequences.motion[1:].to(device).reshape(-1, 2))
        return (readings - true.to(readings.dtype)).square().sum(-1).mean()

    def forward(self, sequences: Sequences, noise: torch.Tensor, consistency_weight: float = 1.0,
                alignment_weight: float = 0.0, truncate: int = 0):
        """:meth:`loss` (so ``DistributedDataParallel`` wraps it)."""
        return self.loss(sequences, noise, consistency_weight, alignment_weight, truncate)

    def loss(self, sequences: Sequences, noise: torch.Tensor, consistency_weight: float = 1.0,
             alignment_weight: float = 0.0, truncate: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative mean ELBO per step (backprop cut every ``truncate`` steps, :meth:`elbo`) plus
        ``consistency_weight`` times the displacement-variance loss plus ``alignment_weight`` times
        the privileged :meth:`alignment` loss (reported on its own: the ELBO's result stays the
        objective's); and the figures to log (batch means)."""
        terms = self.elbo(sequences, noise, truncate)
        consistency = self.displacement_variance(sequences.motion.to(self.metric.alphas.device))
        elbo = terms["elbo"].mean()
        loss = -elbo + consistency_weight * consistency
        counted = terms["counted"]
        stats = {"elbo": elbo.item(), "kl": terms["kl"].mean().item(),
                 "log_likelihood": (terms["log_likelihood"].sum() / counted.sum().clamp_min(1)).item(),
                 "displacement_variance": consistency.item(),
                 "belief_error": float(terms["belief_error"][-1].median()),
                 "closure": float(terms["closure"].mean())}
        if alignment_weight:
            aligned = self.alignment(sequences)
            loss = loss + alignment_weight * aligned
            stats["alignment"] = aligned.item()
        return loss, {"loss": loss.item(), **stats}


def separation_auc(percept_metric: PseudoMetric, config: Any, pairs: int = 2000,
                   generator: torch.Generator | None = None) -> float:
    """How well ``percept_metric`` tells trees apart: the ROC AUC of its distance between the
    sight percepts of the same tree at two fruit counts against two different trees (each percept
    with the world's ``percept_noise``), over ``pairs`` pairs of each: the probability that a
    same-tree pair is nearer than a different-tree pair (Mann-Whitney). 0.5 is chance."""
    from treeworld.agents.evaluation import sight_looks

    pairs = checks.count(pairs, "pairs")
    generator = checks.generator(generator)
    trees = torch.tensor(sight_looks(config), dtype=torch.float32)  # (kinds * names, F, D)
    F = trees.shape[1]

    def draw(high, n):
        return torch.randint(high, (n,), generator=generator)

    tree, other = draw(len(trees), pairs), draw(len(trees) - 1, pairs)
    other = other + (other >= tree)  # a different tree
    fruit_a, shift = draw(F, pairs), 1 + draw(F - 1, pairs)
    same = (trees[tree, fruit_a], trees[tree, (fruit_a + shift) % F])
    different = (trees[tree, draw(F, pairs)], trees[other, draw(F, pairs)])

    def distance(a, b):
        noisy = [x + config.percept_noise * torch.randn(x.shape, generator=generator) for x in (a, b)]
        with torch.no_grad():
            return percept_metric.pseudo_distance(*noisy).double().numpy()

    near, far = distance(*same), distance(*different)
    ranks = np.concatenate([near, far]).argsort().argsort().astype(np.float64)
    return float((ranks[len(near):].sum() - len(far) * (len(far) - 1) / 2) / (len(near) * len(far)))


#: Format tag of the training checkpoints ``scripts/train.py`` writes.
CHECKPOINT_FORMAT = "treeworld.train/1"
#: The agent's percept novelty gate in units of the model's match scale: three scales of the kernel
#: by which the model tells "the same tree". It was 1.4 (0.7 Euclidean units over the initial match
#: scale 0.5): after 300 updates the match scale is 0.37, and at 1.4 of it the trained agent stored
#: each tree several times (16 validation worlds, 1,000 noisy steps: 42 entries for 9 trees seen,
#: fruit 45 against the untrained agent's 70); at 2.5 and 4 scales one entry per tree, fruit 70.
GATE_PER_MATCH_SCALE = 3.0


def read_checkpoint(path: Any, name: str = "path") -> dict:
    """A training checkpoint's dict (``format``, ``config``, ``model_config``, ``update``, ``model``,
    ``optimizer``); ValueError naming ``name`` for a missing, unreadable or foreign file."""
    import pathlib

    if not pathlib.Path(path).is_file():
        raise ValueError(f"{name}: no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unpickling failure means a corrupted file)
        raise ValueError(f"{name}: {str(path)!r} is not a readable checkpoint ({type(error).__name__}: {error})") \
            from None
    keys = ("config", "model_config", "update", "model", "optimizer")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not all(k in state for k in keys):
        raise ValueError(f"{name}: {str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state


def model_from_checkpoint(state: dict, name: str = "path") -> TEMModel:
    """The trained :class:`TEMModel` of a :func:`read_checkpoint` dict."""
    try:
        model = TEMModel(**state["model_config"])
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name}: the checkpoint's model does not load ({type(error).__name__}: {error})") from None
    return model


def tem_agent(model: TEMModel, config: Any, num_agents: int = 1, **overrides):
    """A fresh ``TEMAgent`` for ``config`` with ``model``'s trained parts: the learned path
    integration and the percept pseudometric ``E`` (novelty gate ``GATE_PER_MATCH_SCALE`` match
    scales). The odometry noise stays the world's: the ELBO's step scale is not a calibrated noise
    estimate (the likelihood favours narrow posteriors: 300 updates took it from 0.5 to 0.40 on
    motion noise 0.5), and as the filter's noise it made the agent overconfident. Keyword
    ``overrides`` go to ``TEMAgent.for_config``."""
    from treeworld.agents.tem import TEMAgent

    scales = model.scales()
    if model.config["percept_dim"] != config.percept_dim:
        raise ValueError(f"model: trained on {model.config['percept_dim']}-d percepts, the world's are "
                         f"{config.percept_dim}-d")
    agent = TEMAgent.for_config(config, num_agents, learned_pi=True, percept_rank=model.config["metric_rank"],
                                percept_radius=GATE_PER_MATCH_SCALE * scales["match_scale"], **overrides)
    with torch.no_grad():
        agent.belief.integrator.load_state_dict(model.integrator.state_dict())
        agent.memory.percept_metric.embedding.copy_(model.percept_metric.embedding)
    return agent
