"""§3.3.2 feedback-driven optimisation (Algorithm 1), the parts that do not depend on the proxy.

S(θ) is drawn by Bernoulli trials m_x = [u_x < v_x] with one uniform u_x per sample and iteration; the
same u (common random numbers) serve J(V) and every perturbed J(V + δ_C), so a finite difference measures
the effect of the perturbation, not the luck of a new draw. Eq. 16: g_C = (J(V + δ_C) − J(V)) / σ, where
δ_C adds σ to the scores of cluster C's members.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tads_assets.core.settings import BUDGET_FRACTION
from tads_assets.core.method.dvn import policy_loss
from tads_assets.core.vectors import kmeans_clusters


def uniforms(n: int, seed: int) -> np.ndarray:
    """The iteration's common random numbers u_x ~ U(0, 1)."""
    return np.random.default_rng(seed).random(n)


def draw_subset(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """m_x ~ Bernoulli(v_x), realised with the given uniforms."""
    return np.asarray(u) < np.asarray(v)


def budget_probabilities(v: np.ndarray, rate: float | None) -> np.ndarray:
    """Inclusion probabilities at a fixed data budget: v rescaled so that Σp = rate·N (capped at 1, the
    excess handed to the others). Algorithm 1 draws m_x ~ Bernoulli(v_x) directly; with a budget, the
    perturbation of one cluster then moves probability from every other sample to it, so g_C measures
    whether C is worth more than the average selected sample at the size the final subset will have, and J
    is comparable across meta-iterations (the same expected size every time). `rate` None: p = v."""
    v = np.clip(np.asarray(v, np.float64), 0.0, 1.0)
    if rate is None:
        return v
    if not 0 < rate <= 1:
        raise ValueError(f"rate must lie in (0, 1], got {rate}")
    target = rate * len(v)
    p = np.zeros_like(v)
    free = np.ones(len(v), bool)
    for _ in range(len(v)):
        budget = target - p[~free].sum()
        mass = v[free].sum()
        if mass <= 0:
            p[free] = budget / max(int(free.sum()), 1)
            break
        p[free] = v[free] * budget / mass
        over = free & (p >= 1.0)
        if not over.any():
            break
        p[over] = 1.0
        free &= ~over
    return np.clip(p, 0.0, 1.0)


def perturb(v: np.ndarray, clusters: np.ndarray, cluster: int, sigma: float) -> np.ndarray:
    """V + δ_C: σ added to the scores of C's members (clipped to [0, 1])."""
    out = np.array(v, np.float64, copy=True)
    members = clusters == cluster
    out[members] = np.clip(out[members] + sigma, 0.0, 1.0)
    return out


def cluster_advantages(v: np.ndarray, clusters: np.ndarray, probe: Sequence[int], reward: Callable[[np.ndarray], float],
                       u: np.ndarray, sigma: float, base: float | None = None) -> tuple[float, dict[int, float]]:
    """(J(V), {C: g_C}) by eq. 16 for the probed clusters. `reward` maps a keep mask to J."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    j0 = reward(draw_subset(v, u)) if base is None else base
    g = {}
    for c in probe:
        g[int(c)] = (reward(draw_subset(perturb(v, clusters, c, sigma), u)) - j0) / sigma
    return j0, g


def _split(result) -> tuple[float, dict]:
    return (float(result[0]), dict(result[1])) if isinstance(result, tuple) else (float(result), {})


@dataclass
class FdoParams:
    """Defaults of Algorithm 1's outer loop (the Dagster Config class takes its defaults from here)."""

    meta_iterations: int = 10
    probe_clusters: int = 10  # clusters whose advantage is measured per iteration (a seeded sample)
    sigma: float = 0.5  # perturbation of a cluster's scores (clipped to [0, 1])
    antithetic: bool = True  # (J(V+δ) − J(V−δ)) / 2σ instead of eq. 16's forward difference
    lr: float = 0.01  # η of Algorithm 1 line 27, as the Adam step size (the issue asks for Adam)
    beta: float = 1e-4  # L2 of eq. 17
    surrogate: str = "v"  # "log_v": eq. 17 as printed; "v": g_C-weighted v_θ (see train_dvn)
    rate: float | None = BUDGET_FRACTION  # the budget of the draws (see budget_probabilities); None: Bernoulli(v) as printed
    rate_penalty: float = 1.0  # λ of λ·(mean v − rate)² added to eq. 17: keeps v a selection probability at the budget
    track_top: bool = True  # also score the deterministic selection (top rate·N by v) each iteration: one more reward
    # return the iterate θ_t (t = 0 is θ₀) whose top-rate selection scored the highest J(top) on the validation sets,
    # not necessarily the last one (a deliberate variant of Algorithm 1, which returns θ_T: on the demo pool with
    # 96 px tower features, J(top) fell from 0.340 at θ₀ to 0.265 at θ_10, and final_subset would have taken the
    # worst selection of the run). Needs track_top.
    keep_best: bool = True
    seed: int = 0


def top_fraction(v: np.ndarray, rate: float) -> np.ndarray:
    """The keep mask of the ⌊rate·N⌋ highest values (ties broken by position): the subset final_subset
    would take from these values at this budget."""
    v = np.asarray(v)
    mask = np.zeros(len(v), bool)
    mask[np.argsort(-v, kind="stable")[: int(rate * len(v))]] = True
    return mask


def train_dvn(net, inputs: tuple, clusters: np.ndarray, reward: Callable[[np.ndarray], float | tuple[float, dict]],
              params: FdoParams, progress: Callable[[str], None] = lambda m: None,
              reward_many: Callable[[list[np.ndarray]], list] | None = None, best: dict | None = None) -> list[dict]:
    """Algorithm 1: per meta-iteration, V from the DVN; S(θ) by Bernoulli draws with common random numbers;
    J(V); per probed cluster its advantage g_C from perturbed rewards on the same draws; the eq. 17 loss with
    the advantages standardised across the probed clusters (centring is a baseline that removes the
    common-mode push which would otherwise move every score together; scaling makes η independent of the
    reward's units); one gradient step θ ← θ − η∇L. `reward_many(masks)`: the rewards of an iteration's masks in
    one call (a batched proxy, `proxy.HeadProxy.reward_many`); without it each is `reward(mask)`. `best` (a dict,
    filled in): the iterate with the highest J(top) so far — `iteration` (t of θ_t, 0 = the initial θ), `reward_top`,
    `metrics_top`, `state` (a copy of the network's state). Returns the history."""
    import torch

    if params.surrogate not in ("v", "log_v"):
        raise ValueError(f"surrogate must be 'v' or 'log_v', got {params.surrogate!r}")
    if params.sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {params.sigma}")
    rewards = reward_many or (lambda masks: [reward(m) for m in masks])
    rng = np.random.default_rng(params.seed)
    cluster_ids = np.unique(clusters)
    clusters_t = torch.as_tensor(clusters)
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    history = []
    for it in range(params.meta_iterations):
        t_it = time.perf_counter()
        with torch.no_grad():
            v = net(*inputs).double().numpy()
        u = uniforms(len(v), params.seed * 100_003 + it)
        probe = rng.choice(cluster_ids, min(params.probe_clusters, len(cluster_ids)), replace=False)
        def draw(scores):
            return draw_subset(budget_probabilities(scores, params.rate), u)

        # every reward of the iteration at once: J(V), J(top), then J(V ± δ_C) per probed cluster (all on the
        # same uniforms u), so a batched proxy adapts them together
        mask = draw(v)
        with_top = params.track_top and params.rate is not None
        masks = [mask] + ([top_fraction(v, params.rate)] if with_top else [])
        for c in probe:
            masks.append(draw(perturb(v, clusters, c, params.sigma)))
            if params.antithetic:
                masks.append(draw(perturb(v, clusters, c, -params.sigma)))
        results = [_split(r) for r in rewards(masks)]
        j0, metrics = results[0]
        top = {}
        if with_top:
            # J of S(θ) carries the draw's luck; J of the top-rate selection is the policy's value as
            # final_subset will use it, and moves only when the ranking does
            top = {"reward_top": results[1][0], "metrics_top": results[1][1]}
            if best is not None and ("reward_top" not in best or top["reward_top"] > best["reward_top"]):
                best.update(iteration=it, reward_top=top["reward_top"], metrics_top=top["metrics_top"],
                            state={k: t.detach().clone() for k, t in net.state_dict().items()})
        perturbed = iter(r[0] for r in results[1 + with_top:])
        g = {}
        for c in probe:
            up = next(perturbed)
            g[int(c)] = (up - next(perturbed)) / (2 * params.sigma) if params.antithetic else (up - j0) / params.sigma
        values = np.array(list(g.values()))
        scale = float(values.std()) + 1e-12
        centred = {c: (a - values.mean()) / scale for c, a in g.items()}
        logits = net.logits(*inputs)  # one forward pass serves the surrogate and the anchor
        if params.surrogate == "log_v":  # eq. 17 as printed
            score = torch.nn.functional.logsigmoid(logits)  # log v without log(0) when v underflows
        else:  # the chain rule through v itself: ∇θ Σ_C g_C Σ_{x∈C} v_θ(x) is the first-order ascent direction of J
            score = torch.sigmoid(logits)
        loss = policy_loss(score, clusters_t, centred, list(net.parameters()), params.beta)
        if params.rate is not None and params.rate_penalty > 0:
            # with budgeted draws a common shift of every v changes nothing, so without an anchor v drifts
            # into the sigmoid's flat ends (measured on the demo: mean v 0.78 after 12 iterations, the draws
            # then close to uniform); the anchor keeps mean v at the budget
            loss = loss + params.rate_penalty * (torch.sigmoid(logits).mean() - params.rate) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"iteration": it + 1, "reward": j0, "selection_rate": float(v.mean()),
                        "selected": int(mask.sum()), "advantages": g, "metrics": metrics, **top,
                        "rewards": len(masks), "seconds": time.perf_counter() - t_it})
        top_note = f", J(top {params.rate:.0%}) {top['reward_top']:.4f}" if top else ""
        progress(f"iteration {it + 1}/{params.meta_iterations}, J {j0:.4f}{top_note}, {int(mask.sum())} selected, "
                 f"mean v {v.mean():.3f}, advantages {min(g.values()):+.3f}..{max(g.values()):+.3f} "
                 f"({len(masks)} rewards in {history[-1]['seconds']:.1f}s)")
    return history


def input_space_groups(inputs: tuple, n_groups: int, seed: int = 0) -> np.ndarray:
    """Perturbation groups for eq. 16 from k-means over the DVN's own inputs [q, h_r, log d] (and a with the
    alignment stream), each column
    standardised. The paper perturbs semantic clusters of the joint embedding; on the demo those mix clean
    and broken pairs of one concept (a cluster of shirts holds its misaligned and blurred shirts too), so
    their advantages can only teach the DVN which concepts pay, never which quality does. Groups in the
    input space differ in exactly what v_θ can tell apart (measured on the demo: groups of q ≈ 0.2 and of
    q ≈ 0.75, digit-relevant and garment-relevant groups)."""
    x = np.hstack([np.asarray(t, np.float64).reshape(len(t), -1) for t in (np.asarray(a) for a in inputs)])
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    return kmeans_clusters(x.astype(np.float32), n_groups, seed=seed)
